"""embedding_basis, compare_to_embedding and unlikely_token_usage against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensworks.model import LensworksError, hook_name
from lensworks.probes import compare_to_embedding, embedding_basis, unlikely_token_usage


def test_pca_equals_svd(mlp_model):
    basis = embedding_basis(mlp_model, "pca", 6)
    x = mlp_model.W_E.detach().double()
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = basis.components.double()
    # same directions up to sign
    torch.testing.assert_close((comps * vh[:6]).sum(1).abs(), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(basis.importance.double(), (s[:6] ** 2 / (s**2).sum()), atol=1e-6, rtol=1e-5)
    # codes reconstruct the centred matrix with all components
    full = embedding_basis(mlp_model, "pca")
    torch.testing.assert_close(full.codes.double() @ full.components.double() + full.mean.double(), x, atol=1e-4, rtol=1e-4)
    assert full.reconstruction_error < 1e-4
    assert basis.figure().layout.title.text


def test_pca_on_activations_matches_sklearn(mlp_model):
    from sklearn.decomposition import PCA

    toks = torch.randint(1, mlp_model.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    _, cache = mlp_model.run_with_cache(toks)
    acts = cache[hook_name("resid_post", 1)]
    basis = embedding_basis(None, "pca", 5, matrix=acts)
    assert basis.source == "activations"
    ref = PCA(5).fit(acts.reshape(-1, acts.shape[-1]).double().numpy())
    np.testing.assert_allclose(basis.importance.numpy(), ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(np.abs((basis.components.numpy() * ref.components_).sum(1)), 1, atol=1e-4)


@pytest.mark.parametrize("k", [3, 12])
def test_nmf_error_within_5_percent_of_sklearn(mlp_model, k):
    from sklearn.decomposition import NMF

    basis = embedding_basis(mlp_model, "nmf", k)
    x = mlp_model.W_E.detach().double().numpy()
    split = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=1)
    ref = NMF(k, init="nndsvda", max_iter=1000, tol=1e-6, random_state=0).fit(split)
    assert basis.reconstruction_error <= 1.05 * ref.reconstruction_err_
    # the codes and the split factors reproduce the reported error
    assert basis.codes.shape == (x.shape[0], k) and basis.components.shape == (k, x.shape[1])
    assert torch.all(basis.codes >= 0)
    assert torch.all(basis.importance[:-1] >= basis.importance[1:])


def test_frequency_basis(mlp_model):
    basis = embedding_basis(mlp_model, "frequency", 3, data=["aaab", "aab  "])
    assert basis.labels == ("a", "b", " ")
    torch.testing.assert_close(basis.importance, torch.tensor([5 / 9, 2 / 9, 2 / 9]))
    ids = basis.tokens
    w = mlp_model.W_E.detach()[ids]
    torch.testing.assert_close(basis.components, w / w.norm(dim=1, keepdim=True))


def test_basis_bad_input(mlp_model):
    V = mlp_model.cfg.d_vocab
    with pytest.raises(LensworksError, match="larger than the vocabulary"):
        embedding_basis(mlp_model, "frequency", V + 1, data=["abc"])
    with pytest.raises(LensworksError, match="larger than"):
        embedding_basis(mlp_model, "pca", V + 1)
    with pytest.raises(LensworksError, match="needs data"):
        embedding_basis(mlp_model, "frequency", 3)
    with pytest.raises(LensworksError, match="method"):
        embedding_basis(mlp_model, "ica")
    with pytest.raises(LensworksError, match="empty"):
        embedding_basis(None, "pca", matrix=torch.zeros(0, 4))


def test_compare_planted(mlp_model):
    V, d = mlp_model.cfg.d_vocab, mlp_model.cfg.d_model
    e = mlp_model.W_E.detach()
    same = compare_to_embedding(mlp_model, e.T.clone(), n_random=40)
    assert same.overlap_embed == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(same.mass_share, same.embed_mass_share)
    s = same.summary()
    assert s["overlap_embed"]["verdict"] == "closer than chance"
    # a random subspace overlaps about r/d on average
    assert float(same.overlap_embed_null.mean()) == pytest.approx(same.rank / d, abs=0.05)
    # a probe reading only along W_E's least important directions: farther than chance
    vh = torch.linalg.svd(e - e.mean(0), full_matrices=False)[2]
    low = vh[-4:]  # [4, d]
    far = compare_to_embedding(mlp_model, low.T @ torch.randn(4, V, generator=torch.Generator().manual_seed(0)), n_random=40)
    assert far.summary()["mass_position"]["verdict"] == "farther than chance"
    assert far.mass_position > 0.8
    fig = far.figure()
    assert fig.layout.title.text and len(fig.data) >= 5


def test_compare_with_probe_classes(mlp_model):
    from lensworks.probes import probe_inputs

    toks = torch.randint(1, mlp_model.cfg.d_vocab, (10, 10), generator=torch.Generator().manual_seed(2))
    res = probe_inputs(mlp_model, toks, offsets=(0,), layers=[0], streams=("resid_pre",), controls=False)
    cmp = compare_to_embedding(mlp_model, res.weights(0, "resid_pre", 0), tokens=res.classes, n_random=20)
    assert cmp.tokens.tolist() == res.classes.tolist()
    assert cmp.to_frame().shape[0] == len(cmp.basis_labels)
    with pytest.raises(LensworksError, match="tokens="):
        compare_to_embedding(mlp_model, res.weights(0, "resid_pre", 0)[:, :5])
    with pytest.raises(LensworksError, match="d_model"):
        compare_to_embedding(mlp_model, torch.zeros(3, 5))


def test_unlikely_token_usage_dense(mlp_model):
    prompts = ["hello there", "abc", "the end."]
    usage = unlikely_token_usage(mlp_model, prompts, k=4, n_random=8)
    assert usage.share_unlikely.shape == (mlp_model.cfg.n_layers + 1,)
    # dense recomputation for the second prompt
    toks = mlp_model.to_tokens(prompts[1])
    logits, cache = mlp_model.run_with_cache(toks)
    low = logits[0, -1].topk(4, largest=False).indices
    assert usage.unlikely_tokens[1].tolist() == low.tolist()
    q, _ = torch.linalg.qr(mlp_model.W_U.detach()[:, low].double())
    for i, name in enumerate([hook_name("resid_pre", 0)] + [hook_name("resid_post", l) for l in range(3)]):
        x = cache[name][0, -1].double()
        ref = float(((q.T @ x) ** 2).sum() / (x**2).sum())
        assert float(usage.per_prompt_unlikely[1, i]) == pytest.approx(ref, rel=1e-4)
    assert torch.all(usage.random_lo <= usage.random_hi)
    assert usage.figure().layout.yaxis.title.text
    with pytest.raises(LensworksError, match="larger than the vocabulary"):
        unlikely_token_usage(mlp_model, prompts, k=mlp_model.cfg.d_vocab + 1)
    with pytest.raises(LensworksError, match="empty"):
        unlikely_token_usage(mlp_model, [])


def test_compare_to_embedding_old_argument_order_still_works(mlp_model):
    w = mlp_model.W_E.detach().T.clone()
    new = compare_to_embedding(mlp_model, w, n_random=5)
    with pytest.warns(DeprecationWarning, match="compare_to_embedding\\(model, probe_weights\\)"):
        old = compare_to_embedding(w, mlp_model, n_random=5)
    assert old.overlap_embed == new.overlap_embed and old.processing == new.processing
