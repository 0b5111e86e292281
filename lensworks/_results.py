"""Shared helpers for result dataclasses: JSON-ready dicts and tensor checks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["to_jsonable", "ResultMixin", "require_finite"]


def to_jsonable(value: Any) -> Any:
    """Convert tensors, dataclasses and containers into plain JSON-ready Python values.

    Complex tensors become ``{"real": [...], "imag": [...]}``; non-finite floats become None.

    Example:
        >>> to_jsonable({"a": torch.tensor([1.0, 2.0])})
        {'a': [1.0, 2.0]}
    """
    if isinstance(value, Tensor):
        v = value.detach().cpu()
        if v.is_complex():
            return {"real": to_jsonable(v.real), "imag": to_jsonable(v.imag)}
        return to_jsonable(v.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


def require_finite(name: str, tensor: Tensor) -> Tensor:
    """Raise if ``tensor`` holds NaN or inf, naming it; return it otherwise.

    Example:
        >>> require_finite("scores", torch.zeros(2)).shape
        torch.Size([2])
    """
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise FloatingPointError(
                f"{name} has {int(bad.sum())} non-finite values of {tensor.numel()}; "
                "check the model's weights and inputs (e.g. a zero-norm weight matrix)"
            )
    return tensor


class ResultMixin:
    """Adds ``to_dict()`` to a frozen result dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready Python values (tensors become nested lists)."""
        return to_jsonable(self)
