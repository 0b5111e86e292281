"""The test helpers build the same tiny models on both TransformerLens lines.

Under TransformerLens 3 the hand-drawn TransformerLens-format state dict must equal
``HookedTransformer(cfg)``'s parameters, name by name and in order, and leave the global RNG where
``HookedTransformer`` leaves it; loading it through ``load_model`` must give the same logits.
Under TransformerLens 4 the bridge loaded from it must hold those weights.
"""

from __future__ import annotations

import pytest
import torch

from helpers import (CHAR_VOCAB, planted_induction_checkpoint, planted_induction_model, tiny_checkpoint, tiny_model,
                     write_checkpoint)
from lensworks.model import TL_MAJOR, load_model

CONFIGS = [
    dict(seed=1),
    dict(seed=2, n_layers=3, attn_only=False, d_mlp=64, vocab=CHAR_VOCAB),
    dict(seed=3, n_heads=4, n_key_value_heads=2, n_layers=3),
    dict(attn_only=False, d_mlp=32, act_fn="solu_ln"),
    dict(seed=9, attn_only=False, d_mlp=32, positional_embedding_type="rotary", rotary_dim=8),
    dict(seed=6, n_layers=3, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB, normalization_type="RMS"),
    dict(n_layers=1, d_model=16, d_vocab=16, normalization_type=None),
    dict(d_vocab_out=40),
    dict(seed=5, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB, init_scale=2.0),
]


def _id(cfg):
    return ",".join(f"{k}={v if k != 'vocab' else 'chars'}" for k, v in cfg.items()) or "default"


@pytest.mark.skipif(TL_MAJOR >= 4, reason="compares with HookedTransformer, which TransformerLens 4 does not have")
@pytest.mark.parametrize("overrides", CONFIGS, ids=_id)
def test_checkpoint_equals_hooked_transformer(overrides):
    model = tiny_model(**overrides)
    after_model = torch.get_rng_state()
    cfg, sd = tiny_checkpoint(**overrides)
    assert torch.equal(torch.get_rng_state(), after_model)  # the same draws, the same global RNG state after
    params = dict(model.named_parameters())
    assert list(params) == list(sd)
    for name, value in sd.items():
        assert torch.equal(params[name], value), name
    if overrides.get("positional_embedding_type") == "rotary":
        return  # lensworks' TL3 loader wants the rotary buffers stored; TL4 recomputes them
    loaded = load_model(write_checkpoint(cfg, sd, overrides.get("vocab")))
    toks = torch.randint(0, 16, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(toks), model(toks), rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides", CONFIGS, ids=_id)
def test_model_holds_the_checkpoint_weights(overrides):
    model = tiny_model(**overrides)
    _, sd = tiny_checkpoint(**overrides)
    torch.testing.assert_close(model.W_E, sd["embed.W_E"])
    torch.testing.assert_close(model.W_U, sd["unembed.W_U"])
    torch.testing.assert_close(model.W_O[0], sd["blocks.0.attn.W_O"])
    if "vocab" in overrides:
        assert model.tokenizer is not None
        assert model.cfg.default_prepend_bos == ("<bos>" in overrides["vocab"])


def test_edit_reaches_the_model():
    model = tiny_model(seed=4, edit=lambda sd: sd["blocks.1.attn.W_O"][2].zero_())
    assert float(model.W_O[1, 2].abs().max()) == 0.0 and float(model.W_O[1, 1].abs().max()) > 0.0


def test_planted_model_holds_its_weights():
    model = planted_induction_model()
    _, sd = planted_induction_checkpoint()
    for name in ("W_V", "W_O"):
        torch.testing.assert_close(getattr(model, name), torch.stack([sd[f"blocks.{l}.attn.{name}"] for l in (0, 1)]))
