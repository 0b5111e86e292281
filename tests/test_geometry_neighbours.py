"""The FFN-neighbour approximation against a naive dense implementation on a small corpus."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from helpers import CHAR_VOCAB, tiny_model
from lensworks.geometry import NeighbourApproximation
from lensworks.geometry import neighbours as nb_mod
from lensworks.model import LensworksError

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
    return NeighbourApproximation.fit(model, corpus, window=WINDOW, batch_size=64, progress=False)


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
        monkeypatch.setattr(nb_mod, "DENSE_VOCAB_LIMIT", 0)
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
    a = NeighbourApproximation.fit(model, ids, window=4, blocks=[2], progress=False)
    b = NeighbourApproximation.fit(model, corpus[:400], window=4, blocks=[2], progress=False)
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
        NeighbourApproximation.fit(model, "abc", window=5)
    with pytest.raises(LensworksError, match="unknown stream or hook"):
        NeighbourApproximation.fit(model, corpus, hook="mlp_output")
    with pytest.raises(LensworksError, match="n_ctx"):
        NeighbourApproximation.fit(model, corpus, window=40)
    with pytest.raises(LensworksError, match="out of range"):
        NeighbourApproximation.fit(model, corpus, blocks=[5])
    attn_only = tiny_model(seed=1, vocab=CHAR_VOCAB)
    with pytest.raises(LensworksError, match="mlp_out"):
        NeighbourApproximation.fit(attn_only, corpus)


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
