"""Token subspaces and alignment: a planted model where near-certain predictions are reachable,
explicit projection matrices, and the criterion's exact chance rate by enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import CHAR_VOCAB, tiny_model
from lensworks.geometry import alignment, token_subspaces
from lensworks.geometry.subspaces import Alignment, _tail_logits
from lensworks.model import LensworksError


@pytest.fixture(scope="module")
def sharp_model():
    """Unembedding scaled up so that probability 0.99 is reachable through the final LayerNorm."""
    model = tiny_model(seed=8, n_layers=2, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB)
    with torch.no_grad():
        model.unembed.W_U.mul_(25.0)
    return model


def test_learned_embeddings_reach_target_and_model_is_untouched(sharp_model):
    before = {k: v.clone() for k, v in sharp_model.state_dict().items()}
    subs = token_subspaces(sharp_model, [1, 5, 9, 20], n_samples=12, rank=2, steps=300, lr=0.2)
    assert bool((subs.final_prob >= 0.99).all()) and subs.steps_run < 300
    # the basis rows are orthonormal and the learned points project positively on the first one
    gram = subs.basis @ subs.basis.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(2).expand(4, 2, 2), atol=1e-5, rtol=0)
    # the first singular direction alone predicts the token (the linear picture of seed 004)
    assert float(subs.basis_prob.min()) > 0.9
    df = subs.to_frame()
    assert df.reached_target.tolist() == [1.0] * 4 and list(df.label) == ["a", "e", "i", "t"]
    assert subs.figure().layout.title.text
    for k, v in sharp_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in sharp_model.parameters())


def test_block_insertion_matches_a_real_forward_pass(sharp_model):
    tokens = torch.tensor([[3], [7]])
    logits, cache = sharp_model.run_with_cache(tokens)
    for block in (0, 1):
        x = cache[f"blocks.{block}.hook_resid_pre"][:, 0]
        torch.testing.assert_close(_tail_logits(sharp_model, x, block), logits[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_tail_logits(sharp_model, cache["blocks.1.hook_resid_post"][:, 0], "ln_final"),
                               logits[:, 0], atol=1e-4, rtol=1e-4)
    subs = token_subspaces(sharp_model, [2], at=1, n_samples=3, steps=2)
    assert subs.basis.shape == (1, 1, 32) and subs.at == 1


def test_alignment_matches_explicit_projections(sharp_model):
    subs = token_subspaces(sharp_model, [1, 2, 3], n_samples=6, rank=2, steps=5)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    x[3] = 0.0
    al = alignment(subs, x)
    for t in range(3):
        proj = subs.basis[t].T @ subs.basis[t]  # [d, d] projection matrix
        ref = F.cosine_similarity(x[:3] @ proj, x[:3], dim=-1)
        torch.testing.assert_close(al.cosine[:3, t], ref, atol=1e-5, rtol=1e-5)
    assert torch.all(al.cosine[3] == 0)
    assert torch.equal(al.ranking[0], al.cosine[0].argsort(descending=True))
    assert al.top(0, 2)[0][1] == pytest.approx(float(al.cosine[0].max()))
    with pytest.raises(LensworksError, match="shape"):
        alignment(subs, torch.randn(2, 7))


def test_criterion_and_its_chance_rate():
    # 6 subspaces; vector 0 ranks tokens 0..5 in order, vector 1 in reverse
    cos = torch.tensor([[0.9, 0.8, 0.7, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]])
    al = Alignment(cosine=cos, ranking=cos.argsort(-1, descending=True), tokens=torch.arange(6),
                   token_labels=tuple("abcdef"))
    probs = torch.tensor([[0.6, 0.35, 0.05, 0, 0, 0], [0.6, 0.35, 0.05, 0, 0, 0]])
    res = al.criterion(probs, mass=0.9)
    assert res["top_n"].tolist() == [2, 2]
    assert res["satisfied"].tolist() == [True, False] and res["rate"] == 0.5
    # exact chance: both needed tokens among the top 3 of a random ranking of 6
    hits = sum(set(p[:3]) >= {0, 1} for p in itertools.permutations(range(6)))
    assert res["chance_rate"] == pytest.approx(hits / math.factorial(6))
    with pytest.raises(LensworksError, match="probs"):
        al.criterion(torch.ones(3, 6) / 6)


def test_token_subspaces_bad_input(sharp_model):
    with pytest.raises(LensworksError, match="at"):
        token_subspaces(sharp_model, [1], at="ln_pre")
    with pytest.raises(LensworksError, match="out of range"):
        token_subspaces(sharp_model, [1], at=5)
    with pytest.raises(LensworksError, match="rank"):
        token_subspaces(sharp_model, [1], n_samples=2, rank=3)
    with pytest.raises(LensworksError, match="token ids|ids must"):
        token_subspaces(sharp_model, [999])
    with pytest.raises(LensworksError, match="at least one"):
        token_subspaces(sharp_model, [])
