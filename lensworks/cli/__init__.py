"""The ``lensworks`` command: argument parsing only; every number comes from the library.

One module per subcommand (``heads``, ``geometry``, ``neighbours``, ``probes``, ``patch``, ``report``), each
with a ``register(subparsers)`` and a ``run(args)``; the options they share and their default
models live in :mod:`lensworks.cli._common`. This module assembles them and runs one:
``lensworks COMMAND ...`` or ``python -m lensworks.cli COMMAND ...``. The library never imports it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence


__all__ = ["main", "build_parser"]

#: The subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ("heads", "geometry", "neighbours", "probes", "patch", "report")


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand.

    Returns:
        An ``argparse`` parser; a parsed subcommand's ``func`` runs it.

    Example:
        >>> args = build_parser().parse_args(["heads", "--top", "3"])
        >>> args.command, args.top
        ('heads', 3)
    """
    from importlib import import_module

    from lensworks import __version__

    parser = _Parser(
        prog="lensworks",
        description="Head scores, probes, residual-stream geometry and activation patching for TransformerLens models.",
    )
    parser.add_argument("--version", action="version", version=f"lensworks {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (accepted anywhere on the line)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for every step (accepted anywhere on the line; default: the cores other "
                             "processes leave free, measured at start; LENSWORKS_THREADS=N also sets it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


#: Output-file options some subcommands take: (attribute, flag) pairs checked before any work.
_OUTPUT_OPTIONS = (("json", "--json"), ("html", "--html"), ("output", "--output"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (callable from tests).

    User errors (a bad path, a device this machine lacks, text the vocabulary cannot encode)
    print one line on stderr and return 2; an unexpected failure prints one line and returns
    1. ``--debug`` (anywhere on the command line, or ``LENSWORKS_DEBUG=1``) shows the Python
    traceback instead. A closed output pipe (``lensworks heads | head -1``) exits quietly.
    Output paths (``--json``, ``--html``, ``--output``) are checked before any work.

    Args:
        argv: The arguments after ``lensworks``; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 for a user error or no command, 1 for an unexpected failure, 130 when
        interrupted.

    Example:
        >>> main(["heads", "--top", "x"])  # an argument error: one line on stderr, exit code 2
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LENSWORKS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    argv, threads = _pop_threads(argv)
    if isinstance(threads, str):  # not a positive integer: one line, like argparse's own errors
        print(f"lensworks: error: --threads: expected a positive integer, got {threads!r}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or an argument error (one line already printed)
        return stop.code if isinstance(stop.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from lensworks.errors import LensworksError

    try:
        from lensworks._dist import main_process_only
        from lensworks.model._io import check_writable

        seen: dict[str, str] = {}
        for attr, flag in _OUTPUT_OPTIONS:
            value = getattr(args, attr, None)
            if isinstance(value, str):
                check_writable(value, what=f"{flag} file")
                key = os.path.realpath(value)
                if key in seen and not _is_device(key):
                    raise LensworksError(f"{seen[key]} and {flag} name the same file {value!r}; one would overwrite "
                                         "the other: give each its own path")
                seen[key] = flag
        _init_distributed_from_env()
        from lensworks._threads import using_threads

        with main_process_only(), using_threads(threads):  # under torchrun: every rank computes its share, rank 0 prints
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
        user_error = isinstance(exc, (LensworksError, OSError))
        reason = _one_line(exc)
        if not isinstance(exc, LensworksError):
            reason = f"{type(exc).__name__}: {reason}"
        hint = "" if user_error else " (this looks like a bug in lensworks: rerun with --debug for the traceback)"
        print(f"lensworks {args.command}: error: {reason}{hint}", file=sys.stderr)
        return 2 if user_error else 1


def _pop_threads(argv: list[str]) -> tuple[list[str], int | str | None]:
    """Take ``--threads N`` (or ``--threads=N``) from anywhere on the line: the torch threads every
    command uses (default: the cores other processes leave free; see lensworks._threads). Returns
    the rest of the line and N, None when absent, or the bad text when N is not a positive integer."""
    out, value = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--threads" or a.startswith("--threads="):
            if a == "--threads":
                value = argv[i + 1] if i + 1 < len(argv) else ""
                i += 2
            else:
                value = a.split("=", 1)[1]
                i += 1
            continue
        out.append(a)
        i += 1
    if value is None:
        return out, None
    return out, int(value) if value.isdigit() and int(value) >= 1 else value


def _is_device(path: str) -> bool:
    """Whether ``path`` is a device or pipe (``/dev/null``), which several outputs may share."""
    import stat

    try:
        return not stat.S_ISREG(os.stat(path).st_mode) and not stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _init_distributed_from_env() -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (NCCL on GPUs, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    import datetime

    import torch

    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        return
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=float(os.environ.get("LENSWORKS_DIST_TIMEOUT", "600")))
    dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout)


def _one_line(exc: BaseException) -> str:
    from lensworks.model._files import plain_reason

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
