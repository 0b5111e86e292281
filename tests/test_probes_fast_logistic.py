"""Probe method ``"fast-logistic"``: logistic regression in whitened coordinates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lensworks.probes import probe_inputs
from lensworks.probes._solvers import (
    FAST_LOGISTIC_ITER,
    fit_logistic,
    fit_logistic_whitened,
    lda_from_moments,
    ridge_from_moments,
)
from lensworks.probes.linear import METHODS

C = 10


def _mixtures(n: int, seed: int, d: int = 12, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class a mixture of ``k`` axis-aligned Gaussians of its own widths, seen through a
    fixed badly scaled, correlating linear map plus an offset: not one Gaussian per class with a
    shared covariance, which is what the closed forms (LDA, least squares) assume."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(C, k, d, generator=g) * 1.2
    widths = torch.rand(C, k, d, generator=g) * 1.5 + 0.2
    mix = torch.randn(d, d, generator=g) * torch.logspace(-1, 1, d)[None]
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    comp = torch.randint(0, k, (n,), generator=g)
    x = centres[y, comp] + widths[y, comp] * torch.randn(n, d, generator=g)
    return x @ mix + 3.0, y


def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ w.float() + b.float()).argmax(1) == y).double().mean())


def _objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """scikit-learn's C=1 objective divided by n, on standardised features, at raw-feature weights."""
    sd = x.std(0, unbiased=False)
    w_z = w * sd[:, None]  # the same logits from standardised features
    return float(F.cross_entropy(x @ w + b, y)) + float((w_z * w_z).sum()) / (2 * len(x))


@pytest.fixture(scope="module")
def planted():
    """Training and held-out rows, and the reference: plain L-BFGS run to convergence."""
    (x, y), test = _mixtures(4000, 1), _mixtures(4000, 2)
    return (x, y), test, fit_logistic(x, y, C, max_iter=500)


def test_default_matches_converged_logistic_where_closed_forms_fall_short(planted):
    (x, y), (xt, yt), converged = planted
    fast = _accuracy(*fit_logistic_whitened(x, y, C), xt, yt)
    reference = _accuracy(*converged, xt, yt)
    xd, oh = x.double(), F.one_hot(y, C).double()
    moments = (len(x), xd.sum(0), xd.T @ xd, xd.T @ oh, oh.sum(0))
    lda = _accuracy(*lda_from_moments(*moments)[:2], xt, yt)
    ridge = _accuracy(*ridge_from_moments(*moments)[:2], xt, yt)
    # the planted problem is one where the closed forms fall well short of logistic regression
    assert lda < reference - 0.03 and ridge < reference - 0.03
    assert abs(fast - reference) <= 0.01
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x.numpy())
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(x.numpy()), y.numpy())
    assert sklearn is not None
    assert abs(fast - clf.score(scaler.transform(xt.numpy()), yt.numpy())) <= 0.01


def test_same_objective_as_logistic(planted):
    """Run long, the whitened fit reaches the optimum of the same (scikit-learn C=1) objective."""
    (x, y), _, (w_ref, b_ref) = planted
    w, b = fit_logistic_whitened(x, y, C, max_iter=300)
    assert _objective(w, b, x, y) <= _objective(w_ref, b_ref, x, y) + 1e-4
    # the default few steps already get most of the way from the start
    start = _objective(*fit_logistic_whitened(x, y, C, max_iter=0), x, y)
    few = _objective(*fit_logistic_whitened(x, y, C), x, y)
    assert few - _objective(w_ref, b_ref, x, y) < 0.2 * (start - _objective(w_ref, b_ref, x, y))


def test_degenerate_features_and_unseen_classes():
    """Rank-deficient, perfectly separable features (LDA's within-class scatter is zero) and a
    class with no training row: the fit stays finite and separates the seen classes."""
    emb = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) @ torch.randn(10, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4).repeat(25)
    w, b = fit_logistic_whitened(emb[y], y, 5)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()
    assert _accuracy(w, b, emb[y], y) == 1.0
    assert float(b[4]) < float(b[:4].min())


def test_probe_inputs_fast_logistic_is_deterministic(mlp_model):
    assert "fast-logistic" in METHODS
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (12, 10), generator=torch.Generator().manual_seed(0))
    kw = dict(offsets=(0, -1), layers=[0, 1], controls=False, progress=False, method="fast-logistic")
    res = probe_inputs(mlp_model, toks, **kw)
    assert res.method == "fast-logistic" and res.options["max_iter"] == FAST_LOGISTIC_ITER
    assert res.cross_entropy is not None and torch.isnan(res.alpha).all()
    again = probe_inputs(mlp_model, toks, **kw)
    assert torch.equal(res.accuracy, again.accuracy) and torch.equal(res.probe_weights, again.probe_weights)
    explicit = probe_inputs(mlp_model, toks, max_iter=FAST_LOGISTIC_ITER, **kw)
    assert torch.equal(res.probe_weights, explicit.probe_weights)


def _wide(n: int, seed: int, d: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Fewer rows than features (a wide model read at few tokens): the class signal lives in a
    16-dimensional subspace of ``d``, plus isotropic noise."""
    g = torch.Generator().manual_seed(0)
    basis, means = torch.randn(16, d, generator=g), torch.randn(C, 16, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    return (means[y] + torch.randn(n, 16, generator=g)) @ basis + 0.5 * torch.randn(n, d, generator=g) + 1.0, y


def test_gram_whitening_solves_the_same_problem_with_fewer_rows_than_features():
    """With n < d the whitening comes from the n x n Gram matrix: the same non-zero spectrum,
    whitened coordinates of (nearly) identity covariance, and the same objective after the
    default steps as the d x d route; held-out accuracy equal."""
    from lensworks.probes._solvers import whiten

    x, y = _wide(120, seed=1)
    xt, yt = _wide(2000, seed=2)
    full, gram = whiten(x, gram=False), whiten(x, gram=True)
    assert whiten(x).u.shape == gram.u.shape  # the default for n < d
    r = gram.evals.numel()
    assert r == 119  # standardised rows are centred: rank n - 1
    torch.testing.assert_close(gram.evals, full.evals[-r:], rtol=1e-4, atol=1e-6)
    assert gram.eps == pytest.approx(full.eps, rel=1e-6)
    cov = gram.u.double().T @ gram.u.double() / len(x)
    expected = (gram.evals / (gram.evals + gram.eps)).diag()
    torch.testing.assert_close(cov, expected, atol=1e-4, rtol=0)
    w_f, b_f = fit_logistic_whitened(None, y, C, whitening=full)
    w_g, b_g = fit_logistic_whitened(None, y, C, whitening=gram)
    assert _objective(w_g, b_g, x, y) == pytest.approx(_objective(w_f, b_f, x, y), rel=1e-3)
    assert abs(_accuracy(w_g, b_g, xt, yt) - _accuracy(w_f, b_f, xt, yt)) <= 0.01
    assert _accuracy(w_g, b_g, xt, yt) > 0.9  # the planted classes are found
    # the weights lie in the span of the (centred) training rows: nothing outside it is learned
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    w_z = (w_g * x.std(0, unbiased=False)[:, None]).double()
    q, _ = torch.linalg.qr(z.double().T)
    outside = w_z - q @ (q.T @ w_z)
    assert float(outside.norm()) < 1e-4 * float(w_z.norm())


def test_a_shared_whitening_gives_the_same_fit():
    """The probe and its shuffled-label control share one whitening: the fit is the one from x."""
    from lensworks.probes._solvers import whiten

    for x, y in (_mixtures(400, seed=3), _wide(80, seed=4)):
        wh = whiten(x)
        for labels in (y, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]):
            w1, b1 = fit_logistic_whitened(x, labels, C)
            w2, b2 = fit_logistic_whitened(None, labels, C, whitening=wh)
            assert torch.equal(w1, w2) and torch.equal(b1, b2)
    with pytest.raises(Exception, match="class indices"):
        fit_logistic_whitened(None, y[:10], C, whitening=wh)


def test_lda_dim_counts_the_zero_features():
    """Moments of the varying directions only, with ``dim`` the full width, give the LDA of the
    full features padded with identically-zero columns."""
    x, y = _mixtures(300, seed=5)
    pad = torch.cat([x.double(), torch.zeros(300, 7, dtype=torch.float64)], 1)
    oh = F.one_hot(y, C).double()
    w_pad, b_pad, _ = lda_from_moments(300, pad.sum(0), pad.T @ pad, pad.T @ oh, oh.sum(0))
    xd = x.double()
    w, b, _ = lda_from_moments(300, xd.sum(0), xd.T @ xd, xd.T @ oh, oh.sum(0), dim=pad.shape[1])
    torch.testing.assert_close(w, w_pad[:-7])
    torch.testing.assert_close(b, b_pad)
    assert float(w_pad[-7:].abs().max()) == 0.0
    w_own, _, _ = lda_from_moments(300, xd.sum(0), xd.T @ xd, xd.T @ oh, oh.sum(0))
    assert not torch.allclose(w_own, w)  # the count changes the shrinkage


def test_wide_constant_features_fall_back_to_the_class_prior():
    """Rows that never vary (fewer than the features) leave nothing to whiten: the fit is the
    class prior, as on the d x d route, and asking without rows or a whitening is refused."""
    from lensworks.model import LensworksError

    y = torch.tensor([0, 1, 0, 1, 2])
    w, b = fit_logistic_whitened(torch.ones(5, 20), y, 3)
    assert float(w.abs().max()) == 0.0
    torch.testing.assert_close(torch.softmax(b, 0), torch.tensor([0.4, 0.4, 0.2]), atol=1e-3, rtol=0)
    with pytest.raises(LensworksError, match="feature rows"):
        fit_logistic_whitened(None, y, 3)
