"""The FFN-neighbour approximation against a naive dense implementation on a small corpus."""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import warnings
from collections import Counter

import pytest
import torch
import pandas as pd
import plotly.graph_objects as go
import torch.nn.functional as F

from helpers import CHAR_VOCAB, tiny_model
from lensworks._results import Result
from lensworks.geometry import NeighbourApproximation, NeighbourEvaluation, NeighbourPrediction, SimilarWindows, TuneResult
from lensworks.geometry import _neighbour_index as index_mod
from lensworks.geometry import neighbours as nb_mod
from lensworks.model import LensworksError, processing_state

WINDOW = 5


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "home", "it", "was", "late", "at"]
    return " ".join(rng.choice(words) for _ in range(300))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=7, n_layers=3, attn_only=False, d_mlp=64, vocab=CHAR_VOCAB, n_ctx=16)


@pytest.fixture(scope="module")
def approx(model, corpus):
    return NeighbourApproximation(window=WINDOW).fit(model, corpus, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def naive(model, corpus):
    """Dense reference: Python dict of windows, one forward pass per window, full similarity."""
    follow: dict[str, Counter] = {}
    for i in range(len(corpus) - WINDOW):
        follow.setdefault(corpus[i : i + WINDOW], Counter())[corpus[i + WINDOW]] += 1
    texts = sorted(follow)
    stoi = {s: i for i, s in enumerate(CHAR_VOCAB)}
    counts = torch.zeros(len(texts), len(CHAR_VOCAB))
    for r, t in enumerate(texts):
        for ch, n in follow[t].items():
            counts[r, stoi[ch]] = n
    toks = model.to_tokens(texts)  # BOS + window
    _, cache = model.run_with_cache(toks)
    outs = torch.stack([F.normalize(cache[f"blocks.{b}.hook_mlp_out"][:, -1], dim=-1) for b in range(3)])
    return texts, counts, outs


def _naive_predict(model, naive, prompts, thresholds, weights):
    texts, counts, outs = naive
    toks = model.to_tokens(prompts)
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
    total = torch.zeros(len(prompts), counts.shape[1])
    for b in range(3):
        q = F.normalize(cache[f"blocks.{b}.hook_mlp_out"][:, -1], dim=-1)
        mask = (q @ outs[b].T > thresholds[b]).float()
        total += weights[b] * (mask @ counts)
    return total, logits[:, -1].softmax(-1)


def test_index_matches_python_dict(approx, naive, corpus):
    texts, counts, _ = naive
    assert approx.n_windows == len(texts)
    assert {approx.window_text(i) for i in range(approx.n_windows)} == set(texts)
    for i in range(0, approx.n_windows, 7):
        j = texts.index(approx.window_text(i))
        assert torch.equal(approx.next_counts(i).float(), counts[j])
    assert float(approx.unigram_.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("chunk_size,mode", [(None, "dense"), (50, "dense"), (37, "scatter"), (None, "scatter")])
def test_predict_matches_naive_dense(approx, naive, model, corpus, monkeypatch, chunk_size, mode):
    if mode == "scatter":  # the large-vocabulary path: scatter only the matched windows' count rows
        monkeypatch.setattr(index_mod, "DENSE_VOCAB_LIMIT", 0)
    prompts = [corpus[i : i + WINDOW] for i in range(0, 600, 23)] + ["zzzzz", "the c"]
    thr, w = [0.9, 0.8, 0.7], [0.5, 1.0, 2.0]
    pred = approx.predict(prompts, thr, w, chunk_size=chunk_size, batch_size=8)
    total, model_probs = _naive_predict(model, naive, prompts, thr, w)
    matched = total.sum(-1) > 0
    assert torch.equal(pred.matched, matched)
    ref = total[matched] / total[matched].sum(-1, keepdim=True)
    torch.testing.assert_close(pred.probs[matched], ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pred.model_probs, model_probs, atol=1e-5, rtol=1e-4)
    _, _, outs = naive
    toks = model.to_tokens(prompts)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    for b in range(3):
        qb = F.normalize(cache[f"blocks.{b}.hook_mlp_out"][:, -1], dim=-1)
        assert torch.equal(pred.n_similar[b], (qb @ outs[b].T > thr[b]).sum(1))
    ev = approx.evaluate(prompts, thr, w, chunk_size=chunk_size)
    h_ref = ((pred.probs.sqrt() - model_probs.sqrt()) ** 2).sum(-1).sqrt() / math.sqrt(2)
    torch.testing.assert_close(ev.hellinger, h_ref, atol=1e-5, rtol=1e-4)
    assert ev.mean == pytest.approx(float(h_ref.mean()), abs=1e-5)
    assert ev.std == pytest.approx(float(h_ref.std()), abs=1e-5)
    assert ev.min == pytest.approx(float(h_ref.min()), abs=1e-5)
    assert ev.max == pytest.approx(float(h_ref.max()), abs=1e-5)
    nexts = Counter(corpus[WINDOW:])
    uni = torch.tensor([float(nexts[c]) for c in CHAR_VOCAB])
    base = (((uni / uni.sum()).sqrt() - model_probs.sqrt()) ** 2).sum(-1).sqrt() / math.sqrt(2)
    assert ev.baseline_mean == pytest.approx(float(base.mean()), abs=1e-5)


def test_prefix_trees_and_full_windows_give_the_same_index(approx, model, corpus):
    """The default fit (prefix trees on the CPU) stores what running every window in full stores."""
    full = NeighbourApproximation(window=WINDOW).fit(model, corpus, batch_size=64, progress=False,
                                                     shared_prefixes=False)
    assert torch.equal(approx.index_.windows, full.index_.windows)
    torch.testing.assert_close(approx.index_.outputs, full.index_.outputs, atol=1e-5, rtol=0)


def test_similar_matches_naive_and_finds_itself(approx, naive, model, corpus):
    texts, _, outs = naive
    prompt = corpus[10 : 10 + WINDOW]
    sim = approx.similar(prompt, block=1, threshold=0.8)
    _, cache = model.run_with_cache(model.to_tokens([prompt]))
    q = F.normalize(cache["blocks.1.hook_mlp_out"][0, -1], dim=-1)
    ref = {texts[i] for i in (outs[1] @ q > 0.8).nonzero()[:, 0].tolist()}
    assert set(sim.texts) == ref
    assert prompt in sim.texts and float(sim.cosines[0]) >= float(sim.cosines[-1])
    assert float(sim.cosines.min()) > 0.8
    assert sim.to_frame().shape[0] == len(ref)


def test_all_windows_similar_gives_corpus_frequencies(approx, corpus):
    """Planted: with threshold -1 every window matches, so the prediction is the corpus's
    next-token frequency."""
    pred = approx.predict(["the c"], [-1.0, -1.0, -1.0], [1.0, 0.0, 0.0])
    torch.testing.assert_close(pred.probs[0], approx.unigram_, atol=1e-6, rtol=1e-5)


def test_no_similar_window_gives_documented_fallback(approx):
    ev = approx.evaluate(["the c", "dog r"], 1.0)  # cosine can never exceed 1
    assert ev.n_unmatched == 2 and not bool(ev.matched.any())
    assert bool(torch.isfinite(ev.hellinger).all())
    pred = approx.predict(["the c"], 1.0)
    torch.testing.assert_close(pred.probs[0], approx.unigram_)
    assert int(pred.n_similar.sum()) == 0


def test_tune_improves_and_agrees_with_evaluate(approx, corpus):
    prompts = [corpus[i : i + WINDOW] for i in range(3, 900, 17)]
    res = approx.tune(prompts, threshold_grid=(0.6, 0.8, 0.9, 0.95), weight_grid=(0.0, 0.1, 1.0, 5.0), rounds=1)
    assert res.mean_hellinger <= res.history[0][1] + 1e-9
    ev = approx.evaluate(prompts, res.thresholds, res.weights)
    assert ev.mean == pytest.approx(res.mean_hellinger, abs=1e-5)
    assert set(res.thresholds) <= {0.6, 0.8, 0.9, 0.95}
    assert len(res.to_frame()) == 3 and res.figure().layout.title.text
    assert ev.figure().layout.title.text and len(ev.to_frame()) == len(prompts)


def test_token_id_corpus_and_prompts(model, corpus):
    ids = torch.tensor(model.tokenizer(corpus[:400], add_special_tokens=False)["input_ids"])
    a = NeighbourApproximation(window=4, blocks=[2]).fit(model, ids, progress=False)
    b = NeighbourApproximation(window=4, blocks=[2]).fit(model, corpus[:400], progress=False)
    assert torch.equal(a.windows_, b.windows_) and torch.allclose(a.outputs_, b.outputs_)
    p_ids = model.to_tokens(["the c", "a dog"], prepend_bos=False)[:, -4:]
    pa = a.predict(p_ids, 0.9)
    pb = b.predict(["he c", " dog"], 0.9)  # the same four characters as strings
    torch.testing.assert_close(pa.probs, pb.probs)
    torch.testing.assert_close(pa.model_probs, pb.model_probs)


def test_fast_character_encoding_matches_tokenizer(model, corpus):
    fast = nb_mod.corpus_tokens(model, corpus)
    slow = torch.tensor(model.tokenizer(corpus, add_special_tokens=False)["input_ids"])
    assert torch.equal(fast, slow)
    with pytest.raises(LensworksError, match="not in the model's vocabulary"):
        nb_mod.corpus_tokens(model, "abc?")


def test_bad_input(model, corpus):
    with pytest.raises(LensworksError, match="longer than the corpus"):
        NeighbourApproximation(window=5).fit(model, "abc")
    with pytest.raises(LensworksError, match="unknown stream or hook"):
        NeighbourApproximation(hook="mlp_output").fit(model, corpus)
    with pytest.raises(LensworksError, match="n_ctx"):
        NeighbourApproximation(window=40).fit(model, corpus)
    with pytest.raises(LensworksError, match="out of range"):
        NeighbourApproximation(blocks=[5]).fit(model, corpus)
    with pytest.raises(LensworksError, match="one per block"):
        NeighbourApproximation(thresholds=[0.9, 0.9]).fit(model, corpus)
    with pytest.raises(LensworksError, match="non-negative"):
        NeighbourApproximation(weights=[1.0, -1.0, 0.0]).fit(model, corpus)
    attn_only = tiny_model(seed=1, vocab=CHAR_VOCAB)
    with pytest.raises(LensworksError, match="mlp_out"):
        NeighbourApproximation(hook="mlp_out").fit(attn_only, corpus)  # the default picks attn_out there
    with pytest.raises(LensworksError, match="window"):  # the deprecated call checks the same way
        NeighbourApproximation.fit(model, "abc", window=5)


def test_bad_queries(approx):
    with pytest.raises(LensworksError, match="one per block"):
        approx.predict(["the c"], [0.9, 0.9])
    with pytest.raises(LensworksError, match="non-negative"):
        approx.predict(["the c"], 0.9, [1.0, -1.0, 0.0])
    with pytest.raises(LensworksError, match="not all zero"):
        approx.predict(["the c"], 0.9, [0.0, 0.0, 0.0])
    with pytest.raises(LensworksError, match=r"\[-1, 1\]"):
        approx.predict(["the c"], 1.5)
    with pytest.raises(LensworksError, match="not indexed"):
        approx.similar("the c", block=7, threshold=0.9)
    with pytest.raises(LensworksError, match="n_ctx"):
        approx.predict(["a" * 40], 0.9)
    with pytest.raises(LensworksError, match="empty"):
        approx.predict([], 0.9)


# --------------------------------------------------------------------------- the estimator contract


def test_hyper_parameters_only_in_the_constructor():
    params = inspect.signature(NeighbourApproximation.__init__).parameters
    assert list(params)[1:] == ["window", "hook", "blocks", "prepend_bos", "dtype", "thresholds", "weights",
                                "search_dtype"]
    assert all(p.default is not p.empty for name, p in params.items() if name != "self")
    est = NeighbourApproximation(window=4, blocks=[2], thresholds=0.8)
    assert est.get_params() == {"window": 4, "hook": None, "blocks": [2], "prepend_bos": None, "dtype": None,
                                "thresholds": 0.8, "weights": None, "search_dtype": "auto"}
    assert est.set_params(window=6) is est and est.window == 6
    with pytest.raises(LensworksError, match="no hyper-parameter 'corpus'"):
        est.set_params(corpus="abc")
    fit_params = inspect.signature(NeighbourApproximation(window=4).fit).parameters
    assert list(fit_params) == ["model", "corpus", "batch_size", "progress", "shared_prefixes"]
    assert "window=6" in repr(est) and "fitted" not in repr(est)


def test_learned_attributes_before_fit_say_to_call_fit():
    est = NeighbourApproximation()
    for name in ("windows_", "outputs_", "unigram_", "blocks_", "model", "model_", "n_windows", "processing_"):
        with pytest.raises(LensworksError, match=r"not fitted yet: call \.fit\(model, corpus\)"):
            getattr(est, name)
    assert not hasattr(est, "index_")
    with pytest.raises(LensworksError, match="call .fit"):
        est.predict(["the c"])
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        getattr(est, "nonsense")


def test_fit_returns_self_and_sets_learned_attributes(model, corpus):
    est = NeighbourApproximation(window=4, blocks=[1, 2], thresholds=[0.9, 0.8])
    assert est.fit(model, corpus[:300], progress=False) is est
    assert est.model is model and est.model_ is model
    assert est.blocks == [1, 2] and est.blocks_ == (1, 2)  # hyper-parameters are left as given
    assert est.prepend_bos is None and est.prepend_bos_ is True
    assert est.outputs_.shape == (2, est.n_windows, model.cfg.d_model) and est.windows_.shape[1] == 4
    assert est.processing_ == processing_state(model)
    assert "fitted" in repr(est)
    pred = est.predict(["the c"])  # thresholds and weights from the constructor
    assert pred.thresholds == pytest.approx((0.9, 0.8)) and pred.weights == (1.0, 1.0)


def test_deprecated_classmethod_fit_warns_and_gives_identical_numbers(model, corpus, approx):
    with pytest.warns(DeprecationWarning, match=r"NeighbourApproximation\(\.\.\.\)\.fit"):
        old = NeighbourApproximation.fit(model, corpus, window=WINDOW, batch_size=64, progress=False)
    assert isinstance(old, NeighbourApproximation)
    assert old.blocks == (0, 1, 2) and old.prepend_bos is True  # what the old call left there
    for name in ("windows_", "next_ptr_", "next_token_", "next_count_", "outputs_", "unigram_"):
        assert torch.equal(getattr(old, name), getattr(approx, name)), name
    prompts = [corpus[i : i + WINDOW] for i in range(0, 300, 31)]
    a, b = old.evaluate(prompts, [0.9, 0.8, 0.7], [0.5, 1.0, 2.0]), approx.evaluate(prompts, [0.9, 0.8, 0.7], [0.5, 1.0, 2.0])
    assert torch.equal(a.hellinger, b.hellinger) and (a.mean, a.std, a.baseline_mean) == (b.mean, b.std, b.baseline_mean)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NeighbourApproximation(window=WINDOW).fit(model, corpus[:100], progress=False)  # the new call: no warning


def test_evaluate_accepts_a_prediction(approx, corpus):
    prompts = [corpus[i : i + WINDOW] for i in range(5, 500, 19)] + ["zzzzz"]
    pred = approx.predict(prompts, [0.9, 0.8, 0.7], [0.5, 1.0, 2.0], chunk_size=50)
    from_pred = approx.evaluate(pred)
    direct = approx.evaluate(prompts, [0.9, 0.8, 0.7], [0.5, 1.0, 2.0], chunk_size=50)
    for f in dataclasses.fields(NeighbourEvaluation):
        x, y = getattr(from_pred, f.name), getattr(direct, f.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f.name
    torch.testing.assert_close(pred.hellinger, direct.hellinger)
    with pytest.raises(LensworksError, match="already fixes"):
        approx.evaluate(pred, 0.5)
    other = NeighbourApproximation(window=WINDOW, blocks=[0]).fit(approx.model, corpus[:200], progress=False)
    with pytest.raises(LensworksError, match="blocks"):
        other.evaluate(pred)
    assert list(inspect.signature(approx.predict).parameters) == list(inspect.signature(approx.evaluate).parameters)
    with pytest.warns(DeprecationWarning, match="prompts= is now called data="):
        old_name = approx.evaluate(prompts=prompts, thresholds=[0.9, 0.8, 0.7], weights=[0.5, 1.0, 2.0], chunk_size=50)
    assert torch.equal(old_name.hellinger, direct.hellinger)


def test_results_follow_the_contract(approx, model, corpus):
    prompts = [corpus[i : i + WINDOW] for i in range(0, 200, 13)]
    pred = approx.predict(prompts, 0.8)
    results = [approx.similar(prompts[0], block=1, threshold=0.8), pred, approx.evaluate(pred),
               approx.tune(prompts, threshold_grid=(0.8, 0.9), weight_grid=(1.0,), rounds=1)]
    for res, cls in zip(results, (SimilarWindows, NeighbourPrediction, NeighbourEvaluation, TuneResult)):
        assert isinstance(res, cls) and isinstance(res, Result)
        assert dataclasses.fields(cls)[-1].name == "processing"
        assert res.processing == processing_state(model)
        assert isinstance(res.figure(), go.Figure) and res.figure().layout.title.text
        assert isinstance(res.to_frame(), pd.DataFrame)
        caption = res.caption()
        assert isinstance(caption, str) and len(caption) > 30 and "\n" not in caption
        assert isinstance(res.headline(), str) and res.headline().endswith(".")
    ev = results[2]
    assert ev.caption().startswith("FFN-neighbour approximation: next-token distributions predicted from the corpus "
                                   "windows whose FFN outputs are most similar, compared with the model's own by "
                                   "Hellinger distance.")
    assert f"{ev.mean:.3f}" in ev.headline() and f"{ev.n_unmatched} had no similar window" in ev.headline()
    df = pred.to_frame()
    assert list(df.columns) == ["prompt", "matched", "n_similar_b0", "n_similar_b1", "n_similar_b2", "top_token",
                                "top_prob", "model_top_token", "model_top_prob", "hellinger"]
    assert len(df) == len(prompts) and df["prompt"].tolist() == list(prompts)
    top = pred.probs.argmax(-1)
    assert df["top_token"].tolist() == [CHAR_VOCAB[i] for i in top.tolist()]
    assert df["top_prob"].tolist() == pytest.approx(pred.probs.max(-1).values.tolist())
    assert df["hellinger"].tolist() == pytest.approx(ev.hellinger.tolist())
    assert len(pred.figure().data[0].y) == len(prompts)
    sim = results[0]
    assert list(sim.figure().data[0].x) == pytest.approx(sim.cosines[:40].tolist())
    default = approx.similar([prompts[0]])  # the last block, at its constructor threshold
    assert default.block == 2 and default.threshold == pytest.approx(0.9)
    # positional construction (without the new trailing fields) keeps working
    old_style = TuneResult((0.9,), (1.0,), 0.5, (("start", 0.6),), (0,))
    assert old_style.processing == {} and old_style.headline().endswith(".")


@pytest.mark.parametrize("lp", [torch.bfloat16, torch.float16])
def test_low_precision_search_makes_the_exact_decisions(mlp_model, lp):
    """bf16/fp16 similarities with an exact re-check near each threshold: the same matches and
    Hellinger distances as the float32 search (the GPU default; forced here on the CPU)."""
    text = ("the cat sat on the mat. the dog sat on the log. a cat and a dog. " * 30)
    exact = NeighbourApproximation(window=3, search_dtype=None).fit(mlp_model, text, progress=False)
    fast = NeighbourApproximation(window=3, search_dtype=lp).fit(mlp_model, text, progress=False)
    prompts = [text[i : i + 12] for i in range(0, 600, 37)]
    for th in (0.5, 0.8, 0.9, 0.97):
        a = exact.evaluate(prompts, thresholds=th, progress=False)
        b = fast.evaluate(prompts, thresholds=th, progress=False)
        assert torch.equal(a.n_similar, b.n_similar)
        assert (a.hellinger - b.hellinger).abs().max() <= 1e-4
    # the re-check matters: low precision alone flips decisions near a threshold; checked, none flip
    from lensworks.geometry._neighbour_index import SIM_MARGIN, _checked_sims

    q = torch.nn.functional.normalize(torch.randn(256, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    keys = torch.nn.functional.normalize(q + 0.5 * torch.randn(256, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    sims = q @ keys.T
    th = float(sims.flatten().median())
    rough = (q.to(lp) @ keys.to(lp).T).float()
    assert int(((rough > th) != (sims > th)).sum()) > 0
    assert float((rough - sims).abs().max()) <= SIM_MARGIN[lp] / 2  # the margin is twice the worst rounding
    checked = _checked_sims(q, q.to(lp), keys, torch.tensor([th]), lp)
    assert torch.equal(checked > th, sims > th)


def test_search_dtype_auto_is_exact_on_cpu():
    from lensworks.geometry._neighbour_index import low_precision_for

    assert low_precision_for("auto", torch.zeros(1, 2, 3)) is None
    assert low_precision_for(torch.bfloat16, torch.zeros(1, 2, 3)) is torch.bfloat16
    with pytest.raises(LensworksError, match="search_dtype"):
        low_precision_for(torch.float64, torch.zeros(1))
