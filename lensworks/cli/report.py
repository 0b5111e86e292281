"""``lensworks report``: every analysis that applies to one checkpoint, on one offline HTML page."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lensworks.cli._common import at_least_four, positive_int, text_file
from lensworks.cli._common import add_model_argument, add_option, model_from_args, read_text_file

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["report"]).output
        'report.html'
    """
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML report (circuits, geometry, probes, causal) for a checkpoint",
        description=(
            "Run the circuits, geometry, probe and causal analyses that apply to one checkpoint and write them "
            "to a single HTML file that opens offline (plotly.js is inlined). Without a checkpoint: "
            "the bundled char-mlp demo model on held-out Python standard-library source text."
        ),
    )
    add_model_argument(p)
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--text", default=None, metavar="FILE", type=text_file, help="text the geometry and probes read")
    p.add_argument("--positive", default=None, metavar="FILE", type=text_file, help="prompts, one per line: first data set for the residual statistics")
    p.add_argument("--negative", default=None, metavar="FILE", type=text_file, help="prompts, one per line: second data set")
    p.add_argument("--skip-unknown", action="store_true",
                   help="drop characters of --text the vocabulary lacks (with a warning counting them) instead of stopping")
    p.add_argument("--corpus", default=None, metavar="FILE", type=text_file, help="fallback text when --text is not given")
    p.add_argument("--prompts", default=None, metavar="FILE", type=text_file,
                   help="prompts for the attention explorer, one per line (default: the first two text windows)")
    p.add_argument("--n-prompts", type=positive_int, default=32, help="text windows read by geometry (probes read 2x; default 32)")
    p.add_argument("--prompt-len", type=at_least_four, default=None,
                   help="tokens per window, at most the model's n_ctx (default 64, or n_ctx when shorter)")
    p.add_argument("--title", default=None, help="page title (default: lensworks report: CHECKPOINT)")
    add_option(p, "--seed")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _read(path: str | None, flag: str) -> str | None:
    """A text option's file, strictly UTF-8 (never decoded with replacement characters)."""
    from lensworks.model import LensworksError

    if path is None:
        return None
    text = read_text_file(path, flag.lstrip("-"))
    if not text.strip():
        raise LensworksError(f"{flag} {path!r} is empty; expected text")
    return text


def _read_prompts(path: str | None) -> str | None:
    """The ``--prompts`` file as text (one prompt per line), strictly UTF-8: a prompt is shown
    token by token, so undecodable bytes are refused rather than replaced."""
    from lensworks.model import LensworksError

    if path is None:
        return None
    text = read_text_file(path, "prompts")
    if not text.strip():
        raise LensworksError(f"--prompts {path!r} is empty; expected prompts, one per line")
    return text


def run(args: argparse.Namespace) -> int:
    """Run the analyses and write the report; prints where it wrote.

    Args:
        args: The parsed ``report`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["report", "induction-2l", "-o", "out/report.html", "--n-prompts", "2", "--prompt-len", "8",
        ...       "--no-progress"])  # doctest: +ELLIPSIS
        wrote out/report.html (... MB); open it in a browser: file:///.../out/report.html
        0
    """
    from lensworks import report
    from lensworks.model import LensworksError

    if (args.positive is None) != (args.negative is None):
        raise LensworksError("give both --positive FILE and --negative FILE, or neither")
    text = _read(args.text, "--text")
    corpus = _read(args.corpus, "--corpus")
    positive = _read(args.positive, "--positive")
    negative = _read(args.negative, "--negative")
    prompts = _read_prompts(args.prompts)
    model, name = model_from_args(args)
    from lensworks import zoo
    from lensworks._dist import is_main

    if text is None and corpus is None and name not in zoo.names() and is_main():
        print(f"lensworks report: note: no --text given; geometry and probes read the fallback text, "
              f"{report.FALLBACK_SOURCE}, which {name} may never have seen. Pass --text FILE for your own text; "
              "the page says which text each analysis read.", file=sys.stderr)
    results = report.analyse(
        model, text=text, corpus=corpus, positive=positive, negative=negative,
        n_prompts=args.n_prompts, prompt_len=args.prompt_len, seed=args.seed, progress=not args.no_progress,
        skip_unknown=args.skip_unknown, prompts=prompts,
    )
    if not is_main():  # under torchrun only rank 0 writes the page
        return 0
    out = report.build(results, args.output, title=args.title or f"lensworks report: {name}", model=model, model_name=name)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser: file://{out.resolve()}")
    return 0
