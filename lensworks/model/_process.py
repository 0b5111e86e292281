"""TransformerLens 3's weight processing (fold LayerNorm, centre, fold value biases) one block at a
time, so that loading a model never holds more than one copy of its weights plus one block's.

``HookedTransformer.load_and_process_state_dict`` hands the whole state dict to
``ProcessWeights.process_weights``, which upcasts every tensor to float32 and copies the whole dict
once per step: loading a bf16 checkpoint peaks at about six times its size (docs/benchmarks.md).
Every one of those steps touches one block's tensors at a time (or the embedding, or the
unembedding with the final norm), so :func:`load_and_process` runs the same function of
TransformerLens's on one part at a time (the block renamed to block 0 of a one-block config) and
copies each result into the model before the next part is processed. The result equals
``load_and_process_state_dict``'s exactly (tests/test_lazy_weights.py checks every family with
every flag). Only imported under TransformerLens 3.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import Tensor

__all__ = ["load_and_process"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_EMBED = ("embed.", "pos_embed.")


def _swap_norms(model: Any, state_dict: dict[str, Tensor], fold_ln: bool) -> bool:
    """What ``load_and_process_state_dict`` does before processing when ``fold_ln``: replace the
    norm modules that are folded by their weightless forms (``LNPre`` / ``RMSPre``). Returns
    whether LayerNorm is folded (not for other norms, nor for weights already folded)."""
    if not fold_ln:
        return False
    from transformer_lens.components import LayerNormPre, RMSNormPre

    cfg = model.cfg
    if cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
        return False
    if not any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in state_dict):
        return False
    pre = {"LN": ("LNPre", LayerNormPre), "RMS": ("RMSPre", RMSNormPre)}.get(cfg.normalization_type)
    if pre is not None:
        cfg.normalization_type, cls = pre
        model.ln_final = cls(cfg)
        for block in model.blocks:
            block.ln1, block.ln2 = cls(cfg), cls(cfg)
            if cfg.is_layer_norm_activation():
                block.mlp.ln = cls(cfg)
    return True


def _stand_ins(cfg: Any, dtype: torch.dtype) -> dict[str, Tensor]:
    """One-row embedding and one-column unembedding that the processing steps require to be
    present (centring the writing weights looks up ``embed.W_E``); their results are dropped."""
    d = cfg.d_model
    out = {"embed.W_E": torch.zeros(1, d, dtype=dtype), "unembed.W_U": torch.zeros(d, 1, dtype=dtype),
           "unembed.b_U": torch.zeros(1, dtype=dtype)}
    if getattr(cfg, "positional_embedding_type", "standard") == "standard":
        out["pos_embed.W_pos"] = torch.zeros(1, d, dtype=dtype)
    return out


def _parts(state_dict: dict[str, Tensor]) -> list[tuple[int | None, list[str]]]:
    """The keys processed together: the embedding, every block, the rest (final norm, unembedding)."""
    embed = [k for k in state_dict if k.startswith(_EMBED)]
    blocks: dict[int, list[str]] = {}
    rest = []
    for k in state_dict:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(k)
        elif not k.startswith(_EMBED):
            rest.append(k)
    return [(None, embed)] + [(i, blocks[i]) for i in sorted(blocks)] + [(None, rest)]


def load_and_process(model: Any, state_dict: dict[str, Tensor], *, fold_ln: bool, center_writing_weights: bool,
                     center_unembed: bool, fold_value_biases: bool) -> None:
    """``model.load_and_process_state_dict(state_dict, ...)`` (TransformerLens 3) with the
    processing run one block at a time; ``state_dict`` is emptied as its tensors are used.

    Falls back to ``load_and_process_state_dict`` itself on a TransformerLens without
    ``ProcessWeights``.

    Example:
        >>> from lensworks.model._load import load_model
        >>> fresh = load_model("induction-2l")
        >>> sd = {k: v.clone() for k, v in fresh.state_dict().items()}
        >>> load_and_process(fresh, sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
        ...                  fold_value_biases=False)
        >>> len(sd)
        0
    """
    flags = dict(center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                 fold_value_biases=fold_value_biases)
    try:
        from transformer_lens.weight_processing import ProcessWeights
    except ImportError:  # pragma: no cover - a TransformerLens 3 before ProcessWeights
        model.load_and_process_state_dict(state_dict, fold_ln=fold_ln, **flags)
        return
    filled = model.fill_missing_keys(state_dict)
    if filled is not state_dict:
        state_dict.clear()
        state_dict = filled
    fold_ln = _swap_norms(model, state_dict, fold_ln)
    cfg = model.cfg
    one_block = copy.copy(cfg)
    one_block.n_layers = 1
    for layer, keys in _parts(state_dict):
        part = {k: state_dict.pop(k) for k in keys}
        if layer is not None:
            part = {"blocks.0." + k[len(f"blocks.{layer}."):]: v for k, v in part.items()}
        own = set(part)
        part = {**{k: v for k, v in _stand_ins(cfg, cfg.dtype).items() if k not in own}, **part}
        done = ProcessWeights.process_weights(part, one_block if layer is not None else _no_blocks(cfg),
                                              fold_ln=fold_ln, **flags)
        del part
        for k in list(done):
            v = done.pop(k)
            if layer is not None:
                if not k.startswith("blocks.0."):
                    continue  # a stand-in
                k = f"blocks.{layer}." + k[len("blocks.0."):]
            elif k not in own and not any(k.startswith(p) for p in _owned_prefixes(own)):
                continue
            model.load_state_dict({k: v}, strict=False)
        del done
    if fold_ln:
        model.setup()


def _no_blocks(cfg: Any) -> Any:
    out = copy.copy(cfg)
    out.n_layers = 0
    return out


def _owned_prefixes(own: set[str]) -> set[str]:
    """Module prefixes of a part's keys (``unembed.``), so that a key the processing adds to the
    part's own modules is loaded too."""
    return {k.rsplit(".", 1)[0] + "." for k in own}
