"""``lensworks heads``: every head score and the induction verdict for one checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from lensworks.cli._common import at_least_two, finite_float, positive_int, text_file
from lensworks.cli._common import (
    add_model_argument, add_option, add_outputs, format_table, model_from_args, write_outputs,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``heads`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["heads"]).top
        5
    """
    p = subparsers.add_parser("heads", help="composition, copying and behavioural head scores, and induction heads")
    add_model_argument(p)
    p.add_argument("--top", type=positive_int, default=5, help="rows per table (default 5)")
    p.add_argument("--seq-len", type=at_least_two, default=None, help="length of the repeated random sequence")
    p.add_argument("--n-seqs", type=positive_int, default=32, help="number of repeated sequences (default 32)")
    p.add_argument("--graph", action="store_true", help="also print the circuit graph (composition edges above z)")
    p.add_argument("--z-min", type=finite_float, default=3.0,
                   help="z threshold of a circuit-graph edge and of the marked composition cells (default 3)")
    p.add_argument("--trigrams", default=None, metavar="LxHy",
                   help="also print the skip-trigrams of one head, e.g. L1H2")
    p.add_argument("--terms", action="store_true",
                   help="also print term importance (loss by path order, most important paths) on the repeated "
                        "sequences, or on --terms-text")
    p.add_argument("--terms-text", default=None, metavar="FILE", type=text_file,
                   help="text file for --terms, read as windows of --seq-len tokens (at most --n-seqs of them)")
    add_option(p, "--seed")
    add_outputs(p, "write every score as JSON", "write the figures as one self-contained HTML page")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and print the head scores; write JSON/HTML when asked.

    Args:
        args: The parsed ``heads`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["heads", "--top", "3"])  # doctest: +ELLIPSIS
        model: induction-2l (2 layers x 4 heads, d_model 64, d_vocab 151)
        <BLANKLINE>
        strongest heads per score
        score            head  value
        ---------------  ----  -----
        previous_token   L0H1  0.640
        ...
        induction heads: L1H3, L1H0, L1H1, L1H2
        ...
        0
    """
    from lensworks._heads import HeadId
    from lensworks.report import Context, registry, run_sections
    from lensworks.model import LensworksError

    if args.top < 1:
        raise LensworksError(f"--top must be >= 1, got {args.top}")
    model, name = model_from_args(args)
    cfg = model.cfg
    print(f"model: {name} ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, d_vocab {cfg.d_vocab})")
    # the report's own sections, with this command's options
    ctx = Context.of(model, seed=args.seed, options={"seq_len": args.seq_len, "n_seqs": args.n_seqs, "z_min": args.z_min})
    names = ["verdict", "duplicate_token", "Q composition", "V composition"] + (["circuit graph"] if args.graph else [])
    run = run_sections(ctx, registry(names=names))
    report, dup = run.result("verdict"), run.result("duplicate_token")
    per_head = {"previous_token": report.previous, "duplicate_token": dup, "induction": report.induction, "copying": report.copying}
    rows = []
    for kind, res in per_head.items():
        for label, score in res.top(args.top):
            rows.append((kind, label, score))
    print("\nstrongest heads per score")
    print(format_table(rows, ["score", "head", "value"]))
    # every heatmap marks its pairs at the graph's --z-min (Q and V come marked from their sections)
    comps = {"K": dataclasses.replace(report.k_composition, z_min=args.z_min)}
    if cfg.n_layers > 1:
        comps["Q"] = run.result("Q composition")
        comps["V"] = run.result("V composition")
        rows = []
        for mode in ("Q", "K", "V"):
            c = comps[mode]
            z = c.z()
            for pair in c.top(args.top):
                rows.append((mode, pair.label, pair.score, f"{float(z[(*pair.src, *pair.dst)]):.1f}"))
        print("\nstrongest composition (z: std above random factors)")
        print(format_table(rows, ["mode", "pair", "score", "z"]))
    print("\n" + report.summary())
    extra = _graph_and_trigrams(args, model, run)
    if args.terms or args.terms_text is not None:
        extra["term_importance"] = _terms(args, model, report)
    payload = {
        "model": name,
        "induction_heads": [HeadId(l, h).label for l, h in report.heads],
        "evidence": [e.to_dict() for e in report.evidence],
        "head_scores": {k: v.to_dict() for k, v in per_head.items()},
        "composition": {m: c.to_dict() for m, c in comps.items()},
    }
    payload.update({k: v.to_dict() for k, v in extra.items()})
    figures = [report.figure()] + [res.figure() for res in per_head.values()] + [c.figure() for c in comps.values()]
    figures += [v.figure() for v in extra.values()]
    write_outputs(args, payload, figures, title=f"lensworks heads: {name}")
    return 0


def _graph_and_trigrams(args: argparse.Namespace, model: Any, run: Any) -> dict[str, Any]:
    """``--graph`` and ``--trigrams``: print them and return the results for JSON/HTML."""
    from lensworks._heads import HeadId
    from lensworks.circuits import skip_trigrams
    from lensworks.model import LensworksError

    out: dict[str, Any] = {}
    if args.graph:
        graph = run.result("circuit graph")  # the report's section, on the scores above (raises on one layer)
        rows = [(a, b, mode, score, f"{z:.1f}") for a, b, mode, score, z in graph.edges[: max(args.top, 10)]]
        print(f"\ncircuit graph: {len(graph.edges)} edges at z >= {args.z_min:g}")
        print(format_table(rows, ["from", "to", "mode", "score", "z"]) if rows else "(no edges)")
        out["circuit_graph"] = graph
    if args.trigrams is not None:
        try:
            layer, head = HeadId.parse(args.trigrams)
        except LensworksError:
            raise LensworksError(f"--trigrams expects a head such as L1H2, got {args.trigrams!r}") from None
        tri = skip_trigrams(model, layer, head, k=max(args.top, 10))
        rows = [(d, s_, o, ov, qk) for d, s_, o, ov, qk in zip(tri.destination_labels, tri.source_labels, tri.out_labels,
                                                               tri.ov.tolist(), tri.qk.tolist())]
        print(f"\nskip-trigrams of {args.trigrams} (destination ... source -> out)")
        print(format_table(rows, ["destination", "source", "out", "ov", "qk"]))
        out["skip_trigrams"] = tri
    return out


def _terms(args: argparse.Namespace, model: Any, report: Any) -> Any:
    """``--terms``: term importance on the repeated sequences (or ``--terms-text``), printed."""
    from lensworks.circuits import repeated_tokens
    from lensworks.model import LensworksError, text_windows

    n_seqs = min(args.n_seqs, 16)  # one copy of the batch per term: keep the batch small
    if args.terms_text is not None:
        from lensworks.cli._common import read_text_file

        text = read_text_file(args.terms_text, "terms-text")
        width = min(args.seq_len or 64, model.cfg.n_ctx)
        data = text_windows(model, text, width=width)[:n_seqs]
        what = f"{data.shape[0]} windows of {args.terms_text}"
    else:
        data = repeated_tokens(model, seq_len=report.thresholds["seq_len"], n_seqs=n_seqs, seed=args.seed,
                               prepend_bos=report.thresholds["prepend_bos"])
        what = f"{n_seqs} repeated random sequences"
    if data.shape[0] == 0:
        raise LensworksError(f"--terms-text {args.terms_text}: too short for one window of {width} tokens")
    from lensworks.report import Context, section

    ti = section("term importance").run(Context.of(model, windows_given={"terms": data}))
    rows = [(k, loss, loss - ti.model_loss) for k, loss in enumerate(ti.loss_by_order.tolist())]
    print(f"\nterm importance on {what}: loss keeping paths through at most k heads (model {ti.model_loss:.4f})")
    print(format_table(rows, ["k", "loss", "above model"]))
    frame = ti.to_frame().head(args.top)
    print(format_table(list(zip(frame["term"], frame["order"], frame["loss_without"], frame["loss_increase"])),
                       ["term", "order", "loss without", "increase"]))
    return ti
