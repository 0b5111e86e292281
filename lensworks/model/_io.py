"""Writing files safely: every file lensworks writes lands whole or not at all.

A file is written to a temporary sibling in the same directory and renamed over the target,
so a crash, a full disk or a second writer never leaves a half-written page or checkpoint,
and a failed write keeps the previous file. :func:`check_writable` lets commands refuse an
unwritable output path before they spend minutes computing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from lensworks.model._core import LensworksError

__all__ = ["atomic_path", "write_atomic", "check_writable"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` if the block succeeds.

    The caller writes the temporary file however it likes (``safetensors.save_file``,
    ``write_text``); on an exception the temporary file is removed and ``path`` is untouched.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    target = Path(path)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise LensworksError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if target.exists():  # keep the target's permission bits
            with contextlib.suppress(OSError):
                os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LensworksError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path.

    Raises:
        LensworksError: The directory cannot be created or written (the message names the
            path and the reason); any previous file at ``path`` is left as it was.

    Example:
        >>> write_atomic("out/report.json", "{}")  # doctest: +SKIP
        PosixPath('out/report.json')
    """
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return Path(path)


def check_writable(path: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Refuse early an output file that could not be written (before any computation).

    Checks that ``path`` is not a directory and that its nearest existing ancestor directory
    is writable (missing directories are created later, when the file is written).

    Example:
        >>> check_writable("report.html")  # doctest: +SKIP
        PosixPath('report.html')
    """
    target = Path(path)
    if str(path) == "":
        raise LensworksError(f"the {what} path is empty")
    if target.is_dir():
        raise LensworksError(f"the {what} path {target} is a directory; give a file name")
    if target.exists() and not os.access(target, os.W_OK):
        raise LensworksError(f"cannot write the {what} {target}: permission denied")
    parent = target.parent if str(target.parent) else Path(".")
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise LensworksError(f"cannot write the {what} {target}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LensworksError(f"cannot write the {what} {target}: the directory {parent} is not writable")
    return target
