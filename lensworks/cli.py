"""The ``lensworks`` command: argument parsing only; every number comes from the library.

Each area registers its own subcommands through a ``register(subparsers)`` function in
``lensworks/<area>/_cli.py``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]

_AREAS = ("lensworks.circuits._cli", "lensworks.geometry._cli", "lensworks.probes._cli", "lensworks._report_cli")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    from lensworks import __version__

    parser = argparse.ArgumentParser(
        prog="lensworks",
        description="Head scores, probes and residual-stream geometry for TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"lensworks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (callable from tests).

    Example:
        >>> main(["heads", "--top", "3"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from lensworks.model import LensworksError

    try:
        return int(args.func(args) or 0)
    except LensworksError as exc:
        print(f"lensworks {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
