"""TransformerLens-format configs: read, validate and write ``HookedTransformerConfig`` fields.

A stored config is checked before anything is allocated: field names, the types of the size
fields, and the sizes against the stored tensors' shapes (a config claiming ``d_vocab=10**7``
beside a 150-row embedding is refused here, not after TransformerLens allocated gigabytes).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from torch import Tensor

from lensworks.model._compat import quiet
from lensworks.model._core import HookedTransformerConfig, LensworksError

__all__ = ["cfg_to_dict", "cfg_from_dict", "make_cfg", "check_declared_shapes"]


def cfg_to_dict(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """Config fields that round-trip through JSON and the constructor."""
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    out = {}
    for name in sorted(fields):
        value = getattr(cfg, name, None)
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        if isinstance(value, torch.device) or name in ("device", "checkpoint_index", "checkpoint_value", "n_devices"):
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[name] = value
    return out


def make_cfg(raw: dict[str, Any], *, where: str) -> HookedTransformerConfig:
    try:
        with quiet():
            return HookedTransformerConfig(**raw)
    except Exception as exc:  # config validation inside TransformerLens
        raise LensworksError(f"{where}: the config could not build a HookedTransformerConfig: {exc}") from exc


def cfg_from_dict(raw: Any, *, where: str) -> dict[str, Any]:
    """Check a stored TransformerLens config (a dict of HookedTransformerConfig fields)."""
    if not isinstance(raw, dict):
        raise LensworksError(f"{where}: 'cfg' must be a dict of HookedTransformerConfig fields, got {type(raw).__name__}")
    raw = dict(raw)
    if HookedTransformerConfig is not None:
        fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise LensworksError(f"{where}: unknown HookedTransformerConfig fields {unknown}")
    for key, value in list(raw.items()):
        if type(value).__module__ == "numpy" and hasattr(value, "item"):  # cfg.to_dict() holds numpy scalars
            raw[key] = value.item()
    for key in _SIZE_FIELDS:
        value = raw.get(key)
        if value is None and key not in _REQUIRED_SIZES:
            continue
        derived = key in ("d_vocab", "d_vocab_out", "n_heads") and value == -1  # TransformerLens fills these in
        if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and not derived):
            raise LensworksError(f"{where}: config field {key!r} must be a positive integer, got {value!r} "
                                 f"({type(value).__name__})")
    for key in ("act_fn", "normalization_type", "positional_embedding_type", "original_architecture", "model_name"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], str):
            raise LensworksError(f"{where}: config field {key!r} must be a string or None, got {raw[key]!r}")
    if isinstance(raw.get("dtype"), str):
        name = raw["dtype"].replace("torch.", "")
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise LensworksError(f"{where}: 'dtype' {raw['dtype']!r} is not a torch dtype")
        raw["dtype"] = getattr(torch, name)
    raw.pop("device", None)
    return raw


_SIZE_FIELDS = ("n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_vocab", "d_mlp", "n_key_value_heads", "d_vocab_out")
_REQUIRED_SIZES = ("n_layers", "d_model", "n_ctx", "d_head")


def check_declared_shapes(raw: dict[str, Any], sd: dict[str, Tensor], *, where: str) -> None:
    """Compare the sizes a config declares with the stored tensors before anything is allocated.

    A config claiming ``d_vocab=10**7`` next to a 150-row embedding is refused here, instead of
    TransformerLens allocating gigabytes for it first.
    """
    d_model = raw["d_model"]
    n_layers = raw["n_layers"]
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks and (len(blocks) != n_layers or max(blocks) != n_layers - 1):  # never builds range(n_layers)
        raise LensworksError(f"{where}: the config says n_layers={n_layers} but the weights hold blocks {sorted(blocks)[:8]}")
    expect: dict[str, tuple[int | None, ...]] = {"embed.W_E": (raw.get("d_vocab"), d_model), "pos_embed.W_pos": (raw["n_ctx"], d_model)}
    d_vocab_out = raw.get("d_vocab_out") or raw.get("d_vocab")
    expect["unembed.W_U"] = (d_model, d_vocab_out if d_vocab_out and d_vocab_out > 0 else None)
    n_heads = raw.get("n_heads")
    expect["blocks.0.attn.W_Q"] = (n_heads, d_model, raw["d_head"])
    for name, dims in expect.items():
        tensor = sd.get(name)
        if tensor is None:
            continue
        if tensor.ndim != len(dims) or any(d is not None and d > 0 and d != s for d, s in zip(dims, tensor.shape)):
            declared = tuple("?" if d is None or d < 1 else d for d in dims)
            raise LensworksError(
                f"{where}: {name} has shape {tuple(tensor.shape)} but the config declares {declared} "
                "(d_vocab, d_model, n_ctx, n_heads, d_head)"
            )
