"""Tiny model builders for tests: small defaults, any config field overridable."""

from __future__ import annotations

import string
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

from lensworks.model import vocab_tokenizer

#: A character vocabulary with a BOS token, for models that need strings.
CHAR_VOCAB = ["<bos>"] + list(string.ascii_lowercase + " .,\n") + list("0123456789")


def tiny_cfg(**overrides) -> HookedTransformerConfig:
    """A HookedTransformerConfig with tiny defaults; keyword arguments override fields."""
    base = dict(
        n_layers=2,
        d_model=32,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        d_vocab=50,
        act_fn="gelu",
        attn_only=True,
        normalization_type="LN",
        seed=0,
        device="cpu",
    )
    base.update(overrides)
    return HookedTransformerConfig(**base)


def tiny_model(*, seed: int = 0, vocab=None, init_scale: float = 1.0, **overrides) -> HookedTransformer:
    """A randomly initialised HookedTransformer; ``vocab`` attaches a vocabulary tokenizer."""
    if vocab is not None:
        overrides.setdefault("d_vocab", len(vocab))
    cfg = tiny_cfg(seed=seed, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    if init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)
    if vocab is not None:
        model.set_tokenizer(vocab_tokenizer(vocab))
        model.cfg.default_prepend_bos = "<bos>" in vocab
    model.eval()
    return model
