"""Weight access: the matrices analyses read, with grouped-query heads mapped to query heads and
NaN/inf refused where they enter."""

from __future__ import annotations

from typing import Sequence

from jaxtyping import Float
from torch import Tensor

from lensworks.model._compat import check_model, require_finite_weight, stacked, token_embedding
from lensworks.model._core import HookedTransformer, check_layer

__all__ = ["attention_weights", "embedding", "unembedding"]


def attention_weights(
    model: HookedTransformer, layers: Sequence[int] | None = None
) -> dict[str, Float[Tensor, "n_layers n_heads d_model d_head"]]:
    """Per-query-head attention weights, detached, for the given layers.

    Grouped-query attention stores ``n_key_value_heads`` key/value heads; here they are mapped
    to query heads (query head ``h`` reads kv head ``h // (n_heads // n_key_value_heads)``), so
    every returned tensor has ``n_heads`` along its second axis.

    Args:
        model: The model.
        layers: Which layers (default all), in order.

    Returns:
        Dict with ``W_Q``, ``W_K``, ``W_V`` of shape ``[layers, n_heads, d_model, d_head]``
        and ``W_O`` of shape ``[layers, n_heads, d_head, d_model]``.

    Example:
        >>> w = attention_weights(model)
        >>> w["W_O"].shape[1] == model.cfg.n_heads
        True
    """
    check_model(model)
    idx = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, l) for l in layers]
    return {name: stacked(model, name, idx) for name in ("W_Q", "W_K", "W_V", "W_O")}


def embedding(model: HookedTransformer) -> Float[Tensor, "d_vocab d_model"]:
    """The token embedding ``W_E`` (detached), as the residual stream receives it.

    Example:
        >>> embedding(model).shape == (model.cfg.d_vocab, model.cfg.d_model)
        True
    """
    check_model(model)
    return token_embedding(model)


def unembedding(model: HookedTransformer) -> Float[Tensor, "d_model d_vocab_out"]:
    """The unembedding ``W_U`` (detached).

    Example:
        >>> unembedding(model).shape == (model.cfg.d_model, model.cfg.d_vocab_out)
        True
    """
    check_model(model)
    return require_finite_weight(model.W_U.detach(), "W_U of the unembedding")



