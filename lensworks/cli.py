"""The ``lensworks`` command: argument parsing only; every number comes from the library.

Each area registers its own subcommands through a ``register(subparsers)`` function in
``lensworks/<area>/_cli.py``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
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
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


#: Output-file options some subcommands take: (attribute, flag) pairs checked before any work.
_OUTPUT_OPTIONS = (("json", "--json"), ("html", "--html"), ("output", "--output"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (callable from tests).

    User errors (a bad path, a device this machine lacks, text the vocabulary cannot encode)
    print one line on stderr and return 2; an unexpected failure prints one line and returns
    1. ``--debug`` (anywhere on the command line, or ``LENSWORKS_DEBUG=1``) shows the Python
    traceback instead. A closed output pipe (``lensworks heads | head -1``) exits quietly.

    Example:
        >>> main(["heads", "--top", "3"])  # doctest: +SKIP
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LENSWORKS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from lensworks.model import LensworksError
    from lensworks.model._io import check_writable

    try:
        for attr, flag in _OUTPUT_OPTIONS:
            value = getattr(args, attr, None)
            if isinstance(value, str):
                check_writable(value, what=f"{flag} file")
        return int(args.func(args) or 0)
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lensworks {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        user_error = isinstance(exc, (LensworksError, OSError, FloatingPointError))
        reason = _one_line(exc)
        if not isinstance(exc, LensworksError):
            reason = f"{type(exc).__name__}: {reason}"
        hint = "" if user_error else " (this looks like a bug in lensworks: rerun with --debug for the traceback)"
        print(f"lensworks {args.command}: error: {reason}{hint}", file=sys.stderr)
        return 2 if user_error else 1


def _one_line(exc: BaseException) -> str:
    from lensworks.model._hf import plain_reason

    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return text or plain_reason(exc)


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
