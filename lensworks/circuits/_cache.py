"""Attention patterns read from an activation cache the user already has, instead of a forward pass.

A cache is a TransformerLens ``ActivationCache`` (``model.run_with_cache(tokens)``, on either
TransformerLens line) or a plain ``{hook name: tensor}`` dict. Each layer's pattern is looked up
under the hook name the model's facts give (``blocks.{l}.attn.hook_pattern``); a bridge that
registers the same hook point under other names is searched under those too. A pattern is
``[batch, n_heads, pos, pos]``, or ``[n_heads, pos, pos]`` for a cache made with
``remove_batch_dim=True`` (read as a batch of one). Nothing is copied or modified.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from jaxtyping import Float
from torch import Tensor

from lensworks.model import HookedTransformer, LensworksError, model_facts
from lensworks.model._compat import require_finite_activation

__all__ = ["is_cache", "cached_patterns"]


def is_cache(cache: Any) -> bool:
    """A TransformerLens ``ActivationCache`` or a mapping of hook names (strings) to tensors."""
    if type(cache).__name__ == "ActivationCache" and hasattr(cache, "keys"):
        return True
    return isinstance(cache, Mapping) and all(isinstance(k, str) for k in cache)


def _names(model: HookedTransformer, canonical: str) -> list[str]:
    """``canonical`` and every other name the model registers for the same hook point."""
    hooks = getattr(model, "hook_dict", None) or {}
    point = hooks.get(canonical)
    return [canonical] + [n for n, h in hooks.items() if point is not None and h is point and n != canonical]


def cached_patterns(
    model: HookedTransformer,
    cache: Any,
    layers: Sequence[int],
    *,
    batch: int | None = None,
    positions: int | None = None,
    what: str = "cache",
) -> dict[int, Float[Tensor, "batch n_heads pos pos"]]:
    """Each of ``layers``' attention pattern from ``cache``, as ``[batch, n_heads, pos, pos]`` views.

    Args:
        model: The model the cache was computed with (hook names, head count).
        cache: An ``ActivationCache`` or a ``{hook name: tensor}`` dict.
        layers: The layers to read.
        batch: The number of sequences the cache must hold (None: any, the same in every layer).
        positions: The number of positions the cache must cover (None: any, the same in every layer).
        what: How error messages name the cache.

    Raises:
        LensworksError: Not a cache, a layer's pattern missing, a shape that is not
            ``[batch, n_heads, pos, pos]`` or differs from ``batch`` / ``positions``, NaN or inf.

    Example:
        >>> from lensworks.circuits._cache import cached_patterns
        >>> _, cache = model.run_with_cache(torch.tensor([[0, 5, 6, 7]]))
        >>> cached_patterns(model, cache, [1])[1].shape
        torch.Size([1, 4, 4, 4])
    """
    if not is_cache(cache):
        raise LensworksError(f"{what}: expected an ActivationCache (model.run_with_cache(tokens)) or a "
                             f"{{hook name: pattern}} dict, got {type(cache).__name__}")
    facts = model_facts(model)
    keys = set(cache.keys())
    out: dict[int, Tensor] = {}
    for layer in layers:
        canonical = facts.hook("pattern", layer)
        name = next((n for n in _names(model, canonical) if n in keys), None)
        if name is None:
            have = sorted(k for k in keys if k.endswith("pattern"))
            raise LensworksError(
                f"{what} has no attention pattern for layer {layer} ({canonical}); it holds "
                f"{have if have else 'no attention patterns'}. Cache every layer's pattern, e.g. "
                "model.run_with_cache(tokens, names_filter=lambda name: name.endswith('hook_pattern'))"
            )
        p = cache[name]
        if not isinstance(p, Tensor):
            raise LensworksError(f"{what}: {name} must be a tensor, got {type(p).__name__}")
        if p.ndim == 3:  # run_with_cache(..., remove_batch_dim=True)
            p = p[None]
        if p.ndim != 4 or p.shape[1] != facts.n_heads or p.shape[2] != p.shape[3]:
            raise LensworksError(
                f"{what}: {name} must be [batch, n_heads={facts.n_heads}, pos, pos] (or [n_heads, pos, pos]), "
                f"got shape {list(cache[name].shape)}; was the cache computed with another model?"
            )
        if positions is not None and p.shape[-1] != positions:
            raise LensworksError(
                f"{what}: {name} covers {p.shape[-1]} positions but the tokens have {positions}; pass the tokens "
                "the cache was computed from (tokens=...), or a cache of these tokens"
            )
        if batch is not None and p.shape[0] != batch:
            raise LensworksError(
                f"{what}: {name} holds {p.shape[0]} sequences but the tokens have {batch} rows; pass the tokens the "
                "cache was computed from (tokens=...), or a cache of these tokens"
            )
        positions, batch = p.shape[-1], p.shape[0]
        out[layer] = require_finite_activation(p, name)
    return out
