"""``lensworks neighbours``: the model's next-token distribution approximated from similar corpus windows."""

from __future__ import annotations

import argparse
import random
from typing import Any

from lensworks.cli._common import finite_float, non_negative_int, positive_int, text_file
from lensworks.cli._common import (
    add_model_argument, add_option, fit_fallback, add_outputs, format_table, model_from_args, read_lines, read_text_file, records,
    write_outputs,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``neighbours`` subcommand.

    Args:
        subparsers: The top-level parser's ``add_subparsers()`` action.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> register(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["neighbours"]).window
        10
    """
    n = subparsers.add_parser(
        "neighbours", help="approximate the model's next-token distribution from similar corpus windows",
        description="Seed 004's approximation: index every unique corpus window's block outputs, then predict "
                    "each prompt's next token from the windows whose outputs point the same way.")
    add_model_argument(n)
    n.add_argument("--corpus", metavar="FILE", type=text_file, help="text file (default: the bundled stdlib corpus)")
    n.add_argument("--bytes", type=positive_int, default=50_000, help="characters of the corpus to index (default 50,000)")
    n.add_argument("--window", type=positive_int, default=10)
    n.add_argument("--hook", default=None,
                   help="block output compared (default mlp_out, the FFN output; attn_out for attention-only models)")
    n.add_argument("--prompts", type=positive_int, default=200, help="random corpus windows used as prompts")
    n.add_argument("--prompt-file", metavar="FILE", type=text_file, help="prompts, one per line, instead of random windows")
    n.add_argument("--thresholds", type=finite_float, nargs="+", help="cosine threshold, one or one per block (default 0.9)")
    n.add_argument("--weights", type=finite_float, nargs="+", help="block weights, one or one per block (default 1)")
    n.add_argument("--tune", action="store_true", help="tune thresholds/weights on half the prompts")
    add_option(n, "--seed")
    n.add_argument("--show", type=non_negative_int, default=10, help="how many prompts to print")
    add_option(n, "--batch-size", default=1024)
    n.add_argument("--progress", action="store_true", default=None, help="show progress bars")
    add_outputs(n)
    n.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit the neighbour approximation on a corpus and print how close it comes to the model.

    Args:
        args: The parsed ``neighbours`` arguments.

    Returns:
        0.

    Example:
        >>> from lensworks.cli import main
        >>> main(["neighbours", "--bytes", "1000", "--prompts", "5", "--window", "6"])  # doctest: +ELLIPSIS
        no --corpus: using lensworks.zoo.corpus(1000) (Python standard-library source)
        model: char-mlp; corpus: 1,000 characters; window 6; hook mlp_out
        indexed 830 unique windows x 4 blocks
        ...
        0
    """
    from lensworks.geometry import NeighbourApproximation

    text = read_text_file(args.corpus, "corpus")[: args.bytes] if args.corpus else None  # before loading
    given_prompts = read_lines(args.prompt_file, "prompt-file") if args.prompt_file else None
    model, name = model_from_args(args)
    if text is not None:
        source = f"{args.corpus} (first {len(text):,} characters)"
    else:
        from lensworks import zoo

        text = zoo.corpus(args.bytes)
        text = fit_fallback(model, text, "corpus")
        source = f"lensworks.zoo.corpus({args.bytes}) (Python standard-library source)"
        print(f"no --corpus: using {source}")
    approx = NeighbourApproximation.fit(model, text, window=args.window, hook=args.hook, batch_size=args.batch_size,
                                        progress=args.progress)
    print(f"model: {name}; corpus: {len(text):,} characters; window {args.window}; hook {approx.hook_}")
    print(f"indexed {approx.n_windows:,} unique windows x {len(approx.blocks)} blocks")
    if given_prompts is not None:
        prompts = given_prompts
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
        "model": name, "corpus": source, "window": args.window, "hook": approx.hook_, "n_windows": approx.n_windows,
        "thresholds": list(ev.thresholds), "weights": list(ev.weights), "mean": ev.mean, "std": ev.std,
        "min": ev.min, "max": ev.max, "n_unmatched": ev.n_unmatched, "baseline_mean": ev.baseline_mean, "per_prompt": records(df),
        "tuned": tuned.to_dict() if tuned is not None else None,
    }
    write_outputs(args, payload, [ev.figure()], title=f"lensworks neighbours: {name}")
    return 0
