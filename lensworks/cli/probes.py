"""``lensworks probes``: per-layer input-token probes on a text file (argument parsing only)."""

from __future__ import annotations

import argparse
from typing import Any

from lensworks._constants import PROBE_METHODS as METHODS
from lensworks.cli._common import positive_int, text_file
from lensworks.cli._common import (
    add_model_argument, add_option, fit_fallback, add_outputs, format_table, model_from_args, read_text_file, records, write_outputs,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``probes`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["probes"]).offsets
        '0,-1,-2'
    """
    p = subparsers.add_parser(
        "probes",
        help="linear probes: which input tokens each layer still holds",
        description=(
            "Fit a linear probe per layer, stream and offset that recovers the input token from the "
            "residual stream; print held-out accuracy beside chance and the random-model and "
            "shuffled-label controls. Without arguments: the bundled char-mlp model on Python "
            "standard-library source text."
        ),
    )
    add_model_argument(p)
    p.add_argument("--text", default=None, type=text_file, help="text file to probe on (default: standard-library source text)")
    p.add_argument("--max-tokens", type=positive_int, default=25_000, help="tokens of text to use (default 25000)")
    p.add_argument("--skip-unknown", action="store_true",
                   help="drop characters the vocabulary lacks (with a warning counting them) instead of stopping")
    p.add_argument(
        "--method", choices=METHODS, default="fast-logistic",
        help="probe fitting rule (default fast-logistic: scikit-learn's logistic objective in a few whitened "
             "L-BFGS steps; auto: per probe the better of lda and ridge on a validation slice, streamed, for "
             "data whose activations do not fit in memory)",
    )
    p.add_argument("--offsets", default="0,-1,-2", help="comma-separated offsets (default 0,-1,-2)")
    p.add_argument("--streams", default=None, help="comma-separated streams (default resid_pre,resid_mid,resid_post)")
    p.add_argument("--shared", action="store_true", help="one probe per offset shared by every layer and stream")
    p.add_argument("--no-controls", action="store_true", help="skip the random-model and shuffled-label controls")
    add_option(p, "--batch-size", default=16)
    add_option(p, "--seed")
    add_outputs(p, "write the results as JSON", "write the figures as one HTML page")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit the probes, print their accuracy beside the controls; write JSON/HTML when asked.

    Args:
        args: The parsed ``probes`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["probes", "--max-tokens", "2000", "--no-controls", "--method", "ridge"])  # doctest: +ELLIPSIS
        char-mlp: 15 windows of 128 tokens, method=ridge, shared=False
        layer  stream      offset  accuracy  chance  control_random_model  control_shuffled
        ...
        0
    """
    from lensworks.model import LensworksError
    from lensworks.report import Context, registry, run_sections

    # every argument is read and checked before the model loads
    if args.text:
        text = read_text_file(args.text, "text")
    else:
        from lensworks import zoo

        text = zoo.corpus(args.max_tokens * 4)
    try:
        offsets = tuple(int(o) for o in args.offsets.split(",") if o.strip())
    except ValueError:
        raise LensworksError(f"--offsets must be comma-separated integers, got {args.offsets!r}") from None
    if not offsets:
        raise LensworksError(f"--offsets must name at least one offset, got {args.offsets!r}")
    streams = None if not args.streams else tuple(s.strip() for s in args.streams.split(",") if s.strip())
    model, name = model_from_args(args)
    from lensworks.model import text_windows
    if not args.text:
        text = fit_fallback(model, text, "text")

    windows = text_windows(model, text, max_tokens=args.max_tokens, skip_unknown=args.skip_unknown)
    # the report's probe sections on these windows, with this command's options
    ctx = Context.of(model, seed=args.seed, windows_given={"probes": windows},
                     options={"streams": streams, "offsets": offsets, "method": args.method, "shared": args.shared,
                              "batch_size": args.batch_size, "controls": not args.no_controls, "n_random": 100})
    run = run_sections(ctx, registry(names=["input-token probes", "comparison with W_E"]))
    res, cmp = run.result("input-token probes"), run.result("comparison with W_E")
    frame = res.to_frame()
    cols = [c for c in frame.columns]
    print(f"{name}: {windows.shape[0]} windows of {windows.shape[1]} tokens, method={res.method}, shared={res.shared}")
    print(format_table([tuple(r) for r in frame.itertuples(index=False)], cols))
    last = (res.layers[-1], res.streams[-1], res.offsets[0])
    summary = cmp.summary()
    print(
        f"probe at layer {last[0]} {last[1]} offset {last[2]} vs W_E: overlap {summary['overlap_embed']['value']:.3f} "
        f"(random {summary['overlap_embed']['null_lo']:.3f}..{summary['overlap_embed']['null_hi']:.3f}: "
        f"{summary['overlap_embed']['verdict']})"
    )
    payload = {
        "model": name,
        "windows": list(windows.shape),
        "table": records(frame),
        "results": res.to_dict(),
        "comparison": {"probe": {"layer": last[0], "stream": last[1], "offset": last[2]}, "summary": summary},
    }
    write_outputs(args, payload, [res.figure(), cmp.figure()], title=f"lensworks probes: {name}")
    return 0
