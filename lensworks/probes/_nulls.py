"""Null distributions of the probes' statistics: the option checks and the central interval.

Shared by :func:`~lensworks.probes.compare.compare_to_embedding` (random matrices of the
probe's spectrum) and :func:`~lensworks.probes.usage.unlikely_token_usage` (random token sets).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks.model import LensworksError, check_float, check_int

__all__ = ["check_null_options", "null_interval"]


def check_null_options(n_random: int, interval: float) -> None:
    """Raise unless ``n_random`` is an int >= 2 and ``interval`` lies in (0, 1).

    Example:
        >>> check_null_options(20, 0.95)
    """
    check_int(n_random, "n_random", low=2)
    check_float(interval, "interval", low=0, high=1, inclusive=False)


def null_interval(null: Float[Tensor, "..."], q: float, dim: int = 0) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """The central ``q`` interval of null draws along ``dim``, in float64.

    The bounds are the ``(1 - q) / 2`` and ``1 - (1 - q) / 2`` quantiles (linear interpolation).

    Args:
        null: Null draws, one per index along ``dim``.
        q: Central probability, in (0, 1).
        dim: Dimension of the draws.

    Returns:
        ``(lo, hi)``, each ``null``'s shape without ``dim``.

    Example:
        >>> lo, hi = null_interval(torch.arange(101.0), 0.5)
        >>> float(lo), float(hi)
        (25.0, 75.0)
    """
    a = (1 - q) / 2
    return torch.quantile(null.double(), a, dim=dim), torch.quantile(null.double(), 1 - a, dim=dim)
