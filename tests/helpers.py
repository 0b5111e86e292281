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


def planted_induction_model(d_vocab: int = 16, n_ctx: int = 40, scale: float = 200.0, noise: float = 1e-3) -> HookedTransformer:
    """A 2-layer attention-only model whose weights are set by hand so the answers are known.

    Residual layout (no LayerNorm, no biases): token one-hot ``[0, V)``, position one-hot
    ``[V, V+n_ctx)``, "previous token" slot ``[V+n_ctx, 2V+n_ctx)``, output slot
    ``[2V+n_ctx, 3V+n_ctx)`` read by W_U.

    - L0H0 is a previous-token head: queries at position p match keys at p-1 (positional QK);
      its OV copies the token one-hot into the previous-token slot.
    - L1H0 is an induction head: its query is the current token, its key the previous-token slot
      (K-composition with L0H0), and its OV copies the attended token into the output slot, which
      W_U reads as that token's logit (copying score 1).
    - Every other head (L0H1, L1H1) has small random weights (``noise``).
    """
    V, P = d_vocab, n_ctx
    d_model = 3 * V + P
    d_head = P
    cfg = tiny_cfg(n_layers=2, n_heads=2, d_model=d_model, d_head=d_head, n_ctx=P, d_vocab=V,
                   normalization_type=None, attn_only=True, positional_embedding_type="standard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    tok, pos, prev, out = 0, V, V + P, 2 * V + P
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():
        if k.endswith(("IGNORE", "mask")):
            sd[k] = v
    for k in sd:
        if k.startswith("blocks.") and k.endswith(("W_Q", "W_K", "W_V", "W_O")):
            sd[k] = noise * torch.randn(sd[k].shape, generator=gen)
            sd[k][0] = 0.0  # head 0 of each layer is planted below
    eye = torch.eye(V)
    sd["embed.W_E"][:, tok : tok + V] = eye
    sd["pos_embed.W_pos"][:, pos : pos + P] = torch.eye(P)
    sd["unembed.W_U"][out : out + V, :] = eye
    # L0H0: previous-token head
    for p in range(P):
        sd["blocks.0.attn.W_Q"][0, pos + p, p] = scale  # query at p -> head dim p
        if p + 1 < P:
            sd["blocks.0.attn.W_K"][0, pos + p, p + 1] = 1.0  # key at p -> head dim p+1
    sd["blocks.0.attn.W_V"][0, tok : tok + V, :V] = eye
    sd["blocks.0.attn.W_O"][0, :V, prev : prev + V] = eye
    # L1H0: induction head
    sd["blocks.1.attn.W_Q"][0, tok : tok + V, :V] = scale * eye
    sd["blocks.1.attn.W_K"][0, prev : prev + V, :V] = eye
    sd["blocks.1.attn.W_V"][0, tok : tok + V, :V] = eye
    sd["blocks.1.attn.W_O"][0, :V, out : out + V] = eye
    model.load_state_dict(sd)
    model.eval()
    return model
