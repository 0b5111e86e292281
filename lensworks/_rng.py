"""Seeded randomness that leaves torch's global random state as it was."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["seeded_rng"]


@contextlib.contextmanager
def seeded_rng(seed: int, device: Any = "cpu") -> Iterator[None]:
    """Run the block with torch's RNG seeded to ``seed``, restoring the global state afterwards.

    The CPU generator is always forked; so is the CUDA generator of ``device`` when it is a CUDA
    device (weights initialised on a GPU draw from it), and no other.

    Example:
        >>> before = torch.random.get_rng_state()
        >>> with seeded_rng(3):
        ...     a = torch.rand(2)
        >>> with seeded_rng(3):
        ...     b = torch.rand(2)
        >>> bool(torch.equal(a, b)), bool(torch.equal(before, torch.random.get_rng_state()))
        (True, True)
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
