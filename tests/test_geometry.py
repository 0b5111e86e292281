"""Residual statistics, block ablation, block decomposition and logit lens, cross-checked against
direct computations with TransformerLens's run_with_cache / run_with_hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CHAR_VOCAB, tiny_model
from lensworks.geometry import (
    block_ablation,
    block_decomposition,
    hellinger,
    logit_lens,
    residual_stats,
    update_alignment,
)
from lensworks.geometry import ablation as ablation_mod
from lensworks.model import TL_MAJOR, LensworksError

CODE = ["def f x", "import os", "return x, 1", "for i in range 3.", "x 2\n", "class a"]
PROSE = ["the cat sat", "a dog ran home", "it is late", "we went out", "she reads", "no"]


def _last_acts(model, prompts, hook):
    """Two-pass reference: run each prompt alone and read the hook at its last token."""
    rows = []
    for p in prompts:
        _, cache = model.run_with_cache(p)
        rows.append(torch.stack([cache[hook.format(l=l)][0, -1] for l in range(model.cfg.n_layers)]))
    return torch.stack(rows)  # [sample, layer, d]


# --------------------------------------------------------------------------- residual_stats


def test_streaming_stats_equal_two_pass(mlp_model):
    stats = residual_stats(mlp_model, {"code": CODE, "prose": PROSE}, batch_size=4)
    caches = {name: [mlp_model.run_with_cache(p)[1] for p in data] for name, data in (("code", CODE), ("prose", PROSE))}

    def acts(name, stream):
        return torch.stack([torch.stack([c[f"blocks.{l}.hook_{stream}"][0, -1] for l in range(3)]) for c in caches[name]])

    for si, stream in enumerate(("resid_pre", "resid_mid", "resid_post")):
        for name in ("code", "prose"):
            x = acts(name, stream)
            torch.testing.assert_close(stats.mean[name][si], x.mean(0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(stats.var[name][si], x.var(0), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(stats.norm_mean[name][si], x.norm(dim=-1).mean(0), atol=1e-5, rtol=1e-5)
        ref = F.cosine_similarity(acts("code", stream).mean(0), acts("prose", stream).mean(0), dim=-1)
        torch.testing.assert_close(stats.cosine("code", "prose")[stream], ref, atol=1e-5, rtol=1e-5)


def test_frame_figure_and_counts(mlp_model):
    stats = residual_stats(mlp_model, {"code": CODE, "prose": PROSE}, batch_size=5)
    df = stats.to_frame()
    assert list(df.columns[:6]) == ["dataset", "stream", "layer", "var_mean", "var_max", "norm_mean"]
    assert len(df) == 2 * 3 * mlp_model.cfg.n_layers
    row = df[(df.dataset == "code") & (df.stream == "resid_post") & (df.layer == 2)].iloc[0]
    assert row.var_max == pytest.approx(float(stats.var["code"][2, 2].max()), rel=1e-6)
    assert row.var_mean == pytest.approx(float(stats.var["code"][2, 2].mean()), rel=1e-6)
    assert stats.count == {"code": 6, "prose": 6}
    fig = stats.figure()
    assert fig.layout.title.text and len(fig.layout.annotations) == 3
    assert all(t.hovertemplate for t in fig.data)


def test_shards_merge_and_generators_match_one_pass(mlp_model):
    tokens = torch.randint(1, mlp_model.cfg.d_vocab, (40, 9), generator=torch.Generator().manual_seed(0))
    whole = residual_stats(mlp_model, {"t": tokens}, streams=("resid_post",), batch_size=64)
    a = residual_stats(mlp_model, {"t": tokens[:13]}, streams=("resid_post",), batch_size=5)
    b = residual_stats(mlp_model, {"t": tokens[13:]}, streams=("resid_post",), batch_size=7)
    merged = a.merge(b)
    assert merged.count["t"] == 40
    torch.testing.assert_close(merged.mean["t"], whole.mean["t"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.var["t"], whole.var["t"], atol=1e-5, rtol=1e-4)
    gen = residual_stats(mlp_model, {"t": (tokens[i : i + 6] for i in range(0, 40, 6))}, streams=("resid_post",))
    torch.testing.assert_close(gen.var["t"], whole.var["t"], atol=1e-5, rtol=1e-4)


def test_residual_stats_bad_input(mlp_model, attn_model):
    with pytest.raises(LensworksError, match="empty"):
        residual_stats(mlp_model, {"a": []})
    with pytest.raises(LensworksError, match="at least 2"):
        residual_stats(mlp_model, {"a": ["abc"]})
    with pytest.raises(LensworksError, match="unknown stream"):
        residual_stats(mlp_model, {"a": CODE}, streams=("resid_middle",))
    with pytest.raises(LensworksError, match="resid_mid"):
        residual_stats(attn_model, {"a": torch.zeros(3, 4, dtype=torch.long)}, streams=("resid_mid",))
    # the default reads the residual streams the model has (no resid_mid without MLPs)
    assert residual_stats(attn_model, {"a": torch.zeros(3, 4, dtype=torch.long)}).streams == ("resid_pre", "resid_post")
    with pytest.raises(LensworksError, match="n_ctx"):
        residual_stats(mlp_model, {"a": ["a" * 100, "b"]})
    with pytest.raises(LensworksError, match="position"):
        residual_stats(mlp_model, {"a": CODE}, position=50)
    with pytest.raises(LensworksError, match="lacks: .A. at 0"):
        residual_stats(mlp_model, {"a": ["ABC?", "abc"]})
    with pytest.raises(LensworksError, match="unknown data set"):
        residual_stats(mlp_model, {"a": CODE}).cosine("a", "b")


def test_update_alignment_matches_cache(mlp_model):
    ua = update_alignment(mlp_model, CODE, batch_size=4)
    attn = _last_acts(mlp_model, CODE, "blocks.{l}.hook_attn_out").mean(0)
    mlp = _last_acts(mlp_model, CODE, "blocks.{l}.hook_mlp_out").mean(0)
    assert ua.labels[:2] == ("L0.attn", "L0.mlp")
    ref = F.cosine_similarity(attn[0], mlp[2], dim=0)
    assert float(ua.cosine[0, 5]) == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(ua.cosine, ua.cosine.T)
    assert ua.figure().layout.title.text


# --------------------------------------------------------------------------- hellinger

probs = st.integers(2, 6).flatmap(
    lambda n: st.lists(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n), min_size=3, max_size=3)
)


def _normalise(rows):
    t = torch.tensor(rows, dtype=torch.float64) + 1e-12
    return t / t.sum(-1, keepdim=True)


@settings(max_examples=60, deadline=None)
@given(probs)
def test_hellinger_is_a_bounded_metric(rows):
    p, q, r = _normalise(rows)
    hpq, hqp = hellinger(p, q), hellinger(q, p)
    assert float(hpq) == pytest.approx(float(hqp), abs=1e-12)
    assert 0.0 <= float(hpq) <= 1.0
    assert float(hellinger(p, p)) == pytest.approx(0.0, abs=1e-7)
    assert float(hpq) <= float(hellinger(p, r)) + float(hellinger(r, q)) + 1e-9


def test_hellinger_known_values_and_errors():
    assert float(hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)
    p, q = torch.tensor([0.49, 0.51]), torch.tensor([0.51, 0.49])
    assert float(hellinger(p, q)) == pytest.approx(math.sqrt(((p.sqrt() - q.sqrt()) ** 2).sum() / 2), rel=1e-6)
    with pytest.raises(LensworksError, match="same shape"):
        hellinger(torch.ones(3) / 3, torch.ones(2) / 2)
    with pytest.raises(LensworksError, match="non-negative"):
        hellinger(torch.tensor([1.5, -0.5]), torch.tensor([0.5, 0.5]))


# --------------------------------------------------------------------------- block_ablation


def _naive_ablation(model, tokens, layer, kind):
    """Full forward pass with hooks: the block passes on resid_post - component."""
    store = {}

    def grab(act, hook):
        store["c"] = act.clone()

    def drop(act, hook):
        return act - store["c"]

    logits = model.run_with_hooks(
        tokens, fwd_hooks=[(f"blocks.{layer}.hook_{kind}", grab), (f"blocks.{layer}.hook_resid_post", drop)]
    )
    return logits[:, -1].log_softmax(-1)


def test_block_ablation_matches_run_with_hooks(mlp_model):
    tokens = torch.randint(1, mlp_model.cfg.d_vocab, (5, 8), generator=torch.Generator().manual_seed(1))
    table = block_ablation(mlp_model, tokens, batch_size=2)
    assert table.decomposition_ok and table.decomposition_error < 1e-5
    clean = mlp_model(tokens)[:, -1].log_softmax(-1)
    for layer in range(mlp_model.cfg.n_layers):
        for kind, which in (("attn_out", "drop_attn"), ("mlp_out", "drop_mlp")):
            abl = _naive_ablation(mlp_model, tokens, layer, kind)
            h = ((clean.exp().sqrt() - abl.exp().sqrt()) ** 2).sum(-1).sqrt() / math.sqrt(2)
            kl = (clean.exp() * (clean - abl)).sum(-1)
            torch.testing.assert_close(getattr(table, f"{which}_hellinger")[layer], h, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(getattr(table, f"{which}_kl")[layer], kl, atol=1e-4, rtol=1e-3)
            top = (clean.argmax(-1) == abl.argmax(-1)).float()
            torch.testing.assert_close(getattr(table, f"{which}_top1")[layer], top)
    df = table.to_frame()
    assert list(df.columns[:5]) == ["block", "drop_attn_hellinger_mean", "drop_attn_hellinger_std",
                                    "drop_mlp_hellinger_mean", "drop_mlp_hellinger_std"]
    assert df.block.tolist() == [0, 1, 2]
    assert df.drop_mlp_hellinger_std[1] == pytest.approx(float(table.drop_mlp_hellinger[1].std()), rel=1e-6)
    assert table.figure().layout.title.text


@pytest.mark.parametrize("pos", [
    pytest.param("shortformer", marks=pytest.mark.skipif(
        TL_MAJOR >= 4, reason="TransformerLens 4's native model has no shortformer positions (load_model refuses them)")),
    "rotary"])
def test_block_ablation_other_position_embeddings(pos):
    extra = {"rotary_dim": 8} if pos == "rotary" else {}
    model = tiny_model(seed=9, n_layers=2, attn_only=False, d_mlp=32, positional_embedding_type=pos, **extra)
    tokens = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(2))
    table = block_ablation(model, tokens)
    assert table.decomposition_ok
    clean = model(tokens)[:, -1].log_softmax(-1)
    abl = _naive_ablation(model, tokens, 1, "attn_out")
    h = ((clean.exp().sqrt() - abl.exp().sqrt()) ** 2).sum(-1).sqrt() / math.sqrt(2)
    torch.testing.assert_close(table.drop_attn_hellinger[1], h.detach(), atol=1e-5, rtol=1e-4)


def test_ablating_a_zero_mlp_changes_nothing():
    model = tiny_model(seed=5, n_layers=3, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB, init_scale=2.0)
    with torch.no_grad():
        model.blocks[1].mlp.W_out.zero_()
        model.blocks[1].mlp.b_out.zero_()
    table = block_ablation(model, CODE)
    assert torch.all(table.drop_mlp_hellinger[1] == 0)
    assert torch.all(table.drop_mlp_kl[1] == 0)
    assert torch.all(table.drop_mlp_top1[1] == 1)
    assert float(table.drop_mlp_hellinger[0].max()) > 1e-3  # the others do change something


def test_attention_only_model_has_zero_mlp_rows(attn_model):
    table = block_ablation(attn_model, torch.randint(0, 50, (3, 6)))
    assert torch.all(table.drop_mlp_hellinger == 0) and float(table.drop_attn_hellinger.max()) > 0


def test_decomposition_check_reports_failure(mlp_model, monkeypatch):
    tokens = torch.randint(1, mlp_model.cfg.d_vocab, (2, 5))
    _, cache = mlp_model.run_with_cache(tokens)
    store = dict(cache.items())
    assert ablation_mod.check_decomposition(mlp_model, store)[0]
    store["blocks.1.hook_mlp_out"] = store["blocks.1.hook_mlp_out"] * 1.5
    ok, rel = ablation_mod.check_decomposition(mlp_model, store)
    assert not ok and rel > 1e-3
    monkeypatch.setattr(ablation_mod, "check_decomposition", lambda m, s: (False, 0.25))
    with pytest.warns(UserWarning, match="does not reproduce"):
        table = block_ablation(mlp_model, tokens)
    assert not table.decomposition_ok and table.decomposition_error == 0.25
    assert "warning" in table.figure().layout.title.text


def test_block_ablation_bad_input(mlp_model):
    with pytest.raises(LensworksError, match="empty"):
        block_ablation(mlp_model, [])
    with pytest.raises(LensworksError, match="n_ctx"):
        block_ablation(mlp_model, torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(LensworksError, match="token ids"):
        block_ablation(mlp_model, torch.full((1, 4), 999))


# --------------------------------------------------------------------------- decomposition


def test_block_decomposition_matches_cache(mlp_model):
    dec = block_decomposition(mlp_model, PROSE[:3])
    for i, p in enumerate(PROSE[:3]):
        _, cache = mlp_model.run_with_cache(p)
        mlps = [cache[f"blocks.{l}.hook_mlp_out"][0, -1] for l in range(3)]
        attn1 = cache["blocks.1.hook_attn_out"][0, -1]
        pre1 = cache["blocks.1.hook_resid_pre"][0, -1]
        final = cache["blocks.2.hook_resid_post"][0, -1]
        ffn = cache["blocks.0.hook_resid_pre"][0, -1] + sum(mlps)
        assert float(dec.ffn_only_cosine[i]) == pytest.approx(float(F.cosine_similarity(final, ffn, dim=0)), abs=1e-5)
        assert float(dec.attn_norm[1, i]) == pytest.approx(float(attn1.norm()), rel=1e-5)
        assert float(dec.attn_cos_input[1, i]) == pytest.approx(float(F.cosine_similarity(attn1, pre1, dim=0)), abs=1e-5)
        assert float(dec.ffn_only_norm_ratio[i]) == pytest.approx(float(ffn.norm() / final.norm()), rel=1e-5)
    assert dec.prompt_labels[0].endswith("the cat sat")
    fig = dec.figure(0)
    # the drawn full path ends at a distance equal to ... its lengths are the real norms
    xs, ys = fig.data[0].x, fig.data[0].y
    first = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
    assert first == pytest.approx(float(dec.embed_norm[0]), rel=1e-5)
    assert len(dec.to_frame()) == 3
    with pytest.raises(LensworksError, match="out of range"):
        dec.figure(7)


# --------------------------------------------------------------------------- logit lens


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_logit_lens_uses_each_layers_own_statistics(norm):
    model = tiny_model(seed=6, n_layers=3, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB, normalization_type=norm)
    lens = logit_lens(model, PROSE[:4], top_k=3)
    assert lens.final_max_error < 1e-5
    assert float(lens.kl[-1].abs().max()) < 1e-6
    for i, p in enumerate(PROSE[:4]):
        logits, cache = model.run_with_cache(p)
        final = logits[0, -1].log_softmax(-1)
        for row, hook in enumerate(["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(3)]):
            x = cache[hook][0, -1]
            if norm == "LN":
                x = x - x.mean()
                x = x / (x.pow(2).mean() + model.cfg.eps).sqrt() * model.ln_final.w + model.ln_final.b
            else:
                x = x / (x.pow(2).mean() + model.cfg.eps).sqrt() * model.ln_final.w
            lp = (x @ model.W_U + model.b_U).log_softmax(-1)
            kl = float((final.exp() * (final - lp)).sum().detach())
            assert float(lens.kl[row, i]) == pytest.approx(kl, abs=1e-5, rel=1e-4)
            assert int(lens.top_tokens[row, i, 0]) == int(lp.argmax())
    df = lens.to_frame()
    assert df.layer.tolist() == ["embed", "L0", "L1", "L2"] and df.top1_agreement.iloc[-1] == 1.0
    assert lens.figure().layout.title.text


def test_logit_lens_bad_input(mlp_model):
    with pytest.raises(LensworksError, match="top_k"):
        logit_lens(mlp_model, CODE, top_k=0)
    with pytest.raises(LensworksError, match="empty"):
        logit_lens(mlp_model, [""], prepend_bos=False)


@pytest.mark.parametrize("fixture", ["attn_model", "gqa_model", "mlp_model"])
def test_every_analysis_runs_on_every_fixture(fixture, request):
    model = request.getfixturevalue(fixture)
    tokens = torch.randint(1, model.cfg.d_vocab, (4, 7), generator=torch.Generator().manual_seed(3))
    stats = residual_stats(model, {"a": tokens[:2], "b": tokens[2:]}, streams=("resid_pre", "resid_post"))
    assert all(bool(torch.isfinite(v).all()) for v in stats.var.values())
    table = block_ablation(model, tokens)
    assert table.decomposition_ok and table.drop_attn_hellinger.shape == (model.cfg.n_layers, 4)
    lens = logit_lens(model, tokens)
    assert lens.final_max_error < 1e-4
    dec = block_decomposition(model, tokens)
    assert bool(torch.isfinite(dec.ffn_only_cosine).all())
    ua = update_alignment(model, tokens)
    assert ua.cosine.shape[0] == model.cfg.n_layers * (1 if model.cfg.attn_only else 2)


def test_cached_activations_errors_and_plain_dicts(mlp_model):
    from lensworks.geometry import logit_lens, residual_stats

    toks = torch.randint(1, mlp_model.cfg.d_vocab, (4, 10), generator=torch.Generator().manual_seed(0))
    _, cache = mlp_model.run_with_cache(toks)
    resid_only = {k: v for k, v in cache.items() if "resid" in k}  # a plain {hook: tensor} dict
    torch.testing.assert_close(logit_lens(mlp_model, resid_only).kl, logit_lens(mlp_model, toks).kl)
    with pytest.raises(LensworksError, match=r"the activation cache has no blocks\.2\.hook_resid_post"):
        logit_lens(mlp_model, {k: v for k, v in resid_only.items() if k != "blocks.2.hook_resid_post"})
    with pytest.raises(LensworksError, match="position 12 does not exist"):
        residual_stats(mlp_model, {"a": cache, "b": cache}, position=12)
    nan = dict(resid_only)
    nan["blocks.1.hook_resid_post"] = nan["blocks.1.hook_resid_post"].clone()
    nan["blocks.1.hook_resid_post"][0, -1, 0] = float("nan")
    with pytest.raises(LensworksError, match=r"blocks\.1\.hook_resid_post holds 1 NaN"):
        logit_lens(mlp_model, nan)


def test_effective_dimensionality_planted_three_directions():
    """Embeddings +-e0, +-e1, +-e2 with every token last equally often: covariance diag(1/3,1/3,1/3) x 6/5,
    so the participation ratio is exactly 3 and three components hold all the variance."""
    from helpers import tiny_model
    from lensworks.geometry import effective_dimensionality

    model = tiny_model(seed=0, n_layers=1, d_vocab=6)
    with torch.no_grad():
        model.W_E.zero_()
        model.W_pos.zero_()
        for t in range(6):
            model.W_E[t, t // 2] = 1.0 if t % 2 == 0 else -1.0
    toks = torch.stack([torch.tensor([(i + 1) % 6, i % 6]) for i in range(60)])
    ed = effective_dimensionality(model, toks, streams=("resid_pre",))
    assert float(ed.participation_ratio[0, 0]) == pytest.approx(3.0, rel=1e-6)
    assert int(ed.n_components_90[0, 0]) == 3
    torch.testing.assert_close(ed.eigenvalues[0, 0, :3], torch.full((3,), 60 / 3 / 59), rtol=1e-5, atol=1e-7)
    assert float(ed.eigenvalues[0, 0, 3:].abs().max()) < 1e-6


def test_effective_dimensionality_equals_dense_covariance(mlp_model):
    from lensworks.geometry import effective_dimensionality

    toks = torch.randint(1, mlp_model.cfg.d_vocab, (40, 12), generator=torch.Generator().manual_seed(3))
    ed = effective_dimensionality(mlp_model, toks, streams=("resid_pre", "resid_mid"), batch_size=7)
    _, cache = mlp_model.run_with_cache(toks)
    for si, s in enumerate(("resid_pre", "resid_mid")):
        for layer in range(mlp_model.cfg.n_layers):
            x = cache[f"blocks.{layer}.hook_{s}"][:, -1].double()
            lam = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0).clamp_min(0)
            torch.testing.assert_close(ed.eigenvalues[si, layer].double(), lam, rtol=1e-4, atol=1e-6)
            pr = lam.sum() ** 2 / (lam ** 2).sum()
            assert float(ed.participation_ratio[si, layer]) == pytest.approx(float(pr), rel=1e-5)
            k = int((lam.cumsum(0) / lam.sum() < 0.9).sum()) + 1
            assert int(ed.n_components_90[si, layer]) == k
    assert len(ed.to_frame()) == 2 * mlp_model.cfg.n_layers and ed.figure().data
    # one colour per stream in both panels (the legend shows the left panel's lines only)
    colours = {(t.name, t.xaxis): t.line.color for t in ed.figure().data}
    assert all(colours[(s, "x")] == colours[(s, "x2")] for s in ("resid_pre", "resid_mid"))
    assert colours[("resid_pre", "x")] != colours[("resid_mid", "x")]
    with pytest.raises(LensworksError, match="at least 2"):
        effective_dimensionality(mlp_model, toks[:1])
