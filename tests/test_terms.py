"""Term importance on planted models whose path expansion is known in closed form, and its errors.

Every architecture of the matrix (and a head-by-head computation from the weights) is checked in
tests/test_architectures.py."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_model
from lensworks.circuits import term_importance
from lensworks.model import LensworksError

V = 7


def _uniform_copy_model(n_layers: int, c: float):
    """Attention-only, no norms, no positions, queries and keys zero (uniform causal attention).

    One layer: the head copies the embedding space (dims 0..V) into the unembedding space, times
    ``c``. Two layers: layer 0 copies into a scratch space nobody reads out, layer 1 copies the
    scratch into the unembedding space: only the virtual head L0H0>L1H0 reaches the logits.
    """
    d = (n_layers + 1) * V
    model = tiny_model(n_layers=n_layers, d_model=d, d_head=V, n_heads=1, d_vocab=V, normalization_type=None,
                       positional_embedding_type="standard")
    eye = torch.eye(V)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, :V] = eye
        model.W_U[n_layers * V:, :] = eye
        for l in range(n_layers):
            model.blocks[l].attn.W_V[0, l * V:(l + 1) * V, :] = eye
            model.blocks[l].attn.W_O[0, :, (l + 1) * V:(l + 2) * V] = eye * (c if l == n_layers - 1 else 1.0)
    return model


def _loss(logits, toks):
    return float(-torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, toks[:, 1:, None]).mean())


def _causal_mean(x):  # mean over positions s <= t
    return x.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]


@pytest.fixture
def toks():
    """Each row repeats two of the V tokens, so copying earlier tokens lowers the loss."""
    g = torch.Generator().manual_seed(3)
    pairs = torch.stack([torch.randperm(V, generator=g)[:2] for _ in range(5)])
    return pairs.gather(1, torch.randint(0, 2, (5, 9), generator=g))


def test_one_head_copying_uniformly(toks):
    c = 4.0
    model = _uniform_copy_model(1, c)
    ti = term_importance(model, toks)
    onehot = torch.nn.functional.one_hot(toks, V).double()
    expected = _loss(c * _causal_mean(onehot), toks)  # logits: c x the fraction of earlier tokens equal to v
    assert float(ti.loss_by_order[0]) == pytest.approx(math.log(V), abs=1e-6)  # the direct path writes no logit
    assert float(ti.loss_by_order[1]) == pytest.approx(expected, abs=1e-5)
    assert ti.model_loss == pytest.approx(expected, abs=1e-5)
    without = dict(zip(ti.terms, ti.loss_without.tolist()))
    assert without == pytest.approx({"direct": expected, "L0H0": math.log(V)}, abs=1e-5)


def test_only_the_virtual_head_reaches_the_logits(toks):
    c = 5.0
    model = _uniform_copy_model(2, c)
    ti = term_importance(model, toks, max_order=2)
    onehot = torch.nn.functional.one_hot(toks, V).double()
    expected = _loss(c * _causal_mean(_causal_mean(onehot)), toks)
    torch.testing.assert_close(ti.loss_by_order.double(),
                               torch.tensor([math.log(V), math.log(V), expected], dtype=torch.float64), atol=1e-5, rtol=0)
    without = dict(zip(ti.terms, ti.loss_without.tolist()))
    assert without.pop("L0H0>L1H0") == pytest.approx(math.log(V), abs=1e-5)
    assert without == pytest.approx(dict.fromkeys(without, expected), abs=1e-5)  # every other term writes nothing
    assert expected < math.log(V) and ti.to_frame()["term"][0] == "L0H0>L1H0"
    assert "L0H0>L1H0" in ti.headline()


def test_max_order_limits_the_table_not_the_orders(toks):
    model = tiny_model(n_layers=3, seed=2)
    full = term_importance(model, toks % model.cfg.d_vocab, max_order=3)
    low = term_importance(model, toks % model.cfg.d_vocab, max_order=1, slots_per_pass=5)
    assert low.orders.max() == 1 and len(low.terms) == 1 + 3 * model.cfg.n_heads
    torch.testing.assert_close(low.loss_by_order, full.loss_by_order)
    torch.testing.assert_close(low.loss_without, full.loss_without[: len(low.terms)])
    assert float(full.loss_by_order[-1]) == pytest.approx(full.model_loss, rel=1e-5)


def test_strings_are_read_to_their_own_end():
    from helpers import CHAR_VOCAB

    model = tiny_model(vocab=CHAR_VOCAB, d_vocab=len(CHAR_VOCAB), attn_only=False, d_mlp=64)
    texts = ["the cat sat", "a dog ran far away"]
    ti = term_importance(model, texts)
    from lensworks.model import encode_text

    total, n = 0.0, 0
    for t in texts:
        ids = encode_text(model, t)[None]
        with torch.no_grad():
            total += float(model(ids, return_type="loss")) * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    assert ti.n_tokens == n and ti.model_loss == pytest.approx(total / n, rel=1e-5)
    assert float(ti.loss_by_order[-1]) == pytest.approx(total / n, rel=1e-5)


def test_bad_input_is_refused(toks):
    model = tiny_model(n_layers=2)
    with pytest.raises(LensworksError, match="max_terms"):
        term_importance(model, toks, max_order=2, max_terms=10)
    with pytest.raises(LensworksError, match="max_order"):
        term_importance(model, toks, max_order=3)
    with pytest.raises(LensworksError, match="at least 2 tokens"):
        term_importance(model, toks[:, :1])
    solu = tiny_model(attn_only=False, act_fn="solu_ln", d_mlp=32)
    with pytest.raises(LensworksError, match="SoLU"):
        term_importance(solu, toks)
