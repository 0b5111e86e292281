"""``lensworks geometry`` and ``lensworks neighbours``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from lensworks.model import LensworksError, model_streams

__all__ = ["register", "BUILTIN_POSITIVE", "BUILTIN_NEGATIVE"]

#: Built-in contrastive sets used when no files are given: lines of Python vs lines of English.
BUILTIN_POSITIVE = (
    "def main(argv=None):",
    "    return self._cache[key]",
    "for i, line in enumerate(lines):",
    "import os, sys",
    "if not isinstance(value, int):",
    "    raise ValueError(msg)",
    "class Parser(object):",
    "x = [f(y) for y in items]",
    "while n > 0: n -= 1",
    "print(json.dumps(data))",
    "with open(path) as fh:",
    "try: value = int(text)",
    "elif kind == 'dir':",
    "self.assertEqual(a, b)",
    "lambda x: x * 2",
    "return {k: v for k, v in d}",
)
BUILTIN_NEGATIVE = (
    "The cat sat on the mat.",
    "We walked home after dinner.",
    "She wrote a long letter to him.",
    "It rained all day in the city.",
    "The children played in the park.",
    "He said that he would come back.",
    "My sister likes to read books.",
    "They bought bread and milk.",
    "The train was late again today.",
    "Birds sang in the early morning.",
    "Please close the door behind you.",
    "The garden is full of flowers.",
    "Our teacher told us a story.",
    "The river runs to the sea.",
    "I think it will be sunny.",
    "Nobody knew the answer.",
)


def _read_lines(path: str | None, what: str) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise LensworksError(f"--{what}: no such file {path!r}")
    lines = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2:
        raise LensworksError(f"--{what}: {path!r} has {len(lines)} non-empty lines; need at least 2 (one prompt per line)")
    return lines


def _records(frame) -> list[dict[str, Any]]:
    from lensworks._results import to_jsonable

    return to_jsonable(frame.to_dict(orient="records"))


def _run_geometry(args: argparse.Namespace) -> int:
    from lensworks._cli_common import format_table, model_from_args, write_outputs
    from lensworks.geometry import block_ablation, block_decomposition, logit_lens, residual_stats, update_alignment

    pos = _read_lines(args.positive, "positive")
    neg = _read_lines(args.negative, "negative")
    if (pos is None) != (neg is None):
        raise LensworksError("give both --positive and --negative, or neither (for the built-in sets)")
    if pos is None:
        pos, neg = list(BUILTIN_POSITIVE), list(BUILTIN_NEGATIVE)
        print(f"no --positive/--negative files: using the built-in sets ({len(pos)} lines of Python code vs "
              f"{len(neg)} lines of English prose)")
    model, name = model_from_args(args, "char-mlp")
    print(f"model: {name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})")
    both = pos + neg
    bs = args.batch_size
    stats = residual_stats(model, {"positive": pos, "negative": neg},
                           streams=model_streams(model),
                           batch_size=bs)
    table = block_ablation(model, both, batch_size=bs)
    lens = logit_lens(model, both, batch_size=bs)
    dec = block_decomposition(model, both, batch_size=bs)
    align = update_alignment(model, both, batch_size=bs)

    cos = stats.cosine("positive", "negative")
    rows = []
    for layer in range(model.cfg.n_layers):
        row = [layer]
        for s in stats.streams:
            row.append(float(cos[s][layer]))
        si = stats.streams.index("resid_post")
        row += [float(stats.var_mean("positive")[si, layer]), float(stats.var_mean("negative")[si, layer])]
        rows.append(row)
    print("\nresidual statistics at the last token (cosine of the class means; mean variance of resid_post)")
    print(format_table(rows, ["layer"] + [f"cos {s}" for s in stats.streams] + ["var pos", "var neg"]))

    df = table.to_frame()
    print("\nblock ablation (Hellinger distance to the normal next-token distribution, mean ± std over prompts)")
    print(format_table(
        [(int(r.block), f"{r.drop_attn_hellinger_mean:.3f} ± {r.drop_attn_hellinger_std:.3f}",
          f"{r.drop_mlp_hellinger_mean:.3f} ± {r.drop_mlp_hellinger_std:.3f}", float(r.drop_attn_top1_agreement),
          float(r.drop_mlp_top1_agreement)) for r in df.itertuples()],
        ["block", "drop attention", "drop MLP", "top1 kept (attn)", "top1 kept (MLP)"]))
    if not table.decomposition_ok:
        print(f"WARNING: embed + attn + MLP outputs do not add up to the final residual "
              f"(relative error {table.decomposition_error:.2e}); read the ablations with care")

    lf = lens.to_frame()
    print("\nlogit lens (each layer normalised with its own statistics)")
    print(format_table([(r.layer, float(r.kl_mean), float(r.top1_agreement)) for r in lf.itertuples()],
                       ["layer", "KL to final (nats)", "top1 = final"]))
    print(f"\ncosine(final residual, embed + MLP outputs only): mean {float(dec.ffn_only_cosine.mean()):.3f} "
          f"over {len(both)} prompts")

    payload = {
        "model": name,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "builtin_sets": args.positive is None,
        "residual_stats": _records(stats.to_frame()),
        "cosine_of_means": {s: v.tolist() for s, v in cos.items()},
        "block_ablation": _records(df),
        "decomposition_ok": table.decomposition_ok,
        "decomposition_error": table.decomposition_error,
        "logit_lens": _records(lf),
        "block_decomposition": _records(dec.to_frame()),
        "ffn_only_cosine_mean": float(dec.ffn_only_cosine.mean()),
        "update_alignment": {"labels": list(align.labels), "cosine": align.cosine.tolist()},
    }
    write_outputs(args, payload, [stats.figure(), table.figure(), lens.figure(), dec.figure(0), align.figure()],
                  title=f"lensworks geometry: {name}")
    return 0


def _run_neighbours(args: argparse.Namespace) -> int:
    from lensworks._cli_common import format_table, model_from_args, write_outputs
    from lensworks.geometry import NeighbourApproximation

    model, name = model_from_args(args, "char-mlp")
    if args.corpus:
        p = Path(args.corpus)
        if not p.is_file():
            raise LensworksError(f"--corpus: no such file {args.corpus!r}")
        text = p.read_text(encoding="utf-8")[: args.bytes]
        source = f"{args.corpus} (first {len(text):,} characters)"
    else:
        from lensworks import zoo

        text = zoo.corpus(args.bytes)
        source = f"lensworks.zoo.corpus({args.bytes}) (Python standard-library source)"
        print(f"no --corpus: using {source}")
    print(f"model: {name}; corpus: {len(text):,} characters; window {args.window}; hook {args.hook}")
    approx = NeighbourApproximation.fit(model, text, window=args.window, hook=args.hook, batch_size=args.batch_size,
                                        progress=args.progress)
    print(f"indexed {approx.n_windows:,} unique windows x {len(approx.blocks)} blocks")
    if args.prompt_file:
        prompts = _read_lines(args.prompt_file, "prompt-file")
    else:
        rng = random.Random(args.seed)
        prompts = [text[s : s + args.window] for s in
                   (rng.randrange(0, len(text) - args.window) for _ in range(args.prompts))]
    tuned = None
    thresholds: Any = args.thresholds if args.thresholds else [0.9]
    weights: Any = args.weights if args.weights else None
    test = prompts
    if args.tune:
        half = max(1, len(prompts) // 2)
        tuned = approx.tune(prompts[:half], progress=args.progress)
        thresholds, weights, test = tuned.thresholds, tuned.weights, prompts[half:] or prompts
        print(f"\ntuned on {half} prompts (mean Hellinger {tuned.mean_hellinger:.3f}); evaluating on the other {len(test)}")
        print(format_table([(b, t, w) for b, t, w in zip(tuned.blocks, tuned.thresholds, tuned.weights)],
                           ["block", "threshold", "weight"]))
    ev = approx.evaluate(test, thresholds, weights, progress=args.progress)
    print(f"\nHellinger(approximation, model) over {len(test)} prompts: mean {ev.mean:.3f}, std {ev.std:.3f}, "
          f"min {ev.min:.3f}, max {ev.max:.3f}; {ev.n_unmatched} prompts had no similar window "
          "(they get the corpus's next-token frequencies)")
    print(f"baseline that ignores the prompt (corpus next-token frequencies): mean {ev.baseline_mean:.3f}")
    df = ev.to_frame()
    show = df.sort_values("hellinger").head(args.show)
    print(format_table([(repr(r.prompt), float(r.hellinger), bool(r.matched)) for r in show.itertuples()],
                       ["prompt", "hellinger", "matched"]))
    payload = {
        "model": name, "corpus": source, "window": args.window, "hook": args.hook, "n_windows": approx.n_windows,
        "thresholds": list(ev.thresholds), "weights": list(ev.weights), "mean": ev.mean, "std": ev.std,
        "min": ev.min, "max": ev.max, "n_unmatched": ev.n_unmatched, "baseline_mean": ev.baseline_mean, "per_prompt": _records(df),
        "tuned": tuned.to_dict() if tuned is not None else None,
    }
    write_outputs(args, payload, [ev.figure()], title=f"lensworks neighbours: {name}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``geometry`` and ``neighbours`` subcommands."""
    from lensworks._cli_common import add_model_argument

    g = subparsers.add_parser(
        "geometry", help="residual statistics of two prompt sets, block ablations, logit lens",
        description="Per-layer residual statistics for two contrastive prompt sets (one prompt per line), "
                    "attention/MLP ablation per block (Hellinger), logit lens and block decomposition. Without "
                    "files, built-in sets (Python code vs English prose) are used.")
    add_model_argument(g)
    g.add_argument("--positive", metavar="FILE", help="prompts of the first set, one per line")
    g.add_argument("--negative", metavar="FILE", help="prompts of the second set, one per line")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--json", metavar="PATH", help="write all numbers as JSON")
    g.add_argument("--html", metavar="PATH", help="write all figures as one HTML page")
    g.set_defaults(func=_run_geometry)

    n = subparsers.add_parser(
        "neighbours", help="approximate the model's next-token distribution from similar corpus windows",
        description="Seed 004's approximation: index every unique corpus window's block outputs, then predict "
                    "each prompt's next token from the windows whose outputs point the same way.")
    add_model_argument(n)
    n.add_argument("--corpus", metavar="FILE", help="text file (default: the bundled stdlib corpus)")
    n.add_argument("--bytes", type=int, default=50_000, help="characters of the corpus to index (default 50,000)")
    n.add_argument("--window", type=int, default=10)
    n.add_argument("--hook", default="mlp_out", help="block output compared (default mlp_out, the FFN output)")
    n.add_argument("--prompts", type=int, default=200, help="random corpus windows used as prompts")
    n.add_argument("--prompt-file", metavar="FILE", help="prompts, one per line, instead of random windows")
    n.add_argument("--thresholds", type=float, nargs="+", help="cosine threshold, one or one per block (default 0.9)")
    n.add_argument("--weights", type=float, nargs="+", help="block weights, one or one per block (default 1)")
    n.add_argument("--tune", action="store_true", help="tune thresholds/weights on half the prompts")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--show", type=int, default=10, help="how many prompts to print")
    n.add_argument("--batch-size", type=int, default=1024)
    n.add_argument("--progress", action="store_true", default=None, help="show progress bars")
    n.add_argument("--json", metavar="PATH")
    n.add_argument("--html", metavar="PATH")
    n.set_defaults(func=_run_neighbours)
