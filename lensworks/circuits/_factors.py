"""The factor maths behind the composition scores: each head's ``W_OV`` and ``W_QK`` as a thin
product whose small inner factor (an R of a thin QR) keeps every Frobenius norm exact, and the
norms of all (earlier head, later head) products computed in chunks from those factors, never as
``d_model x d_model`` matrices."""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


def _r_factor(x: Tensor) -> Tensor:
    """R of the thin QR of ``x`` ([..., m, k] -> [..., min(m,k), k]); ||x A|| == ||R A||."""
    return torch.linalg.qr(x, mode="r")[1]


def _left_factors(w: dict[str, Tensor], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``L = R(W_V) W_O`` per head ([layers, heads, r, d_model]) and ``||W_OV||_F``."""
    left = _r_factor(w["W_V"].to(dtype)) @ w["W_O"].to(dtype)
    return left, left.flatten(-2).norm(dim=-1)


def _right_factors(w: dict[str, Tensor], mode: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``P = X R(Y)^T`` per head ([layers, heads, d_model, r]) and ``||M||_F``."""
    if mode == "Q":  # W_QK = W_Q W_K^T
        x, y = w["W_Q"], w["W_K"]
    elif mode == "K":  # W_QK^T = W_K W_Q^T
        x, y = w["W_K"], w["W_Q"]
    else:  # W_OV = W_V W_O = W_V (W_O^T)^T
        x, y = w["W_V"], w["W_O"].transpose(-1, -2)
    right = x.to(dtype) @ _r_factor(y.to(dtype)).transpose(-1, -2)
    return right, right.flatten(-2).norm(dim=-1)


def _pair_norms(left: Tensor, right: Tensor, chunk_heads: int) -> Tensor:
    """``||L_a P_b||_F`` for every a in ``left`` [A, r, d] and b in ``right`` [B, d, r2]."""
    A, r, d = left.shape
    B, _, r2 = right.shape
    rhs = right.permute(1, 0, 2).reshape(d, B * r2)
    out = torch.empty(A, B, dtype=left.dtype, device=left.device)
    # one product buffer, reused and squared in place: a fresh 10-100 MB tensor per chunk would be
    # mapped and page-faulted anew by the allocator every time
    buf = torch.empty(min(A, chunk_heads) * r, B * r2, dtype=left.dtype, device=left.device)
    for start in range(0, A, chunk_heads):
        stop = min(A, start + chunk_heads)
        prod = buf[: (stop - start) * r]
        torch.matmul(left[start:stop].reshape(-1, d), rhs, out=prod)  # [(a r), (B r2)]
        out[start:stop] = prod.square_().reshape(stop - start, r, B, r2).sum(dim=(1, 3)).sqrt()
    return out


def _default_cache_bytes(device: torch.device) -> int:
    """A quarter of the free GPU memory on CUDA, 1 GiB elsewhere."""
    if torch.device(device).type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0] // 4)
        except Exception:  # pragma: no cover - a CUDA build without the query
            return 2**30
    return 2**30
