"""``python -m lensworks.zoo {list,train}``: list the bundled models or retrain one from its recipe."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _list(args: argparse.Namespace) -> int:
    from lensworks.zoo import describe, names, path

    for name in names():
        info = describe(name)
        loss = info["final_loss"]
        loss_text = f"final train loss {loss:.3f}" if isinstance(loss, (int, float)) else "not trained"
        print(f"{name:14s} {info['summary']} ({loss_text}; {path(name)})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from lensworks.zoo import bpe, recipes

    out = args.out or f"out/zoo/{args.name}"
    if args.name in bpe.RECIPES:  # a Hugging Face model, trained with transformers
        directory = bpe.train_and_save(args.name, out, steps=args.steps, threads=args.threads, log=print)
    else:
        directory = recipes.train_and_save(args.name, out, steps=args.steps, threads=args.threads, log=print)
    info = json.loads((directory / "recipe.json").read_text())
    print(f"wrote {directory} in {info['train_time_s']} s; final train loss {info['final_loss']:.4f}")
    print(json.dumps(info["metrics"], indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``.

    Example:
        >>> main(["list"])  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        induction-2l   2-layer attention-only transformer ...
        char-mlp       4-layer character-level transformer ...
        bpe-llama      2-layer Llama-style transformer ...
        0
    """
    from lensworks.zoo import names

    parser = argparse.ArgumentParser(prog="python -m lensworks.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the bundled models")
    p_list.set_defaults(func=_list)
    p_train = sub.add_parser("train", help="retrain a bundled model from its recipe (CPU, seeded)")
    p_train.add_argument("name", choices=names())
    p_train.add_argument("--out", default=None, help="output directory (default out/zoo/NAME)")
    p_train.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p_train.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1, the setting the bundled models were trained with; "
        "other counts change float rounding, so the weights differ slightly)",
    )
    p_train.set_defaults(func=_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
