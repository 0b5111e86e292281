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
    The file and its directory are flushed to disk (fsync) before and after the rename, so a
    crash right after never leaves an empty file in place of the old one.

    What is at ``path`` is respected:

    - a symbolic link stays a link: the file it points to is replaced;
    - a character device, FIFO or socket (``/dev/null``, ``/dev/stdout``, a named pipe) is
      written through, never replaced by a regular file;
    - a writable file in a directory where no temporary file can be made is written through
      (in place, not atomically), rather than refused.

    Example:
        >>> with atomic_path("out.json") as tmp:
        ...     n_chars = tmp.write_text("{}")
        >>> Path("out.json").read_text()
        '{}'
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))  # replace what the link points to, keep the link
    if target.exists() and not target.is_file() and not target.is_dir():
        yield target  # a device or pipe: write through
        return
    parent = target.parent
    if target.is_file() and os.access(target, os.W_OK) and not os.access(parent, os.W_OK | os.X_OK):
        yield target  # a writable file in a read-only directory: in place
        _fsync(target)
        return
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
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(parent, directory=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LensworksError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path, *, directory: bool = False) -> None:
    """Flush a file (or a directory's entries) to disk; a file system that cannot is left be."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns the path.

    Raises:
        LensworksError: The directory cannot be created or written (the message names the
            path and the reason); any previous file at ``path`` is left as it was.

    Example:
        >>> write_atomic("out/report.json", "{}")
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
        >>> check_writable("report.html")
        PosixPath('report.html')
    """
    target = Path(path)
    if str(path) == "":
        raise LensworksError(f"the {what} path is empty")
    if target.is_dir():
        raise LensworksError(f"the {what} path {target} is a directory; give a file name")
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.exists() and not os.access(target, os.W_OK):
        raise LensworksError(f"cannot write the {what} {target}: permission denied")
    if target.exists() and (not target.is_file() or os.access(target, os.W_OK)) and target.parent.is_dir():
        return Path(path)  # written through (a device, or a writable file whatever its directory)
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
