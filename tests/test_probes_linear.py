"""probe_inputs: closed form against lstsq, planted answers, controls, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_model

from lensworks.model import LensworksError, hook_name
from lensworks.probes import probe_inputs
from lensworks.probes._data import make_plan
from lensworks.probes.linear import DEFAULT_STREAMS, RIDGE_GRID, ridge_from_moments


def _moments(x, y, c):
    Y = torch.nn.functional.one_hot(y, c).double()
    return x.shape[0], x.sum(0), x.T @ x, x.T @ Y, Y.sum(0), Y


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.5])
def test_ridge_closed_form_equals_lstsq(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 0.5, 1], dtype=torch.float64) + 1.5
    y = torch.randint(0, 4, (60,), generator=g)
    n, sx, G, B, cnt, Y = _moments(x, y, 4)
    w, b, a = ridge_from_moments(n, sx, G, B, cnt, alpha=alpha)
    assert a == alpha
    xc, yc = x - x.mean(0), Y - Y.mean(0)
    lam = alpha * float(torch.trace(xc.T @ xc)) / 5
    aug_x = torch.cat([xc, math.sqrt(lam) * torch.eye(5, dtype=torch.float64)])
    aug_y = torch.cat([yc, torch.zeros(5, 4, dtype=torch.float64)])
    w_ref = torch.linalg.lstsq(aug_x, aug_y).solution
    b_ref = Y.mean(0) - x.mean(0) @ w_ref
    torch.testing.assert_close(w, w_ref, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(b, b_ref, atol=1e-9, rtol=1e-7)
    if alpha == 0.0:  # plain least squares with a bias column
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(60, 1, dtype=torch.float64)], 1), Y).solution
        torch.testing.assert_close(w, sol[:5], atol=1e-9, rtol=1e-7)


def test_gcv_choice_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    n, sx, G, B, cnt, Y = _moments(x, y, 3)
    _, _, chosen = ridge_from_moments(n, sx, G, B, cnt)
    xc, yc = x - x.mean(0), Y - Y.mean(0)
    scale = float(torch.trace(xc.T @ xc)) / 12
    scores = []
    for a in RIDGE_GRID:
        H = xc @ torch.linalg.solve(xc.T @ xc + a * scale * torch.eye(12, dtype=torch.float64), xc.T)
        rss = float(((yc - H @ yc) ** 2).sum())
        df = float(torch.trace(H)) + 1
        scores.append(n * rss / (n - df) ** 2)
    assert chosen == RIDGE_GRID[min(range(len(scores)), key=scores.__getitem__)]


def _planted(seed=0, d_vocab=20, **kw):
    """d_model > d_vocab, no positional embedding: resid_pre of layer 0 is exactly W_E[token]."""
    m = tiny_model(seed=seed, d_vocab=d_vocab, attn_only=False, d_mlp=32, n_layers=2, **kw)
    with torch.no_grad():
        m.W_pos.zero_()
    return m


@pytest.mark.parametrize("method", ["ridge", "logistic", "fast-logistic"])
def test_planted_current_token_is_exact_at_layer0(method):
    m = _planted()
    toks = torch.randint(0, 20, (30, 12), generator=torch.Generator().manual_seed(3))
    res = probe_inputs(m, toks, streams=("resid_pre",), offsets=(0, -1), layers=[0], method=method, controls=False)
    assert res.accuracy[0, 0, 0] == 1.0
    # resid_pre of layer 0 knows nothing about the previous (independent) token
    assert float(res.accuracy[0, 0, 1]) < 0.2
    frame = res.to_frame()
    assert list(frame.columns[:7]) == [
        "layer", "stream", "offset", "accuracy", "chance", "control_random_model", "control_shuffled"
    ]
    assert ("cross_entropy" in frame.columns) == (method in ("logistic", "fast-logistic"))
    assert res.weights(0, "resid_pre", 0).shape == (m.cfg.d_model, len(res.classes))


def test_noise_residual_gives_chance():
    m = tiny_model(seed=5, d_vocab=8, attn_only=False, d_mlp=32, n_layers=2)
    with torch.no_grad():
        m.W_E.zero_()  # the residual carries position only, independent of the tokens
    toks = torch.randint(0, 8, (150, 16), generator=torch.Generator().manual_seed(4))
    res = probe_inputs(m, toks, offsets=(0,), controls=False)
    chance = float(res.chance[0])
    assert abs(chance - 1 / 8) < 0.05
    assert float((res.accuracy - chance).abs().max()) < 0.05


def test_pipeline_matches_dense_features(mlp_model):
    """Accuracy and weights equal a dense fit on run_with_cache features with the same split."""
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (12, 10), generator=torch.Generator().manual_seed(0))
    res = probe_inputs(mlp_model, toks, streams=("resid_mid",), offsets=(-1,), layers=[1], alpha=1e-3, method="ridge", controls=False, batch_size=5)
    plan = make_plan(toks, torch.full((12,), 10), (-1,), 0, 0.2, 0)
    _, cache = mlp_model.run_with_cache(toks)
    acts = cache[hook_name("resid_mid", 1)].double()
    x, y = acts[plan.train[0]], plan.target[0][plan.train[0]]
    n, sx, G, B, cnt, _ = _moments(x, y, len(plan.classes))
    w, b, _ = ridge_from_moments(n, sx, G, B, cnt, alpha=1e-3)
    torch.testing.assert_close(res.weights(1, "resid_mid", -1), w.float(), atol=1e-4, rtol=1e-3)
    xt, yt = acts[plan.test[0]], plan.target[0][plan.test[0]]
    acc = float(((xt @ w + b).argmax(-1) == yt).double().mean())
    assert abs(float(res.accuracy[0, 0, 0]) - acc) < 1e-9
    assert res.n_test == (int(plan.test[0].sum()),)


def test_controls_and_purity(mlp_model):
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (16, 10), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in mlp_model.state_dict().items()}
    rng = torch.get_rng_state()
    res = probe_inputs(mlp_model, toks, offsets=(0,), layers=[0, 2])
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in mlp_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.isfinite(res.control_random_model).all() and torch.isfinite(res.control_shuffled).all()
    # layer 0 resid_pre: the current token is recoverable far above its shuffled-label control
    assert float(res.accuracy[0, 0, 0]) > float(res.control_shuffled[0, 0, 0]) + 0.3
    again = probe_inputs(mlp_model, toks, offsets=(0,), layers=[0, 2])
    assert torch.equal(res.control_random_model, again.control_random_model)
    fig = res.figure()
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert any("dash" == t.line.dash for t in fig.data)


def test_shared_probe_and_strings(mlp_model):
    texts = ["hello world. ", "the quick brown fox", "jumps over 12 lazy dogs", "abc def ghi jkl"]
    res = probe_inputs(mlp_model, texts, offsets=(0, -1), shared=True, controls=False)
    bos = mlp_model.tokenizer.bos_token_id
    assert bos not in res.classes.tolist()
    assert res.shared
    torch.testing.assert_close(res.weights(0, "resid_pre", 0), res.weights(2, "resid_post", 0))
    assert res.options["split"] == "sequences"
    d = res.to_dict()
    assert "probe_weights" not in d and len(d["accuracy"]) == 3


def test_attn_only_streams(attn_model):
    toks = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(0))
    res = probe_inputs(attn_model, toks, offsets=(0,), controls=False)
    assert res.streams == ("resid_pre", "resid_post")
    assert res.options["skipped_streams"] == ["resid_mid"]
    with pytest.raises(LensworksError, match="resid_mid"):
        probe_inputs(attn_model, toks, streams=("resid_pre", "resid_mid"))


def test_streams_none_is_the_model_default_explicit_is_as_given(mlp_model, attn_model):
    """None: the model's default streams (resid_mid skipped where absent); any explicit tuple,
    DEFAULT_STREAMS itself or an equal copy, is taken as given."""
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (10, 8), generator=torch.Generator().manual_seed(3))
    kw = dict(offsets=(0,), layers=[0], method="lda", controls=False)
    default = probe_inputs(mlp_model, toks, **kw)
    for streams in (DEFAULT_STREAMS, tuple(list(DEFAULT_STREAMS))):
        explicit = probe_inputs(mlp_model, toks, streams=streams, **kw)
        assert explicit.streams == default.streams == DEFAULT_STREAMS
        assert torch.equal(explicit.probe_weights, default.probe_weights)
        assert explicit.options == default.options
    atoks = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(0))
    assert probe_inputs(attn_model, atoks, **kw).options["skipped_streams"] == ["resid_mid"]
    for streams in (DEFAULT_STREAMS, tuple(list(DEFAULT_STREAMS))):
        with pytest.raises(LensworksError, match="resid_mid"):
            probe_inputs(attn_model, atoks, streams=streams, **kw)


def test_bad_input(mlp_model):
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (6, 5))
    with pytest.raises(LensworksError, match="offset -5"):
        probe_inputs(mlp_model, toks, offsets=(0, -5))
    with pytest.raises(LensworksError, match="empty"):
        probe_inputs(mlp_model, [])
    with pytest.raises(LensworksError, match="empty"):
        probe_inputs(mlp_model, torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(LensworksError, match="unknown stream"):
        probe_inputs(mlp_model, toks, streams=("resid_sideways",))
    with pytest.raises(LensworksError, match="method"):
        probe_inputs(mlp_model, toks, method="svm")
    with pytest.raises(LensworksError, match="test_fraction"):
        probe_inputs(mlp_model, toks, test_fraction=1.0)
    with pytest.raises(LensworksError, match="layer 7"):
        probe_inputs(mlp_model, toks, layers=[7])
    res = probe_inputs(mlp_model, toks, offsets=(0,), layers=[0], streams=("resid_pre",), controls=False)
    with pytest.raises(LensworksError, match="not probed"):
        res.weights(1, "resid_pre", 0)


def test_lda_matches_sklearn():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from lensworks.probes.linear import lda_from_moments

    g = torch.Generator().manual_seed(5)
    centers = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (200,), generator=g)
    x = centers[y] + torch.randn(200, 6, generator=g, dtype=torch.float64) + 10.0
    n, sx, G, B, cnt, _ = _moments(x, y, 4)
    w, b, _ = lda_from_moments(n, sx, G, B, cnt, alpha=0.0)
    ref = LinearDiscriminantAnalysis(solver="lsqr").fit(x.numpy(), y.numpy())
    ours = (x @ w + b).numpy()
    theirs = ref.decision_function(x.numpy())
    diff = ours - theirs  # equal up to a constant per row
    assert (diff - diff[:, :1]).__abs__().max() < 1e-6
    assert (ours.argmax(1) == ref.predict(x.numpy())).all()


def test_lda_method_planted_and_shift_invariant():
    m = _planted(d_vocab=40)  # more classes than least squares ranks well
    toks = torch.randint(0, 40, (30, 12), generator=torch.Generator().manual_seed(6))
    res = probe_inputs(m, toks, streams=("resid_pre",), layers=[0], offsets=(0,), method="lda", controls=False)
    assert res.accuracy[0, 0, 0] == 1.0
    assert res.options["lda_alpha"] == 1e-3


def test_auto_method_chooses_and_refits(mlp_model):
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (20, 12), generator=torch.Generator().manual_seed(8))
    res = probe_inputs(mlp_model, toks, offsets=(0, -1), layers=[0, 1], method="auto")
    choices = res.options["auto_choices"]
    assert len(choices) == 2 * 3 * 2 and {c[3] for c in choices} <= {"lda", "ridge"}
    # the refit uses every training row: equal to the chosen method fitted directly
    for layer, stream, offset, chosen in choices[:3]:
        direct = probe_inputs(mlp_model, toks, offsets=(0, -1), layers=[layer], streams=(stream,), method=chosen, controls=False)
        a, b = res.weights(layer, stream, offset), direct.weights(layer, stream, offset)
        assert float((a - b).norm() / b.norm()) < 1e-2  # float32 batch products, shifted differently
    assert torch.isfinite(res.control_shuffled).all()
    m = _planted(d_vocab=40)
    planted = torch.randint(0, 40, (30, 12), generator=torch.Generator().manual_seed(6))
    exact = probe_inputs(m, planted, streams=("resid_pre",), layers=[0], offsets=(0,), method="auto", controls=False)
    assert exact.accuracy[0, 0, 0] == 1.0


def test_probes_from_a_cache_equal_the_token_path_and_check_the_cache(mlp_model):
    from lensworks.probes import probe_inputs

    toks = torch.randint(1, mlp_model.cfg.d_vocab, (12, 10), generator=torch.Generator().manual_seed(2))
    _, cache = mlp_model.run_with_cache(toks)
    kw = dict(offsets=(0, -1), method="ridge", seed=0)
    a, b = probe_inputs(mlp_model, toks, **kw), probe_inputs(mlp_model, toks, cache=cache, **kw)
    torch.testing.assert_close(a.accuracy, b.accuracy)
    torch.testing.assert_close(a.control_random_model, b.control_random_model)  # the control runs its own copy
    with pytest.raises(LensworksError, match="the tokens are"):
        probe_inputs(mlp_model, toks[:6], cache=cache, **kw)
    with pytest.raises(LensworksError, match="cache has no blocks.0.hook_resid_mid"):
        probe_inputs(mlp_model, toks, cache={k: v for k, v in cache.items() if "resid_mid" not in k}, **kw)
