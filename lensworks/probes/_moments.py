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

    __slots__ = ("n", "shift", "sx", "g", "xty", "xty_shuf", "counts")

    def __init__(self, d: int, c: int, device: torch.device) -> None:
        f64 = torch.float64
        self.n = 0
        self.shift: Tensor | None = None
        self.sx = torch.zeros(d, dtype=f64, device=device)
        self.g = torch.zeros(d, d, dtype=f64, device=device)
        self.xty = torch.zeros(c, d, dtype=f64, device=device)
        self.xty_shuf = torch.zeros(c, d, dtype=f64, device=device)
        self.counts = torch.zeros(c, dtype=f64, device=device)

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
            self.xty_shuf += (torch.nn.functional.one_hot(ys, c).to(work).T @ xs).to(torch.float64)
        self.counts += onehot.sum(0, dtype=torch.float64)

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
        >>> moments = {}
        >>> accumulate(moments, idx, store, plan.train, plan.target, None, lambda l, s, k: (l, s, k), 5, device)  # doctest: +SKIP
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
