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
import warnings
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks.errors import LensworksError, NonFiniteError

__all__ = [
    "Result", "ResultMixin", "Reference", "REFERENCE_KINDS", "PROCESSING_KEYS", "OPTIONAL_PROCESSING_KEYS", "check_processing", "to_jsonable",
    "require_finite",
]


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


#: The kinds of :class:`Reference`: a ``baseline`` (what random weights or a prompt-blind
#: predictor score), a ``null`` (the distribution of a statistic under a null model), a ``chance``
#: level (what guessing or uniform attention gets) and a ``control`` (the same measurement on a
#: control model or control labels).
REFERENCE_KINDS: tuple[str, ...] = ("baseline", "null", "chance", "control")

_Number = Union[float, Tensor]
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_number(name: str, value: Any) -> _Number:
    """A float or a float tensor (on the CPU), refusing anything else by name."""
    if isinstance(value, Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_DTYPES):
            raise LensworksError(f"Reference.{name} must be a float or a real tensor, got a {value.dtype} tensor")
        value = value.detach().cpu()
        return value.float() if not value.is_floating_point() else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LensworksError(f"Reference.{name} must be a float or a real tensor, got {type(value).__name__}")
    return float(value)


def _known(value: _Number) -> bool:
    """True when ``value`` is given (not NaN; for a tensor, no NaN anywhere)."""
    if isinstance(value, Tensor):
        return bool((~torch.isnan(value)).all())
    return not math.isnan(value)


def _fmt(value: _Number, fmt: str) -> str:
    return format(float(value), fmt)


@dataclasses.dataclass(frozen=True)
class Reference(ResultMixin):
    """What a number is read against: a baseline, a null distribution, a chance level or a control.

    One value type for every reference a result carries, so that headlines, captions and figures
    show them all the same way (:meth:`describe`, :func:`lensworks.plotting.add_reference`).
    ``mean`` and the other numbers are floats, or tensors with one reference per entry (per
    layer, per component, ...). Unknown parts are NaN: an exact level (uniform-attention chance)
    has ``std`` 0 and ``lo == hi == mean``; a level measured once has no ``std``.

    Attributes:
        mean: The reference value (the mean of its draws, or the exact level).
        std: Standard deviation over the draws (0 for an exact level, NaN when not known).
        lo: Lower end of the central interval of the draws (NaN when not known).
        hi: Upper end of that interval (NaN when not known).
        n: Number of draws behind it (0 for an exact level or when not counted).
        kind: One of :data:`REFERENCE_KINDS`: "baseline", "null", "chance" or "control".
        label: What it is, in a few words (e.g. "random factors"); headlines name the reference by
            its label, or by its kind when the label is empty.

    Example:
        >>> ref = Reference(mean=0.04, std=0.01, lo=0.03, hi=0.06, n=200, kind="baseline", label="random factors")
        >>> ref.describe()
        'random factors 0.040 ± 0.010, n=200'
        >>> round(ref.z(0.09), 6), ref.compare(0.09)
        (5.0, 'above')
        >>> str(Reference.exact(0.125, kind="chance"))
        'chance 0.125'
    """

    mean: _Number
    std: _Number = math.nan
    lo: _Number = math.nan
    hi: _Number = math.nan
    n: int = 0
    kind: str = "baseline"
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            raise LensworksError(f"Reference kind must be one of {list(REFERENCE_KINDS)}, got {self.kind!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise LensworksError(f"Reference.n (the number of draws) must be a non-negative int, got {self.n!r}")
        if not isinstance(self.label, str):
            raise LensworksError(f"Reference.label must be a str, got {type(self.label).__name__}")
        for name in ("mean", "std", "lo", "hi"):
            object.__setattr__(self, name, _as_number(name, getattr(self, name)))
        mean = self.mean
        if isinstance(mean, Tensor):
            require_finite("Reference.mean", mean)
            for name in ("std", "lo", "hi"):
                v = getattr(self, name)
                if isinstance(v, Tensor) and v.shape != mean.shape:
                    raise LensworksError(f"Reference.{name} must have mean's shape {tuple(mean.shape)}, got {tuple(v.shape)}")
                if not isinstance(v, Tensor):
                    object.__setattr__(self, name, torch.full_like(mean, v))
        elif not math.isfinite(mean):
            raise NonFiniteError(f"Reference.mean must be a finite number, got {mean}")
        else:
            for name in ("std", "lo", "hi"):
                if isinstance(getattr(self, name), Tensor):
                    raise LensworksError(f"Reference.{name} must be a float when mean is a float, got a tensor")
        std, lo, hi = (torch.as_tensor(getattr(self, k), dtype=torch.float64) for k in ("std", "lo", "hi"))
        if bool((std < 0).any()) or bool(torch.isinf(std).any()):
            raise LensworksError("Reference.std must be a finite non-negative number (NaN when not known)")
        if bool((torch.isnan(lo) != torch.isnan(hi)).any()):
            raise LensworksError("Reference.lo and Reference.hi are given together or not at all (NaN)")
        if bool((lo > hi).any()):
            raise LensworksError(f"Reference.lo must not exceed Reference.hi, got lo={self.lo} > hi={self.hi}")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def exact(cls, value: _Number, *, kind: str = "chance", label: str = "") -> "Reference":
        """An exactly known level (no draws): ``std`` 0, ``lo == hi == value``.

        Example:
            >>> Reference.exact(0.25).describe(".0%")
            'chance 25%'
        """
        value = _as_number("mean", value)
        zero = torch.zeros_like(value) if isinstance(value, Tensor) else 0.0
        return cls(mean=value, std=zero, lo=value, hi=value, n=0, kind=kind, label=label)

    @classmethod
    def from_samples(
        cls, samples: Float[Tensor, "n_draws ..."], *, kind: str = "null", label: str = "", interval: float = 0.95,
    ) -> "Reference":
        """The reference given by draws along the first axis: mean, std, central ``interval``.

        One draw gives a std of 0. A 1-D ``samples`` gives float fields, a higher-dimensional one
        a tensor reference with one entry per trailing index.

        Example:
            >>> ref = Reference.from_samples(torch.arange(101.0), label="random sets", interval=0.5)
            >>> ref.mean, ref.lo, ref.hi, ref.n
            (50.0, 25.0, 75.0, 101)
        """
        if not isinstance(samples, Tensor) or samples.ndim < 1 or samples.shape[0] < 1:
            shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
            raise LensworksError(f"samples must be a tensor with at least one draw along its first axis, got {shape}")
        if not (isinstance(interval, (int, float)) and 0 < interval < 1):
            raise LensworksError(f"interval must be a probability strictly between 0 and 1, got {interval!r}")
        x = require_finite("reference samples", samples.detach().cpu().double())
        a = (1 - float(interval)) / 2
        std = x.std(0) if x.shape[0] > 1 else torch.zeros_like(x[0])
        lo, hi = torch.quantile(x, a, dim=0), torch.quantile(x, 1 - a, dim=0)
        values = [x.mean(0), std, lo, hi]
        if x.ndim == 1:
            values = [float(v) for v in values]
        else:
            values = [v.float() for v in values]
        mean, std, lo, hi = values
        return cls(mean=mean, std=std, lo=lo, hi=hi, n=int(x.shape[0]), kind=kind, label=label)

    # ------------------------------------------------------------------ reading a value against it

    @property
    def is_scalar(self) -> bool:
        """True when the reference is one number (float fields), False for one per entry."""
        return not isinstance(self.mean, Tensor)

    @property
    def has_spread(self) -> bool:
        """True when ``std`` is known (everywhere, for a tensor reference)."""
        return _known(self.std)

    @property
    def has_interval(self) -> bool:
        """True when ``lo`` and ``hi`` are known (everywhere, for a tensor reference)."""
        return _known(self.lo) and _known(self.hi)

    @property
    def name(self) -> str:
        """How headlines name it: the label, or the kind when there is none."""
        return self.label or self.kind

    def at(self, *index: int) -> "Reference":
        """The scalar reference of one entry of a tensor reference (itself when already scalar).

        Example:
            >>> round(Reference(mean=torch.tensor([0.1, 0.2]), kind="null").at(1).mean, 3)
            0.2
        """
        if self.is_scalar:
            if index:
                raise LensworksError(f"this reference is a single number; got index {index}")
            return self
        pick = [float(getattr(self, k)[index]) for k in ("mean", "std", "lo", "hi")]
        return dataclasses.replace(self, mean=pick[0], std=pick[1], lo=pick[2], hi=pick[3])

    def __float__(self) -> float:
        if not self.is_scalar:
            raise LensworksError(f"a reference with one value per entry (shape {tuple(self.mean.shape)}) is not one float")
        return float(self.mean)

    def excess(self, value: _Number) -> _Number:
        """``value - mean``: how far a measurement lies above the reference."""
        return value - self.mean

    def z(self, value: _Number) -> _Number:
        """``(value - mean) / std``, in standard deviations of the draws (a zero std counts as 1e-12).

        Raises:
            LensworksError: The reference has no std (an exact level, or a single measurement).
        """
        if not self.has_spread:
            raise LensworksError(f"the {self.name} reference has no standard deviation, so no z-score")
        std = self.std.clamp_min(1e-12) if isinstance(self.std, Tensor) else max(self.std, 1e-12)
        return (value - self.mean) / std

    def compare(self, value: float) -> str:
        """``"above"``, ``"below"`` or ``"within"`` the reference's interval (or its exact level).

        Raises:
            LensworksError: The reference has no interval, or is not scalar.
        """
        ref = self.at() if self.is_scalar else None
        if ref is None:
            raise LensworksError("compare() reads one value against a scalar reference; use at(index) first")
        if not ref.has_interval:
            raise LensworksError(f"the {self.name} reference has no interval to compare against")
        return "above" if value > ref.hi else "below" if value < ref.lo else "within"

    # ------------------------------------------------------------------ showing it

    def describe(self, fmt: str = ".3f") -> str:
        """The one way a reference is written in headlines, captions and figure titles.

        ``"<name> <mean> ± <std>, n=<draws>"``; without a std but with an interval,
        ``"<name> <mean> [<lo>, <hi>], n=<draws>"``; an exact level is ``"<name> <mean>"``. A
        reference with one value per entry gives the range of its means. ``fmt`` formats every
        number (``".0%"`` for shares).

        Example:
            >>> Reference(mean=0.5, lo=0.4, hi=0.7, n=20, kind="null", label="random bases").describe(".2f")
            'random bases 0.50 [0.40, 0.70], n=20'
        """
        draws = f", n={self.n}" if self.n else ""
        if not self.is_scalar:
            m = self.mean
            if m.numel() == 0:
                return f"{self.name} (no entries)"
            return f"{self.name} {_fmt(m.min(), fmt)} to {_fmt(m.max(), fmt)} over {m.numel()} entries{draws}"
        text = f"{self.name} {_fmt(self.mean, fmt)}"
        exact = self.std == 0 and self.lo == self.hi == self.mean
        if exact and not self.n:
            return text
        if self.has_spread and self.std > 0:
            text += f" ± {_fmt(self.std, fmt)}"
        elif self.has_interval and self.lo != self.hi:
            text += f" [{_fmt(self.lo, fmt)}, {_fmt(self.hi, fmt)}]"
        return text + draws

    def __str__(self) -> str:
        return self.describe()


#: The keys of ``processing_state(model)``: every result's ``processing`` has exactly these.
PROCESSING_KEYS: frozenset[str] = frozenset({
    "normalization_type", "fold_ln", "center_writing_weights", "center_unembed", "attn_only", "parallel_attn_mlp",
    "n_key_value_heads", "dtype", "architecture",
})


#: Keys a record may carry beyond :data:`PROCESSING_KEYS`: ``model``, the identity of the weights
#: (``ModelFacts.identity``), which ``report.build`` compares with the model it is given.
OPTIONAL_PROCESSING_KEYS: frozenset[str] = frozenset({"model"})


def check_processing(processing: Any, owner: str = "a result") -> dict[str, Any]:
    """Refuse a ``processing`` record that is not what ``processing_state(model)`` returns.

    It must be a dict with exactly :data:`PROCESSING_KEYS` (plus, optionally, :data:`OPTIONAL_PROCESSING_KEYS`). An empty dict (a result built
    positionally by old code, without the record) is still accepted, with a
    ``DeprecationWarning``: its numbers cannot be compared with another result's.

    Raises:
        LensworksError: Not a dict, or a dict with missing or unknown keys.

    Example:
        >>> check_processing(["fold_ln"], "CompositionScores")
        Traceback (most recent call last):
        ...
        lensworks.errors.LensworksError: CompositionScores: processing must be the dict processing_state(model) returns, got list
    """
    if not isinstance(processing, dict):
        raise LensworksError(f"{owner}: processing must be the dict processing_state(model) returns, "
                             f"got {type(processing).__name__}")
    if not processing:
        warnings.warn(f"{owner} was built without processing (processing_state(model)); it cannot be checked "
                      "against other results", DeprecationWarning, stacklevel=4)
        return processing
    keys = set(processing) - OPTIONAL_PROCESSING_KEYS
    if keys != PROCESSING_KEYS:
        missing, unknown = sorted(PROCESSING_KEYS - keys), sorted(map(str, keys - PROCESSING_KEYS))
        raise LensworksError(f"{owner}: processing must be the dict processing_state(model) returns; "
                             f"missing keys {missing}, unknown keys {unknown}")
    return processing


class Result(ResultMixin):
    """Base of every analysis result (a frozen dataclass with a ``processing`` field).

    Subclasses implement :meth:`figure`, :meth:`to_frame` and :meth:`caption`;
    :meth:`headline` and :meth:`html_attrs` are optional. ``tests/test_results_contract.py``
    checks every public result class against this contract.

    Example:
        >>> from lensworks.circuits import copying_scores
        >>> res = copying_scores(model)
        >>> res.headline().startswith("Most copying head: L1H3")
        True
        >>> isinstance(res.caption(), str), res.processing["fold_ln"]  # induction-2l is stored unfolded
        (True, False)
    """

    #: The state of the weights the numbers come from (``processing_state(model)``); a field of
    #: every subclass, checked when the result is built (:func:`check_processing`).
    processing: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep the short :meth:`__repr__` on subclasses: ``@dataclass`` would otherwise write one that
        dumps every tensor. A subclass whose body defines ``__repr__`` (or inherits one so defined)
        keeps its own."""
        super().__init_subclass__(**kwargs)
        cls._own_repr = "__repr__" in cls.__dict__
        if not cls._own_repr:
            owner = next((k for k in cls.__mro__[1:] if k.__dict__.get("_own_repr")), Result)
            cls.__repr__ = owner.__dict__["__repr__"]

    def __post_init__(self) -> None:
        """Check ``processing``; a subclass with its own ``__post_init__`` calls this one first."""
        check_processing(self.processing, type(self).__name__)

    def _safe_headline(self) -> str:
        try:
            return self.headline() or ""
        except Exception as exc:  # a display must not fail: say why there is no headline
            return f"(no headline: {type(exc).__name__})"

    def __repr__(self) -> str:
        """The class name, the headline and the shape of each tensor field; never tensor contents.

        Example:
            >>> from lensworks.circuits import copying_scores
            >>> text = repr(copying_scores(model))
            >>> text.startswith("CopyingScores('Most copying head: L1H3"), "scores=Tensor[2, 4]" in text, "tensor(" in text
            (True, True, False)
        """
        head = self._safe_headline()
        if len(head) > 160:
            head = head[:157] + "..."
        parts = [repr(head)] if head else []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name, None)
            if isinstance(value, Tensor):
                parts.append(f"{f.name}=Tensor{list(value.shape)}")
            elif isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
                inner = ", ".join(f"{k}: Tensor{list(v.shape)}" for k, v in list(value.items())[:6])
                parts.append(f"{f.name}={{{inner}{', ...' if len(value) > 6 else ''}}}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_html_(self, rows: int = 8) -> str:
        """A notebook's view: the class name and headline, then the first ``rows`` rows of
        :meth:`to_frame` as an HTML table (every string escaped).

        Example:
            >>> from lensworks.circuits import copying_scores
            >>> copying_scores(model)._repr_html_().startswith("<div><p><b>CopyingScores</b>")
            True
        """
        import html

        out = f"<div><p><b>{html.escape(type(self).__name__)}</b>: {html.escape(self._safe_headline())}</p>"
        try:
            frame = self.to_frame()
        except Exception:  # a display must not fail; the headline is still shown
            frame = None
        if frame is not None and hasattr(frame, "to_html"):
            more = len(frame) - rows
            out += frame.head(rows).to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}")
            if more > 0:
                out += f"<p>... {more} more rows (to_frame())</p>"
        return out + "</div>"

    def references(self) -> dict[str, Reference]:
        """Every baseline, null, chance level and control of the result, by name, as :class:`Reference`.

        The default collects the fields that hold a :class:`Reference`; a result that keeps a
        reference in older fields (floats, tensors of interval ends) builds it here from them.
        """
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Reference):
                out[f.name] = value
        return out

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
