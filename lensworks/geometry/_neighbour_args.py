"""Argument checks of the neighbour approximation: per-block thresholds and weights, search grids.
Every value is a finite number where one is expected (a NaN threshold would match nothing, a
string would reach torch)."""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks.model import LensworksError

__all__ = ["_per_block", "_check_cosines", "_check_weights", "_grid_values"]


def _per_block(values: Any, name: str, n_blocks: int, *, check: Any) -> Float[Tensor, " block"]:
    """One value per block (a single value applies to all), checked by ``check(name, tensor)``."""
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if isinstance(values, Tensor):
        items = values.flatten().tolist()
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise LensworksError(f"{name}: expected a number or one number per block, got {values!r}")
    t = torch.tensor([float(v) for v in items], dtype=torch.float32)
    if t.numel() == 1:
        t = t.expand(n_blocks).clone()
    if t.numel() != n_blocks:
        raise LensworksError(f"{name}: expected one value or one per block ({n_blocks}), got {t.numel()}")
    check(name, t)
    return t


def _check_cosines(name: str, t: Tensor) -> None:
    if bool(torch.isnan(t).any()) or bool((t < -1).any()) or bool((t > 1).any()):
        raise LensworksError(f"{name}: cosine thresholds must lie in [-1, 1], got {t.tolist()}")


def _check_weights(name: str, w: Tensor) -> None:
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise LensworksError(f"{name}: expected finite non-negative values, not all zero; got {w.tolist()}")


def _grid_values(values: Any, name: str) -> list[float]:
    """A search grid as finite floats (NaN would silently win or lose every comparison)."""
    try:
        out = [float(x) for x in values]
    except (TypeError, ValueError) as exc:
        raise LensworksError(f"{name}: expected a sequence of numbers, got {values!r}") from exc
    bad = [x for x in out if not math.isfinite(x)]
    if bad:
        raise LensworksError(f"{name}: expected finite numbers, got {bad}")
    return out
