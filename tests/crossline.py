"""The file through which the TransformerLens 3 run hands its numbers to the TransformerLens 4
run (``LENSWORKS_CROSS_LINE``, set by .ci/run). Writes take a lock, so test workers running in
parallel (pytest -n) do not lose each other's entries."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

DUMP = os.environ.get("LENSWORKS_CROSS_LINE")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def store(key: str, value: Any) -> None:
    """Add ``key -> value`` to the file (read, update, write under the lock)."""
    path = Path(DUMP)
    with _locked(path):
        stored = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
        stored[key] = value
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stored))
        os.replace(tmp, path)


def load(key: str) -> Any:
    """The value the TransformerLens 3 run stored under ``key``."""
    path = Path(DUMP)
    assert path.is_file(), f"{path} is missing: run the TransformerLens 3 tests first with the same LENSWORKS_CROSS_LINE"
    with _locked(path):
        stored = json.loads(path.read_text())
    assert key in stored, f"{path} has no entry {key!r}: the TransformerLens 3 run did not reach it"
    return stored[key]
