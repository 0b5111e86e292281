"""Hook names, index checks and weight access: what every analysis asks of a model."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from jaxtyping import Float
from torch import Tensor

from lensworks.errors import LensworksError, NonFiniteError  # noqa: F401 (re-exported)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:  # TransformerLens 3.x; 4.x removed both (its models are TransformerBridge objects)
        from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: F401 (used by _load)
    except ImportError:
        HookedTransformer = None  # type: ignore[assignment,misc]
        HookedTransformerConfig = None  # type: ignore[assignment,misc]

#: What analyses accept: a HookedTransformer (TransformerLens 3) or a TransformerBridge in
#: compatibility mode (TransformerLens 4). Used in type hints only.
Model = Any


#: Hook points lensworks reads, by short name. The only place hook strings are spelled out.
_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "z": "blocks.{layer}.attn.hook_z",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
}




# --------------------------------------------------------------------------- hooks, checks


def hook_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name for a short stream name.

    Args:
        kind: One of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``,
            ``pattern``, ``attn_scores``, ``z``, ``mlp_post``, ``embed``, ``pos_embed``,
            ``ln_final``.
        layer: Block index, for per-block hooks.

    Returns:
        The hook point's full name.

    Example:
        >>> hook_name("resid_mid", 3)
        'blocks.3.hook_resid_mid'
    """
    if kind not in _HOOKS:
        raise LensworksError(f"unknown stream or hook {kind!r}; expected one of {sorted(_HOOKS)}")
    template = _HOOKS[kind]
    if "{layer}" in template:
        if layer is None:
            raise LensworksError(f"hook {kind!r} needs a layer index")
        return template.format(layer=layer)
    return template


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within ``[low, high)``, or a LensworksError naming ``name``.

    Accepts Python and numpy/torch integers; refuses floats (``2.5``), bools and strings.

    Example:
        >>> check_int(3, "k", low=1)
        3
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise LensworksError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value.__index__())
    if (low is not None and value < low) or (high is not None and value >= high):
        bounds = f">= {low}" if high is None else f"in [{0 if low is None else low}, {high})"
        raise LensworksError(f"{name} must be {bounds}, got {value}")
    return value


def check_float(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                inclusive: bool = True) -> float:
    """``value`` as a finite float within ``[low, high]`` (``(low, high)`` when not ``inclusive``),
    or a LensworksError naming ``name``. NaN and inf are refused: a NaN threshold compares false
    with everything and would silently empty a result.

    Example:
        >>> check_float(0.5, "threshold", low=0, high=1)
        0.5
    """
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise LensworksError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LensworksError(f"{name} must be a number, got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(number):
        raise NonFiniteError(f"{name} must be a finite number, got {value!r}")
    below = low is not None and (number < low if inclusive else number <= low)
    above = high is not None and (number > high if inclusive else number >= high)
    if below or above:
        lo, hi = ("[", "]") if inclusive else ("(", ")")
        bounds = f"in {lo}{low}, {high}{hi}" if low is not None and high is not None else (
            f"{'>=' if inclusive else '>'} {low}" if low is not None else f"{'<=' if inclusive else '<'} {high}")
        raise LensworksError(f"{name} must be {bounds}, got {value!r}")
    return number


def check_layer(model: HookedTransformer, layer: int) -> int:
    """Return ``layer`` as a non-negative index, or raise naming the valid range.

    Example:
        >>> check_layer(model, -1) == model.cfg.n_layers - 1
        True
    """
    n = model.cfg.n_layers
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LensworksError(f"layer must be an int, got {type(layer).__name__}")
    if not -n <= layer < n:
        raise LensworksError(f"layer {layer} is out of range for a model with {n} layers (0..{n - 1})")
    return layer % n


def check_head(model: HookedTransformer, layer: int, head: int) -> tuple[int, int]:
    """Validate a (layer, head) pair and return it with non-negative indices.

    Example:
        >>> check_head(model, 0, 1)
        (0, 1)
    """
    layer = check_layer(model, layer)
    n = model.cfg.n_heads
    if not isinstance(head, int) or isinstance(head, bool) or not -n <= head < n:
        raise LensworksError(f"head {head} is out of range for a model with {n} heads per layer (0..{n - 1})")
    return layer, head % n


def head_labels(model_or_cfg: Any) -> list[str]:
    """Labels ``L{layer}H{head}`` for every head, layer-major (TransformerLens's order).

    Example:
        >>> head_labels(model)[:2]
        ['L0H0', 'L0H1']
    """
    from lensworks._heads import HeadId

    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    return [HeadId(l, h).label for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
