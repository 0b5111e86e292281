"""Streaming moments of probe training rows: sums and Gram matrices accumulated batch by batch.

One :class:`Moments` per probe holds what the closed-form solvers of
:mod:`lensworks.probes._solvers` need (``n``, ``sum x``, ``X^T X``, ``X^T Y`` for the true and
the shuffled labels, class counts), so no activation is kept once its batch is added.
:func:`accumulate` routes one batch of captured activations to the moments of every probe.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensworks.probes._solvers import lda_from_moments, ridge_from_moments

__all__ = ["Moments", "accumulate"]

#: Key of one probe from (layer, stream, offset index): per probe, or shared across layers.
KeyFn = Callable[[int, str, int], tuple]


class Moments:
    """Streaming moments of one probe's training rows.

    Rows are shifted by a fixed vector (the mean of the first batch) before accumulating, so
    that the per-batch products can be formed in float32 without losing the small centred
    variance to a large common mean; the sums themselves are kept in float64.

    Example:
        >>> mom = Moments(4, 3, torch.device("cpu"))
        >>> mom.add(torch.randn(10, 4), torch.randint(0, 3, (10,)), None)
        >>> w, b, alpha = mom.solve("lda", None)
        >>> w.shape, b.shape
        (torch.Size([4, 3]), torch.Size([3]))
    """

    __slots__ = ("n", "shift", "sx", "g", "xty", "xty_shuf", "counts", "counts_shuf")

    def __init__(self, d: int, c: int, device: torch.device) -> None:
        f64 = torch.float64
        self.n = 0
        self.shift: Tensor | None = None
        self.sx = torch.zeros(d, dtype=f64, device=device)
        self.g = torch.zeros(d, d, dtype=f64, device=device)
        self.xty = torch.zeros(c, d, dtype=f64, device=device)
        self.xty_shuf = torch.zeros(c, d, dtype=f64, device=device)
        self.counts = torch.zeros(c, dtype=f64, device=device)
        self.counts_shuf = torch.zeros(c, dtype=f64, device=device)  # shuffled labels' counts on these rows

    def add(self, x: Float[Tensor, "rows d"], y: Int[Tensor, "rows"], ys: Int[Tensor, "rows"] | None) -> None:
        """Add rows ``x`` with class indices ``y`` (and shuffled class indices ``ys``, or None)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.shift is None:
            self.shift = x.to(torch.float64).mean(0)
        xs = x.to(work) - self.shift.to(work)
        c = self.counts.shape[0]
        self.n += xs.shape[0]
        self.sx += xs.sum(0, dtype=torch.float64)
        self.g += (xs.T @ xs).to(torch.float64)
        # class sums as a one-hot product: a dense matmul is much faster than index_add_
        onehot = torch.nn.functional.one_hot(y, c).to(work)
        self.xty += (onehot.T @ xs).to(torch.float64)
        if ys is not None:
            onehot_s = torch.nn.functional.one_hot(ys, c).to(work)
            self.xty_shuf += (onehot_s.T @ xs).to(torch.float64)
            self.counts_shuf += onehot_s.sum(0, dtype=torch.float64)
        self.counts += onehot.sum(0, dtype=torch.float64)

    def recentre(self, shift: Tensor) -> None:
        """Express the sums relative to another shift (exact algebra, float64)."""
        with torch.inference_mode():  # the sums may have been created inside a forward pass
            self._recentre(shift)

    def _recentre(self, shift: Tensor) -> None:
        shift = shift.to(self.sx)
        if self.shift is None:
            self.shift = shift.clone()
            return
        delta = self.shift.to(self.sx) - shift  # x - shift = (x - self.shift) + delta
        self.g += torch.outer(self.sx, delta) + torch.outer(delta, self.sx) + self.n * torch.outer(delta, delta)
        self.sx += self.n * delta
        self.xty += self.counts[:, None] * delta[None]
        self.xty_shuf += self.counts_shuf[:, None] * delta[None]
        self.shift = shift.clone()

    def add_moments(self, other: "Moments") -> None:
        """Add another probe's moments (recentred onto this one's shift)."""
        if other.n == 0:
            return
        if self.shift is None:
            self.shift = other.shift.clone()
        other.recentre(self.shift)
        self.n += other.n
        with torch.inference_mode():
            self.sx += other.sx
            self.g += other.g
            self.xty += other.xty
            self.xty_shuf += other.xty_shuf
            self.counts += other.counts
            self.counts_shuf += other.counts_shuf

    def all_reduce(self) -> None:
        """Under torch.distributed: every rank's rows, on a shift shared by all (rank 0's first batch
        where it has one); a no-op alone."""
        from lensworks._dist import all_reduce_sum, gather_each, is_distributed

        if not is_distributed():
            return
        d = self.sx.shape[0]
        mine = torch.cat([torch.tensor([float(self.shift is not None)], dtype=torch.float64, device=self.sx.device),
                          self.shift.to(self.sx) if self.shift is not None else torch.zeros(d, dtype=torch.float64,
                                                                                             device=self.sx.device)])
        shifts = [t for t in gather_each(mine) if float(t[0]) > 0]
        if not shifts:
            return
        self.recentre(shifts[0][1:])
        self.n = int(all_reduce_sum(torch.tensor(float(self.n), dtype=torch.float64)))
        for name in ("sx", "g", "xty", "xty_shuf", "counts", "counts_shuf"):
            setattr(self, name, all_reduce_sum(getattr(self, name)))

    def solve(
        self, method: str, alpha: float | None, shuffled: bool = False
    ) -> tuple[Float[Tensor, "d c"], Float[Tensor, "c"], float]:
        """``(W, b, alpha)`` of ``"lda"`` (else ridge) for the raw rows, true or shuffled labels."""
        xty = self.xty_shuf if shuffled else self.xty
        counts = self.counts  # a permutation keeps the class counts
        if method == "lda":
            w, b, a = lda_from_moments(self.n, self.sx, self.g, xty.T, counts, alpha=alpha)
        else:
            w, b, a = ridge_from_moments(self.n, self.sx, self.g, xty.T, counts, alpha=alpha)
        assert self.shift is not None
        return w, b - self.shift @ w, a  # undo the shift: (x - c) W + b = x W + (b - c W)


def accumulate(
    moments: dict[tuple, Moments],
    idx: Int[Tensor, "batch"],
    store: dict[tuple[int, str], Float[Tensor, "batch pos d"]],
    rows: Sequence[Bool[Tensor, "n pos"]],
    target: Sequence[Int[Tensor, "n pos"]],
    shuffled: Sequence[Int[Tensor, "n pos"]] | None,
    key: KeyFn,
    n_classes: int,
    device: torch.device,
) -> None:
    """Add one batch of activations to the moments of every probe, creating them as needed.

    Args:
        moments: Moments per probe key, updated in place.
        idx: Sequence indices of the batch.
        store: Activations of the batch per ``(layer, stream)``.
        rows: Per offset, the ``[n, pos]`` mask of the rows to add.
        target: Per offset, the class index of every row.
        shuffled: Per offset, the shuffled class index of every row, or None to skip them.
        key: Probe key of ``(layer, stream, offset index)``.
        n_classes: Number of classes.
        device: Where new moments are kept.

    Example:
        >>> from lensworks.probes._data import make_plan
        >>> plan = make_plan(torch.randint(1, 9, (10, 6)), torch.full((10,), 6), (0,), None, 0.2, 0)
        >>> store = {(0, "resid_pre"): torch.randn(10, 6, 4)}  # activations of all 10 sequences
        >>> moments = {}
        >>> accumulate(moments, torch.arange(10), store, plan.train, plan.target, None,
        ...            lambda l, s, k: (l, s, k), 9, torch.device("cpu"))
        >>> list(moments), moments[(0, "resid_pre", 0)].n == int(plan.train[0].sum())
        ([(0, 'resid_pre', 0)], True)
    """
    for (layer, stream), act in store.items():
        for k in range(len(rows)):
            mask = rows[k][idx]
            if not bool(mask.any()):
                continue
            probe = key(layer, stream, k)
            if probe not in moments:
                moments[probe] = Moments(act.shape[-1], n_classes, device)
            moments[probe].add(act[mask], target[k][idx][mask], shuffled[k][idx][mask] if shuffled is not None else None)
