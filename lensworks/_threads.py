"""How many CPU threads torch uses for lensworks' work, chosen so a busy machine is not
oversubscribed.

torch's intra-op pool (OpenMP) synchronises its threads at every parallel region; when other
processes hold some of the cores, the threads wait for each other at those barriers and a
2-thread step can run ten times slower than the same step on one thread. lensworks therefore
measures how much of the machine other processes are using right now (``/proc/stat`` minus this
process, over a short window) and uses only the cores that are free. The choice is restored
afterwards: torch's global thread setting is never left changed.

``threads=`` on an analysis, ``--threads N`` on the command line or ``LENSWORKS_THREADS=N`` fix the
number instead.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Any, Callable, Iterator, TypeVar

import torch

from lensworks.errors import LensworksError

__all__ = ["choose_threads", "using_threads", "adaptive_threads", "other_load"]

F = TypeVar("F", bound=Callable[..., Any])

_CACHE: dict[str, Any] = {"at": -1e9, "load": 0.0}
#: How many using_threads blocks are open (analyses inside one do not choose again).
_ACTIVE = {"depth": 0}
#: How long one measurement of the machine's load is reused (seconds).
_REUSE_S = 5.0
#: The measuring window (seconds).
_WINDOW_S = 0.1


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def other_load(window_s: float = _WINDOW_S) -> float:
    """How many cores other processes keep busy right now (0 on an idle machine; measured over
    ``window_s`` seconds, without this process's own CPU time; 0 where it cannot be measured).

    Example:
        >>> 0.0 <= other_load(0.01) <= os.cpu_count()
        True
    """
    now = time.monotonic()
    if now - _CACHE["at"] < _REUSE_S:
        return float(_CACHE["load"])
    a = _busy_jiffies()
    if a is None:
        return 0.0
    self_a, t_a = time.process_time(), time.monotonic()
    time.sleep(window_s)
    b = _busy_jiffies()
    self_b, t_b = time.process_time(), time.monotonic()
    if b is None or b[1] <= a[1]:
        return 0.0
    cores = os.cpu_count() or 1
    all_busy = cores * (b[0] - a[0]) / (b[1] - a[1])  # cores busy, whole machine
    mine = (self_b - self_a) / max(t_b - t_a, 1e-9)
    load = max(0.0, all_busy - mine)
    _CACHE.update(at=time.monotonic(), load=load)
    return load


def choose_threads(requested: int | None = None) -> int:
    """The number of torch threads to use: ``requested`` when given, else ``LENSWORKS_THREADS``,
    else the cores this process may use minus those other processes keep busy (at least 1, at
    most torch's current setting).

    Example:
        >>> choose_threads(1)
        1
    """
    if requested is None:
        env = os.environ.get("LENSWORKS_THREADS", "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise LensworksError(f"LENSWORKS_THREADS must be a positive integer, got {env!r}") from None
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise LensworksError(f"threads must be a positive integer, got {requested!r}")
        return int(requested)
    limit = min(torch.get_num_threads(), _cores())
    if limit <= 1:
        return 1
    free = _cores() - other_load()
    return max(1, min(limit, math.floor(free + 0.25)))


@contextlib.contextmanager
def using_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with ``choose_threads(n)`` torch threads; torch's setting is restored after.

    Example:
        >>> before = torch.get_num_threads()
        >>> with using_threads(1) as n:
        ...     n, torch.get_num_threads()
        (1, 1)
        >>> torch.get_num_threads() == before
        True
    """
    chosen = choose_threads(n)
    before = torch.get_num_threads()
    if chosen != before:
        torch.set_num_threads(chosen)
    _ACTIVE["depth"] += 1
    try:
        yield chosen
    finally:
        _ACTIVE["depth"] -= 1
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def adaptive_threads(fn: F) -> F:
    """Decorate a public analysis: it runs under :func:`using_threads` (outermost call only, so
    nested analyses do not measure again)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE["depth"]:  # inside using_threads already (an outer analysis, the CLI's --threads)
            return fn(*args, **kwargs)
        with using_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
