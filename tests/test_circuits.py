"""Circuits: every score cross-checked against TransformerLens or a dense computation, plus a
planted model whose answers are known and bad-input errors."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers import planted_induction_model, tiny_model, tl_state_dict
from lensworks.circuits import (
    composition_scores,
    copying_scores,
    find_induction_heads,
    head_scores,
    repeated_tokens,
)
from lensworks.circuits.composition import random_composition_baseline
from lensworks.circuits.eigen import eigen_copying_score
from lensworks.model import LensworksError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens.head_detector import detect_head


@pytest.fixture(scope="session")
def planted():
    return planted_induction_model()


def _tl_composition(model, mode):
    """TransformerLens's all_composition_scores as a tensor (TransformerLens 4 wraps it in CompositionScores)."""
    ref = model.all_composition_scores(mode)
    return getattr(ref, "scores", ref)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was modified"


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
@pytest.mark.parametrize("fixture", ["attn_model", "mlp_model", "gqa_model"])
def test_composition_equals_transformer_lens(request, fixture, mode):
    model = request.getfixturevalue(fixture)
    before = _state(model)
    ours = composition_scores(model, mode)
    ref = _tl_composition(model, mode)
    assert ours.scores.shape == ref.shape
    torch.testing.assert_close(ours.scores, ref, atol=1e-5, rtol=1e-4)
    _assert_unchanged(model, before)


def test_composition_wide_heads_and_chunking():
    # d_head > d_model exercises the non-square R factor; chunk_heads=1 the chunk loop;
    # max_cache_bytes=0 the path that recomputes earlier layers' factors instead of caching them
    model = tiny_model(d_model=16, d_head=24, n_heads=3, n_layers=4)
    for mode in "QKV":
        ours = composition_scores(model, mode, chunk_heads=1, baseline=False, dtype=torch.float64, max_cache_bytes=0)
        torch.testing.assert_close(ours.scores.float(), _tl_composition(model, mode), atol=1e-5, rtol=1e-4)


def test_composition_gqa_uses_shared_kv_heads(gqa_model):
    """Dense check with an explicit query-head -> kv-head map (h // 2)."""
    sd = tl_state_dict(gqa_model)  # the stored layout: 2 kv heads per layer (blocks.L.attn._W_K)
    W_Q, W_K, W_V, W_O = (torch.stack([sd[f"blocks.{l}.attn.{n}"] for l in range(3)]).detach()
                          for n in ("W_Q", "_W_K", "_W_V", "W_O"))
    W_K, W_V = W_K[:, torch.arange(4) // 2], W_V[:, torch.arange(4) // 2]
    ov = W_V @ W_O
    qk = W_Q @ W_K.transpose(-1, -2)
    ours = composition_scores(gqa_model, "K", baseline=False).scores
    for la, ha, lb, hb in [(0, 1, 1, 2), (0, 3, 2, 0), (1, 0, 2, 3)]:
        prod = ov[la, ha] @ qk[lb, hb].T
        want = prod.norm() / (ov[la, ha].norm() * qk[lb, hb].norm())
        torch.testing.assert_close(ours[la, ha, lb, hb], want, atol=1e-5, rtol=1e-4)


def test_composition_layout_top_and_baseline(attn_model):
    comp = composition_scores(attn_model, "Q")
    assert bool((comp.scores[1, :, 0, :] == 0).all()) and bool((comp.scores[0, :, 0, :] == 0).all())
    top = comp.top(3)
    assert [p.score for p in top] == sorted((p.score for p in top), reverse=True)
    assert top[0].score == pytest.approx(float(comp.scores.max()))
    assert comp.baseline is not None and 0 < comp.baseline.mean < 1 and comp.baseline.std > 0
    # the corrected scores subtract the baseline mean exactly where pairs are valid
    torch.testing.assert_close(comp.corrected()[0, :, 1, :], comp.scores[0, :, 1, :] - comp.baseline.mean)
    assert len(comp.to_frame()) == 16
    fig = comp.figure()
    assert fig.data[0].type == "heatmap" and "L0H0" in list(fig.data[0].x)
    assert comp.to_dict()["mode"] == "Q"


def test_random_baseline_matches_theory():
    # For i.i.d. Gaussian factors E||A B||^2 ~ d_head^2 d_model^3 while ||A||^2 ||B||^2 ~
    # d_head^2 d_model^4, so the score concentrates near 1/sqrt(d_model), whatever d_head is.
    for d_head in (8, 32):
        b = random_composition_baseline(512, d_head, "V", n_samples=300, seed=1)
        assert b.mean == pytest.approx(512**-0.5, rel=0.1)
    again = random_composition_baseline(512, 32, "V", n_samples=300, seed=1)
    assert again.mean == b.mean  # private generator: reproducible


def test_planted_composition(planted):
    k = composition_scores(planted, "K")
    assert k.top(1)[0][:4] == (0, 0, 1, 0)
    assert (float(k.scores[0, 0, 1, 0]) - k.baseline.mean) / k.baseline.std > 10


def test_composition_bad_input(attn_model):
    with pytest.raises(LensworksError, match="mode must be one of"):
        composition_scores(attn_model, "X")
    with pytest.raises(LensworksError, match="dtype"):
        composition_scores(attn_model, "Q", dtype=torch.float16)
    with pytest.raises(LensworksError, match="k must be"):
        composition_scores(attn_model, "Q", baseline=False).top(0)
    with pytest.raises(LensworksError, match="no baseline"):
        composition_scores(attn_model, "Q", baseline=False).corrected()


# ----------------------------------------------------------------------------- copying


def _dense_copying(model):
    full = (model.W_E @ model.OV @ model.W_U).AB.detach().double()  # [L, H, V, V]
    ev = torch.linalg.eigvals(full)
    return ev.real.sum(-1) / ev.abs().sum(-1)


@pytest.mark.parametrize("fixture", ["attn_model", "gqa_model", "mlp_model"])
def test_copying_matches_dense_eigenvalues(request, fixture):
    model = request.getfixturevalue(fixture)
    cs = copying_scores(model)
    torch.testing.assert_close(cs.scores.double(), _dense_copying(model), atol=1e-5, rtol=1e-4)
    # non-zero spectrum of the dense matrix equals the small one's (sorted by modulus)
    full = (model.W_E @ model.OV @ model.W_U).AB.detach().double()[0, 1]
    dense = torch.linalg.eigvals(full)
    dense = dense[dense.abs().argsort(descending=True)][: model.cfg.d_head]
    small = cs.eigenvalues[0, 1]
    small = small[small.abs().argsort(descending=True)]
    torch.testing.assert_close(small.abs(), dense.abs(), atol=1e-6, rtol=1e-5)
    assert bool((cs.scores.abs() <= 1).all())
    assert bool(((cs.positive_fraction >= 0) & (cs.positive_fraction <= 1)).all())


def test_copying_planted_and_baseline(planted):
    cs = copying_scores(planted)
    assert float(cs.scores[1, 0]) == pytest.approx(1.0, abs=1e-9)  # identity OV circuit
    assert float(cs.positive_fraction[1, 0]) == pytest.approx(1.0)
    assert float(cs.scores[0, 0]) == 0.0  # writes only where W_U does not read: no eigenvalues
    assert abs(cs.baseline_mean) < 0.5 and cs.baseline_std > 0


def test_copying_negative_head_and_helper():
    s, f = eigen_copying_score(torch.tensor([[-1.0, -2.0], [3.0, -1.0]]).to(torch.complex128))
    torch.testing.assert_close(s, torch.tensor([-1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(f, torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_copying_bf16_model_is_upcast(attn_model):
    bf = tiny_model(seed=1).to(torch.bfloat16)
    cs = copying_scores(bf)
    assert cs.scores.dtype == torch.float32 and bool(torch.isfinite(cs.scores).all())


def test_copying_needs_square_circuit():
    model = tiny_model(d_vocab=50, d_vocab_out=40)
    with pytest.raises(LensworksError, match="d_vocab == d_vocab_out"):
        copying_scores(model)


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_head_scores_agree_with_detect_head(char_model, prepend_bos):
    n = 12
    toks = repeated_tokens(char_model, seq_len=n, n_seqs=3, seed=1, prepend_bos=prepend_bos)
    o = int(prepend_bos)
    strs = [char_model.tokenizer.decode(t[o:]) for t in toks]
    assert all(torch.equal(char_model.to_tokens(s, prepend_bos=prepend_bos)[0], t) for s, t in zip(strs, toks))
    T = toks.shape[1]
    _, cache = char_model.run_with_cache(toks)
    for ours_kind, tl_kind in [("induction", "induction_head"), ("duplicate_token", "duplicate_token_head"),
                               ("previous_token", "previous_token_head")]:
        ours = head_scores(char_model, ours_kind, tokens=toks, prepend_bos=prepend_bos)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if prepend_bos:
                ref = detect_head(char_model, strs, tl_kind)
            else:
                ref = None  # detect_head always prepends BOS; only the direct check applies
        # detect_head divides by every row (T of them); ours averages the scored rows only.
        if ours_kind == "previous_token":
            extra = torch.stack([cache["pattern", l][:, :, o, o - 1] for l in range(2)]).mean(1) if o else 0
            converted = (ours.scores * (2 * n - 1) + extra) / T
        else:
            converted = ours.scores * n / T
        if prepend_bos:
            torch.testing.assert_close(converted, ref.float(), atol=1e-6, rtol=1e-5)
        # and against a direct computation from the cache
        pat = torch.stack([cache["pattern", l] for l in range(2)])  # [L, b, H, q, k]
        d = {"induction": n - 1, "duplicate_token": n, "previous_token": 1}[ours_kind]
        q = torch.arange(o + n if ours_kind != "previous_token" else o + 1, o + 2 * n)
        direct = pat[:, :, :, q, q - d].mean(dim=(1, 3))
        torch.testing.assert_close(ours.scores, direct, atol=1e-6, rtol=1e-5)


def test_head_scores_sampled_tokens_avoid_specials(char_model):
    toks = repeated_tokens(char_model, seq_len=20, n_seqs=4, seed=3)
    assert bool((toks[:, 0] == 0).all()) and not bool((toks[:, 1:] == 0).any())
    assert torch.equal(toks[:, 1:21], toks[:, 21:])
    assert all(len(set(row[1:21].tolist())) == 20 for row in toks)  # distinct within a copy
    assert torch.equal(toks, repeated_tokens(char_model, seq_len=20, n_seqs=4, seed=3))


def test_planted_head_scores(planted):
    n = 15
    prev = head_scores(planted, "previous_token", seq_len=n, n_seqs=8)
    ind = head_scores(planted, "induction", seq_len=n, n_seqs=8)
    dup = head_scores(planted, "duplicate_token", seq_len=n, n_seqs=8)
    assert float(prev.scores[0, 0]) == pytest.approx(1.0, abs=1e-4)
    # at the first query of the second copy, position 0 (no predecessor; L0H0 copied its own
    # token) ties with the true target, so exactly half a query's attention is lost
    assert float(ind.scores[1, 0]) == pytest.approx(1 - 0.5 / n, abs=1e-3)
    assert float(dup.scores.max()) < 0.1
    assert prev.top(1)[0][0] == "L0H0" and ind.top(1)[0][0] == "L1H0"
    assert ind.figure().data[0].type == "heatmap"
    assert 0 < ind.chance < 0.1


def test_head_scores_bad_input(attn_model, char_model):
    with pytest.raises(LensworksError, match="kind must be one of"):
        head_scores(attn_model, "induction_heads")  # "induction_head" is TransformerLens's name (test_detect_head.py)
    with pytest.raises(LensworksError, match="n_ctx"):
        head_scores(attn_model, "induction", seq_len=40)
    with pytest.raises(LensworksError, match="must repeat"):
        head_scores(attn_model, "induction", tokens=torch.arange(20).reshape(1, 20))
    with pytest.raises(LensworksError, match="o \\+ 2\\*seq_len"):
        head_scores(attn_model, "induction", tokens=torch.arange(7).reshape(1, 7))
    with pytest.raises(LensworksError, match="BOS"):
        head_scores(attn_model, "induction", prepend_bos=True)
    with pytest.raises(LensworksError, match="n_ctx"):
        head_scores(attn_model, "induction", tokens=torch.arange(35).repeat(1, 2))


def test_head_scores_do_not_mutate(char_model):
    before = _state(char_model)
    n_hooks = sum(len(hp.fwd_hooks) for hp in char_model.hook_dict.values())
    head_scores(char_model, "induction", seq_len=10, n_seqs=2)
    _assert_unchanged(char_model, before)
    assert sum(len(hp.fwd_hooks) for hp in char_model.hook_dict.values()) == n_hooks


# ----------------------------------------------------------------------------- induction verdict


def test_planted_induction_verdict(planted):
    report = find_induction_heads(planted, seq_len=15, n_seqs=8)
    assert report.heads == [(1, 0)]
    top = report.evidence[0]
    assert top.label == "L1H0" and top.previous_partner == "L0H0" and top.is_induction
    assert top.copying == pytest.approx(1.0)
    frame = report.to_frame()
    assert set(frame.label) == {"L0H0", "L0H1", "L1H0", "L1H1"}
    assert "L1H0" in report.summary()
    assert report.figure().layout.title.text.startswith("Induction heads")


def test_no_induction_heads_in_random_or_one_layer_models(attn_model):
    assert find_induction_heads(attn_model, seq_len=20, n_seqs=8).heads == []
    one = tiny_model(n_layers=1, seed=5)
    report = find_induction_heads(one, seq_len=20, n_seqs=8)
    assert report.heads == [] and "no induction heads" in report.summary()


def test_induction_verdict_requires_mechanism(planted):
    """Behaviour alone is not enough: ablate the copying OV of L1H0 (on a copy) and it is dropped."""
    import copy as _copy

    broken = _copy.deepcopy(planted)
    with torch.no_grad():
        broken.blocks[1].attn.W_O[0] *= -1  # now suppresses instead of copying; attention unchanged
    report = find_induction_heads(broken, seq_len=15, n_seqs=8)
    assert report.heads == []
    ev = next(e for e in report.evidence if e.label == "L1H0")
    assert ev.induction > 0.9 and any("does not copy" in r for r in ev.reasons)


def test_skip_trigrams_planted_head():
    """W_E = W_U = I; head L0H1 reads token 3 into its value and writes 10 x token 7; its query
    reads token 5 and its key token 3: the strongest trigram is 5 ... 3 -> 7 with OV 10, QK 1."""
    from helpers import tiny_model
    from lensworks.circuits import skip_trigrams

    model = tiny_model(seed=0, n_layers=1, d_model=16, d_vocab=16, normalization_type=None)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E.copy_(torch.eye(16))
        model.W_U.copy_(torch.eye(16))
        attn = model.blocks[0].attn  # model.W_V etc. are stacked copies; write the parameters
        attn.W_V[1, 3, 0] = 1.0
        attn.W_O[1, 0, 7] = 10.0
        attn.W_Q[1, 5, 0] = 1.0
        attn.W_K[1, 3, 0] = 1.0
    tri = skip_trigrams(model, 0, 1, k=3)
    assert (int(tri.source[0]), int(tri.out[0]), int(tri.destination[0])) == (3, 7, 5)
    assert float(tri.ov[0]) == pytest.approx(10.0) and float(tri.qk[0]) == pytest.approx(1.0)
    assert list(tri.to_frame().columns[:5]) == ["source", "destination", "out", "ov", "qk"]


def test_skip_trigrams_equal_dense_circuits(attn_model):
    from lensworks.circuits import skip_trigrams

    layer, head, k = 1, 2, 12
    tri = skip_trigrams(attn_model, layer, head, k=k, source_chunk=7)  # chunks that do not divide d_vocab
    with torch.no_grad():
        ov = (attn_model.W_E @ attn_model.OV[layer, head] @ attn_model.W_U).AB  # TransformerLens's full OV circuit
        qk = (attn_model.W_E @ attn_model.QK[layer, head] @ attn_model.W_E.T).AB  # [dest, source]
    vals, idx = ov.flatten().topk(k)
    torch.testing.assert_close(tri.ov, vals.detach(), rtol=1e-5, atol=1e-5)
    V = ov.shape[1]
    assert tri.source.tolist() == (idx // V).tolist() and tri.out.tolist() == (idx % V).tolist()
    best, dest = qk[:, tri.source].max(0)
    assert tri.destination.tolist() == dest.tolist()
    torch.testing.assert_close(tri.qk, best.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(LensworksError, match="k must be"):
        skip_trigrams(attn_model, 0, 0, k=0)


def test_circuit_graph_on_the_planted_induction_model(planted):
    from lensworks.circuits import circuit_graph, composition_scores

    g = circuit_graph(planted, modes=("K",), z_min=3.0, baseline_samples=30)
    nodes = {n["label"]: n for n in g.nodes}
    assert "previous-token" in nodes["L0H0"]["roles"] and "induction" in nodes["L1H0"]["roles"]
    assert "copying" in nodes["L1H0"]["roles"] and not nodes["L0H1"]["roles"]
    assert g.edges[0][:3] == ("L0H0", "L1H0", "K")
    # every edge is exactly a pair whose composition z passes the threshold
    comp = composition_scores(planted, "K", baseline_samples=30, progress=False)
    z = (comp.scores - comp.baseline.mean) / comp.baseline.std
    expected = {(f"L{a}H{b}", f"L{c}H{d}") for a, b, c, d in (comp.mask() & (z >= 3.0)).nonzero().tolist()}
    assert {(e[0], e[1]) for e in g.edges} == expected
    assert g.figure().data and list(g.to_frame().columns) == ["from", "to", "mode", "score", "z"]
    with pytest.raises(LensworksError, match="modes"):
        circuit_graph(planted, modes=("X",))


def test_copying_eigenvalues_solved_in_threads_equal_one_by_one():
    from lensworks.circuits.eigen import _eigvals_by_layer

    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(4, 8, 8, dtype=torch.float64, generator=g) for _ in range(6)]
    from lensworks._threads import using_threads

    with using_threads(2):  # two threads, so the pool is used (pytest -n workers run on one)
        assert torch.get_num_threads() >= 2
        got = _eigvals_by_layer(mats)
    assert all(torch.equal(a, torch.linalg.eigvals(m)) for a, m in zip(got, mats))
