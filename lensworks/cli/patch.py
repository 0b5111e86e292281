"""``lensworks patch``: activation patching between a clean and a corrupted prompt (and its
gradient estimate, and direct logit attribution), measured by the logit difference."""

from __future__ import annotations

import argparse
from typing import Any

from lensworks.cli._common import _number, positive_int, text_file
from lensworks.cli._common import (
    add_model_argument, add_option, add_outputs, format_table, model_from_args, read_text_file, records, write_outputs,
)

__all__ = ["register", "run"]

#: What can be patched (``lensworks.causal.patching.PATCH_TARGETS``; named here so that
#: ``--help`` needs no torch).
TARGETS = ("resid_pre", "attn_out", "mlp_out", "head_z", "head_pattern")

any_int = _number(int, None, "an integer")


def register(subparsers: Any) -> None:
    """Add the ``patch`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["patch", "--clean", "ab", "--corrupted", "ac", "--answer", "b", "--wrong", "c"])
        >>> args.clean, args.answer, args.top
        (['ab'], ['b'], 10)
    """
    p = subparsers.add_parser(
        "patch", help="activation patching (and attribution patching, direct logit attribution) between two prompts",
        description="Run the clean prompts with one activation (site) at a time taken from the corrupted prompts and "
                    "measure the logit difference of the answer over the wrong token at the last token. Without "
                    "prompts: a built-in pair any model reads, repeated random tokens whose first copy changes the "
                    "token the induction pattern predicts (--seq-len, --n-seqs, --seed).")
    add_model_argument(p)
    p.add_argument("--clean", action="append", default=None, metavar="TEXT",
                   help="a clean prompt (repeat the option for several)")
    p.add_argument("--corrupted", action="append", default=None, metavar="TEXT",
                   help="the corrupted prompt, token for token aligned with the clean one (repeat as --clean)")
    p.add_argument("--clean-file", default=None, metavar="FILE", type=text_file, help="clean prompts, one per line")
    p.add_argument("--corrupted-file", default=None, metavar="FILE", type=text_file,
                   help="corrupted prompts, one per line, as many as the clean ones")
    p.add_argument("--answer", action="append", default=None, metavar="TOKEN",
                   help="the right next token (one token, e.g. ' Mary'); once for every prompt or once per prompt")
    p.add_argument("--wrong", action="append", default=None, metavar="TOKEN",
                   help="the wrong next token the corrupted prompts point to; once or once per prompt")
    p.add_argument("--what", nargs="+", choices=TARGETS, default=None, metavar="TARGET",
                   help=f"what to patch, among {', '.join(TARGETS)} (default: every one the model has)")
    p.add_argument("--each-position", action="store_true",
                   help="patch each head at each position (head_z / head_pattern per position)")
    p.add_argument("--position", type=any_int, default=-1,
                   help="where the answer is read (default -1: each prompt's last token)")
    p.add_argument("--direction", choices=("noise", "denoise"), default="noise",
                   help="noise: corrupted activations into the clean run (default); denoise: the reverse")
    p.add_argument("--attribution", action="store_true",
                   help="also attribution patching (the gradient estimate of every cell) and its correlation")
    p.add_argument("--dla", action="store_true", help="also direct logit attribution on the clean prompts")
    p.add_argument("--top", type=positive_int, default=10, help="rows per table (default 10)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="built-in pair: random sequence length (default 8, or what fits n_ctx)")
    p.add_argument("--n-seqs", type=positive_int, default=4, help="built-in pair: number of prompts (default 4)")
    add_option(p, "--seed", help="built-in pair: seed of the random tokens (default 0)")
    add_option(p, "--batch-size", default=64, help="sites per forward pass (default 64)")
    add_outputs(p, "write every number as JSON", "write the figures as one self-contained HTML page")
    p.set_defaults(func=run)


def _prompts(args: argparse.Namespace, flag: str) -> list[str] | None:
    """The prompts of ``--clean``/``--clean-file`` (or the corrupted ones): None when neither is given."""
    from lensworks.model import LensworksError

    given, path = getattr(args, flag), getattr(args, f"{flag}_file")
    if given is not None and path is not None:
        raise LensworksError(f"give --{flag} or --{flag}-file, not both")
    if path is not None:
        lines = [line for line in read_text_file(path, f"{flag}-file").splitlines() if line.strip()]
        if not lines:
            raise LensworksError(f"--{flag}-file {path!r} has no non-empty line; expected one prompt per line")
        return lines
    if given is not None:
        for text in given:
            if not text:
                raise LensworksError(f"--{flag}: empty prompt; expected text")
    return given


def _token(model: Any, text: str, flag: str) -> int:
    """The id of ``text`` as one token of the model's tokenizer (refused otherwise, naming the pieces)."""
    from lensworks.model import LensworksError, encode_text, token_strings

    if model.tokenizer is None:
        raise LensworksError(f"{flag}: this model has no tokenizer, so it reads no text; leave the prompts out for "
                             "the built-in pair of token ids")
    ids = encode_text(model, text, prepend_bos=False, what=flag)
    if len(ids) != 1:
        pieces = token_strings(model, ids) if len(ids) else []
        raise LensworksError(f"{flag} {text!r} is {len(ids)} tokens {pieces} for this tokenizer; expected a single "
                             "token (mind the leading space: ' Mary' and 'Mary' are often different tokens)")
    return int(ids[0])


def _answers(model: Any, values: list[str] | None, n: int, flag: str) -> list[int]:
    from lensworks.model import LensworksError

    if not values:
        raise LensworksError(f"{flag} is needed with --clean/--corrupted: the token the prompts should be followed by")
    if len(values) not in (1, n):
        raise LensworksError(f"{flag} was given {len(values)} times for {n} prompt{'s' if n != 1 else ''}; give it "
                             "once for every prompt "
                             "or once per prompt")
    ids = [_token(model, v, flag) for v in values]
    return ids * n if len(ids) == 1 else ids


def _inputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """Clean and corrupted prompts, answer and wrong tokens, and a description of where they came from."""
    from lensworks.model import LensworksError

    clean, corrupted = _prompts(args, "clean"), _prompts(args, "corrupted")
    if clean is None and corrupted is None:
        if args.answer or args.wrong:
            raise LensworksError("--answer/--wrong go with --clean/--corrupted; the built-in pair brings its own")
        from lensworks.causal import induction_pair

        pair = induction_pair(model, seq_len=args.seq_len, n_seqs=args.n_seqs, seed=args.seed)
        return {"clean": pair.clean, "corrupted": pair.corrupted, "answer": pair.answer.tolist(),
                "wrong": pair.wrong.tolist(), "source": f"built-in pair: {pair.describe()}", "builtin": True}
    if clean is None or corrupted is None:
        raise LensworksError("give both clean and corrupted prompts (--clean and --corrupted, or the -file options), "
                             "or neither for the built-in pair")
    if len(clean) != len(corrupted):
        raise LensworksError(f"{len(clean)} clean prompts but {len(corrupted)} corrupted ones; give one corrupted "
                             "prompt per clean prompt")
    n = len(clean)
    return {"clean": clean, "corrupted": corrupted, "answer": _answers(model, args.answer, n, "--answer"),
            "wrong": _answers(model, args.wrong, n, "--wrong"), "builtin": False,
            "source": f"{n} prompt pair{'s' if n != 1 else ''} given"}


def _site(row: Any) -> str:
    """``"L1 pos 3"``, ``"L0H2"`` (every position) or ``"L0H2 pos 5"`` from a ``to_frame()`` row."""
    from lensworks._heads import HeadId

    at = f" pos {int(row.position)}" if int(row.position) >= 0 else ""
    if int(row.head) < 0:
        return f"L{int(row.layer)}{at}"
    return f"{HeadId(int(row.layer), int(row.head)).label}{at}"


def top_sites(exact: Any, approx: Any, top: int) -> list[dict[str, Any]]:
    """The ``top`` sites whose patch moves the metric furthest from the unpatched run's value (with
    attribution patching's estimate of each, when given): what the table prints and the JSON's ``top``.

    Example:
        >>> from lensworks.causal import activation_patching
        >>> res = activation_patching(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]]), "prob",
        ...                           answer_tokens=3, what="resid_pre")
        >>> sorted(r["site"] for r in top_sites(res, None, 2))  # the changed token, entering either block
        ['L0 pos 1', 'L1 pos 1']
    """
    frame = exact.to_frame()
    base = exact.clean_metric if exact.direction == "noise" else exact.corrupted_metric
    if approx is not None:
        frame = frame.assign(estimate=approx.to_frame()["metric"].to_numpy())
    frame = frame.assign(change=(frame["metric"] - base).abs()).sort_values("change", ascending=False, kind="stable")
    frame = frame.head(top).drop(columns=["change"])
    frame.insert(1, "site", [_site(r) for r in frame.itertuples()])
    return records(frame)


def run(args: argparse.Namespace) -> int:
    """Patch every site, print the sites that matter most; write JSON/HTML when asked.

    Args:
        args: The parsed ``patch`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["patch", "--top", "3", "--what", "resid_pre", "head_z"])  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        model: induction-2l (2 layers x 4 heads, d_vocab 151)
        prompts: built-in pair: 4 random sequences of 8 tokens, ...
        logit difference (answer - wrong) at the last token: clean 5.111, corrupted -5.346
        <BLANKLINE>
        activation patching (noise: the corrupted activation put into the clean run): the 3 sites that move the metric most
        target     site      metric  normalised
        ---------  --------  ------  ----------
        resid_pre  L0 pos 8  -5.346  0.000
        resid_pre  L1 pos 8  -5.344  0.000
        head_z     L1H0      2.011   0.704
        0
    """
    from lensworks.causal import activation_patching, attribution_patching, direct_logit_attribution

    model, name = model_from_args(args)
    cfg = model.cfg
    print(f"model: {name} ({cfg.n_layers} layers x {cfg.n_heads} heads, d_vocab {cfg.d_vocab})")
    data = _inputs(args, model)
    print(f"prompts: {data['source']}")
    common = dict(answer_tokens=data["answer"], wrong_tokens=data["wrong"], what=args.what,
                  positions="each" if args.each_position else None, position=args.position, direction=args.direction)
    exact = activation_patching(model, data["clean"], data["corrupted"], "logit_diff", batch_size=args.batch_size,
                                **common)
    where = "the last token" if args.position == -1 else f"position {args.position}"
    print(f"logit difference (answer - wrong) at {where}: clean {exact.clean_metric:.3f}, "
          f"corrupted {exact.corrupted_metric:.3f}")
    approx = attribution_patching(model, data["clean"], data["corrupted"], "logit_diff", exact=exact, **common) \
        if args.attribution else None
    rows = top_sites(exact, approx, args.top)
    way = ("noise: the corrupted activation put into the clean run" if args.direction == "noise"
           else "denoise: the clean activation put into the corrupted run")
    print(f"\nactivation patching ({way}): the {len(rows)} sites that move the metric most")
    header = ["target", "site", "metric", "normalised"] + (["estimate"] if approx is not None else [])
    print(format_table([[r[h] for h in header] for r in rows], header))
    payload: dict[str, Any] = {
        "model": name, "prompts": data["source"], "builtin_pair": data["builtin"],
        "clean": data["clean"].tolist() if data["builtin"] else data["clean"],
        "corrupted": data["corrupted"].tolist() if data["builtin"] else data["corrupted"],
        "answer_tokens": data["answer"], "wrong_tokens": data["wrong"], "metric": "logit_diff",
        "activation_patching": exact, "top": rows,
    }
    figures: list[Any] = [exact]
    if approx is not None:
        print("\nattribution patching: correlation of the estimate with the exact sweep, per target")
        print(format_table([(t, r) for t, r in approx.correlation.items()], ["target", "correlation"]))
        payload["attribution_patching"] = approx
        figures.append(approx)
    if args.dla:
        dla = direct_logit_attribution(model, data["clean"], data["answer"], wrong_tokens=data["wrong"],
                                       position=args.position)
        frame = dla.to_frame()
        frame = frame.reindex(frame["mean"].abs().sort_values(ascending=False, kind="stable").index).head(args.top)
        print(f"\ndirect logit attribution on the clean prompts: the {len(frame)} components that write most to the "
              f"logit difference ({float(dla.logit_diff.mean()):.3f} in all)")
        print(format_table([(r.component, float(r.mean), float(r.std)) for r in frame.itertuples()],
                           ["component", "mean", "std"]))
        payload["direct_logit_attribution"] = dla
        figures.append(dla)
    write_outputs(args, payload, figures, title=f"lensworks patch: {name}")
    return 0
