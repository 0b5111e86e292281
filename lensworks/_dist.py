"""Data parallelism over ``torch.distributed``: every rank gets the full data, works on its share,
and the shares are combined so every rank returns what one process would.

Nothing here runs unless a process group is initialised (``torchrun`` with
``torch.distributed.init_process_group``); then ``world()`` is ``(rank, size)``. The analyses
that stream over data shard each batch into contiguous row ranges (:class:`Shard`), check that
every rank was given the same data (a checksum compared across ranks), and merge:

- sums and counts with :func:`all_reduce_sum`;
- per-row results with :meth:`Shard.gather`, which puts every row back at its place in the
  single-process order;
- weight-only results are computed once on rank 0 and broadcast (:func:`on_rank0`).

Collectives block until every rank reaches them; set a ``timeout`` in ``init_process_group``
so a rank that fails makes the others fail instead of waiting forever.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import Tensor

from lensworks.model import LensworksError

__all__ = ["world", "is_distributed", "is_main", "Shard", "all_reduce_sum", "gather_each", "gather_each_ragged", "on_rank0", "rank0_only",
           "main_process_only", "check_same_weights", "weight_fingerprint"]

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when no process group is initialised.

    Example:
        >>> world()
        (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """Whether more than one process shares the work."""
    return world()[1] > 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that prints, shows progress and writes files."""
    return world()[0] == 0


def _collective(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; a backend failure (a peer that never came, or left) becomes one clear
    error instead of gloo's "Connection closed by peer" or a timeout."""
    try:
        return fn()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise LensworksError(
            f"{what}: a torch.distributed collective failed ({first}); under torchrun every rank must call the same "
            "analysis with the same arguments: was it called on rank 0 only (e.g. inside `if rank == 0:`), or did "
            "another rank fail or exit?"
        ) from exc


def weight_fingerprint(model: Any) -> Tensor:
    """A few float64 numbers that differ when two models' weights differ: per parameter its sum,
    its norm and the sum of a strided sample (in-kernel reductions, no copy of the weights).

    Example:
        >>> weight_fingerprint(model).shape
        torch.Size([3])
    """
    out = torch.zeros(3, dtype=torch.float64)
    for i, (_, p) in enumerate(model.named_parameters(), start=1):
        flat = p.detach().reshape(-1)
        out[0] += i * float(flat.sum(dtype=torch.float64))
        out[1] += i * float(torch.linalg.vector_norm(flat, dtype=torch.float64))
        out[2] += i * float(flat[::7919].sum(dtype=torch.float64))
    return out


def check_same_weights(model: Any, what: str) -> None:
    """Under torch.distributed, raise on every rank when the ranks hold different weights (their
    statistics would be a blend of several models); nothing when alone."""
    if not is_distributed():
        return
    dev = _device_for_collectives()
    mine = weight_fingerprint(model).to(dev)
    hi, lo = mine.clone(), mine.clone()
    _collective(what, lambda: torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX))
    _collective(what, lambda: torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN))
    if not torch.allclose(hi, lo, rtol=1e-12, atol=0.0):
        raise LensworksError(
            f"{what}: the ranks hold different weights (fingerprints {lo.tolist()} .. {hi.tolist()}); under "
            "torch.distributed every rank must load the same checkpoint, or the result would blend several models"
        )


def _device_for_collectives(like: Tensor | None = None) -> torch.device:
    dist = torch.distributed
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over ranks (a new tensor on ``t``'s device; ``t`` itself when alone).

    Example:
        >>> all_reduce_sum(torch.ones(2))
        tensor([1., 1.])
    """
    if not is_distributed():
        return t
    dev = _device_for_collectives()
    out = t.detach().to(dev).clone()
    _collective("all_reduce", lambda: torch.distributed.all_reduce(out))
    return out.to(t.device)


def _all_gather(t: Tensor) -> list[Tensor]:
    """Gather tensors whose first dimension differs between ranks."""
    dist = torch.distributed
    rank, size = world()
    dev = _device_for_collectives()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    _collective("all_gather", lambda: dist.all_gather(sizes, n))
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.zeros_like(padded) for _ in range(size)]
    _collective("all_gather", lambda: dist.all_gather(parts, padded))
    return [p[: int(s)].to(t.device) for p, s in zip(parts, sizes)]


def gather_each_ragged(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` whose first dimension may differ, in rank order; ``[t]`` when alone.

    Example:
        >>> [x.tolist() for x in gather_each_ragged(torch.tensor([1, 2]))]
        [[1, 2]]
    """
    return _all_gather(t) if is_distributed() else [t]


def gather_each(t: Tensor) -> list[Tensor]:
    """Every rank's ``t`` (same shape on all ranks), in rank order; ``[t]`` when alone.

    Example:
        >>> [x.tolist() for x in gather_each(torch.tensor([1.0]))]
        [[1.0]]
    """
    if not is_distributed():
        return [t]
    return [p[0] for p in _all_gather(t[None])]


class Shard:
    """This rank's rows of every batch, and how to put per-row results back in order.

    Each batch of ``b`` rows is split into ``world_size`` contiguous ranges; this rank keeps its
    own. A checksum of every full batch (all ranks see all data) is compared across ranks at
    :meth:`finish`, so ranks given different data fail together with a clear error.

    Example:
        >>> shard = Shard("data")
        >>> shard.take(torch.arange(6)[:, None]).flatten().tolist()  # one process keeps all rows
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(self, what: str, model: Any = None):
        self.what = what
        self.rank, self.size = world()
        if model is not None:
            check_same_weights(model, what)
        self.rows: list[Tensor] = []  # global row index of every row this rank kept
        self.n_total = 0
        self._checksum = torch.zeros(2, dtype=torch.float64)

    def _range(self, n: int) -> tuple[int, int]:
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def take(self, batch: Tensor, *others: Tensor) -> Any:
        """This rank's rows of ``batch`` (and of ``others``, aligned), recording their global indices."""
        n = batch.shape[0]
        if batch.dtype in (torch.long, torch.int32, torch.int64) and batch.numel():
            weights = torch.arange(1, batch.shape[-1] + 1, dtype=torch.float64, device=batch.device)
            self._checksum[0] += float((batch.double() * weights).sum())
        self._checksum[1] += n
        lo, hi = self._range(n) if self.size > 1 else (0, n)
        self.rows.append(torch.arange(self.n_total + lo, self.n_total + hi))
        self.n_total += n
        if not others:
            return batch[lo:hi]
        return (batch[lo:hi], *(o[lo:hi] for o in others))

    def finish(self) -> None:
        """Compare the data checksums of all ranks; raise on every rank when they differ."""
        if self.size < 2:
            return
        dev = _device_for_collectives()
        mine = self._checksum.to(dev)
        hi, lo = mine.clone(), mine.clone()
        _collective(self.what, lambda: torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX))
        _collective(self.what, lambda: torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN))
        if not torch.equal(hi, lo):
            raise LensworksError(
                f"{self.what}: the ranks were given different data (checksums {lo.tolist()} .. {hi.tolist()}); "
                "under torch.distributed every rank must pass the same full data, and lensworks splits it"
            )

    def gather(self, local: Tensor, dim: int = 0) -> Tensor:
        """Per-row results of every rank, in the single-process row order along ``dim``."""
        if self.size < 2:
            return local
        idx = torch.cat(self.rows) if self.rows else torch.zeros(0, dtype=torch.long)
        moved = local.movedim(dim, 0).contiguous()
        if moved.shape[0] != idx.numel():
            raise LensworksError(f"{self.what}: {moved.shape[0]} local results for {idx.numel()} rows")
        all_idx = torch.cat(_all_gather(idx))
        all_vals = torch.cat(_all_gather(moved))
        out = torch.empty_like(all_vals)
        out[all_idx.to(all_vals.device)] = all_vals
        return out.movedim(0, dim)

    def gather_objects(self, local: list[Any]) -> list[Any]:
        """Per-row Python objects (labels) of every rank, in the single-process order."""
        if self.size < 2:
            return local
        idx = (torch.cat(self.rows) if self.rows else torch.zeros(0, dtype=torch.long)).tolist()
        parts: list[Any] = [None] * self.size
        _collective(self.what, lambda: torch.distributed.all_gather_object(parts, list(zip(idx, local))))
        ordered = sorted((i, v) for part in parts for i, v in part)
        return [v for _, v in ordered]


def on_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result (weight-only analyses: no
    rank computes what another already did).

    Example:
        >>> on_rank0(lambda: 3)
        3
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [None, None]
    failure: Exception | None = None
    if is_main():
        try:
            box = [fn(), None]
        except Exception as exc:  # tell the other ranks instead of leaving them waiting
            failure, box = exc, [None, f"{type(exc).__name__}: {exc}"]
    _collective("broadcast", lambda: torch.distributed.broadcast_object_list(box, src=0))
    if failure is not None:
        raise failure
    if box[1] is not None:
        raise LensworksError(f"rank 0 failed: {box[1]}")
    return box[0]


def _to_cpu(obj: Any) -> Any:
    """Tensors of a result moved to the CPU before they travel between ranks."""
    import dataclasses

    if isinstance(obj, Tensor):
        return obj.cpu()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def rank0_only(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a weight-only analysis: under torch.distributed rank 0 computes it once and every
    rank receives the result (on the CPU). Every rank must make the call.

    Example:
        >>> @rank0_only
        ... def f(x):
        ...     return x + 1
        >>> f(1)
        2
    """
    import functools

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> T:
        if not is_distributed():
            return fn(*args, **kwargs)
        return on_rank0(lambda: _to_cpu(fn(*args, **kwargs)))

    return inner


@contextlib.contextmanager
def main_process_only() -> Iterator[bool]:
    """Silence stdout on ranks other than 0 (the CLI prints and writes once); yields ``is_main()``."""
    if is_main():
        yield True
        return
    import io
    import sys

    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        yield False
    finally:
        sys.stdout = saved
