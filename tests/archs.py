"""The one architecture list every public analysis is tested on.

Each entry is a tiny model of one family, built the way a user gets it: Hugging Face families are
random checkpoints written to disk by ``transformers`` (tests/hf_families.py) and read back with
``lensworks.load_model``; the attention-only entry is a TransformerLens-native model.

| name       | what it exercises                                                            |
| ---------- | ---------------------------------------------------------------------------- |
| attn-only  | no MLP, no resid_mid, LayerNorm, absolute positions, character vocabulary    |
| ln-mlp     | GPT-2: LayerNorm + MLP, absolute positions, LayerNorm left unfolded          |
| gqa        | Qwen2: grouped-query attention (4 query heads on 2 kv heads), q/k/v biases   |
| llama      | RMSNorm, gated MLP, rotary, GQA                                              |
| neox       | parallel attention/MLP (no resid_mid), partial rotary                        |
| gemma2     | attention and logit soft-caps, local/global attention, pre+post norms        |
| folded-ln  | GPT-2 with LayerNorm folded and weights centred (from_pretrained's default)  |
| bf16       | Llama loaded in bfloat16                                                     |
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from hf_families import build_hf_checkpoint
from helpers import CHAR_VOCAB, tiny_model

from lensworks.model import HookedTransformer, load_model

ARCHS: tuple[str, ...] = ("attn-only", "ln-mlp", "gqa", "llama", "neox", "gemma2", "folded-ln", "bf16")

#: architecture -> (Hugging Face family, load_model keyword arguments); None for native models.
_HF = {
    "ln-mlp": ("gpt2", dict(fold_ln=False, center_writing_weights=False, center_unembed=False)),
    "gqa": ("qwen2", {}),
    "llama": ("llama", {}),
    "neox": ("neox", {}),
    "gemma2": ("gemma2", {}),
    "folded-ln": ("gpt2", {}),
    "bf16": ("llama", dict(dtype=torch.bfloat16)),
}

_ROOT = Path(tempfile.mkdtemp(prefix="lensworks-archs-"))
_MODELS: dict[str, HookedTransformer] = {}


def hf_dir(family: str) -> Path:
    """A tiny random checkpoint of ``family`` on disk (built once per test session)."""
    out = _ROOT / family
    if not (out / "config.json").is_file():
        build_hf_checkpoint(family, out, seed=0)
    return out


def arch_model(name: str) -> HookedTransformer:
    """The model of architecture ``name`` (cached: tests must not modify it)."""
    if name not in _MODELS:
        if name == "attn-only":
            _MODELS[name] = tiny_model(seed=11, n_layers=2, vocab=CHAR_VOCAB)
        else:
            family, kwargs = _HF[name]
            _MODELS[name] = load_model(hf_dir(family), **kwargs)
    return _MODELS[name]


def arch_family(name: str) -> str | None:
    """The Hugging Face family behind an architecture entry (None for native ones)."""
    return _HF[name][0] if name in _HF else None


def float_tol(model: HookedTransformer, fp32: float) -> float:
    """A tolerance scaled to the model's precision (bf16 carries about 3 significant digits)."""
    return fp32 if model.cfg.dtype in (torch.float32, torch.float64) else max(fp32, 2e-2)
