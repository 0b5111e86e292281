"""The contract every analysis result follows, and helpers for result dataclasses.

Every result an analysis returns is a frozen dataclass deriving from :class:`Result`: it
carries ``processing`` (the state of the weights it was computed from, see
:func:`lensworks.model.processing_state`) and answers ``figure()``, ``to_frame()``,
``caption()``, ``headline()`` and ``to_dict()``. The HTML report asks results these questions
and never looks at their type names, so a new analysis joins the report by being listed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from lensworks.errors import NonFiniteError

__all__ = ["Result", "ResultMixin", "to_jsonable", "require_finite"]


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
            raise NonFiniteError(
                f"{name} has {int(bad.sum())} non-finite values of {tensor.numel()}; "
                "check the model's weights and inputs (e.g. a zero-norm weight matrix)"
            )
    return tensor


class ResultMixin:
    """Adds ``to_dict()`` to a frozen result dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready Python values (tensors become nested lists)."""
        return to_jsonable(self)


class Result(ResultMixin):
    """Base of every analysis result (a frozen dataclass with a ``processing`` field).

    Subclasses implement :meth:`figure`, :meth:`to_frame` and :meth:`caption`;
    :meth:`headline` and :meth:`html_attrs` are optional. ``tests/test_results_contract.py``
    checks every public result class against this contract.

    Example:
        >>> from lensworks.circuits import copying_scores
        >>> res = copying_scores(model)  # doctest: +SKIP
        >>> res.caption(), res.headline(), res.processing["fold_ln"]  # doctest: +SKIP
    """

    #: The state of the weights the numbers come from (``processing_state(model)``); a field of
    #: every subclass.
    processing: dict[str, Any]

    def figure(self) -> Any:
        """An interactive plotly Figure of the result."""
        raise NotImplementedError(f"{type(self).__name__} does not implement figure()")

    def to_frame(self) -> Any:
        """The numbers as a pandas DataFrame (one row per head, layer, prompt, ...)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement to_frame()")

    def caption(self) -> str:
        """One paragraph saying what the figure shows and how to read it (plain text)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement caption()")

    def headline(self) -> str | None:
        """One plain-text sentence with the main finding, or None when there is none to state."""
        return None

    def html_attrs(self) -> dict[str, str]:
        """``data-*`` attributes the report puts on the figure's element (for page scripts)."""
        return {}
