"""The passes of ``probe_inputs`` over the data: streaming closed-form fits, and logistic.

A :class:`ProbeJob` holds what one ``probe_inputs`` call has fixed before any forward pass
(data, split, layers, streams, offsets, method and options). :func:`fit_closed_form` fits
``"ridge"``, ``"lda"`` and ``"auto"`` from moments in one streaming pass (two for ``"auto"``:
fit, then validate) and scores them in another; :func:`fit_logistic_pass` keeps the
activations and fits by L-BFGS. Both return a :class:`PassResult`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensworks.model._compat import require_finite_activation
from lensworks._dist import all_reduce_sum, check_same_weights, world
from lensworks.model import HookedTransformer
from lensworks.probes._data import BatchFn, Plan, run_batches, sequences_with_rows
from lensworks.probes._moments import Moments, accumulate
from lensworks.probes._solvers import AUTO_CANDIDATES, fit_logistic, fit_logistic_whitened, whiten

__all__ = ["ProbeJob", "PassResult", "fit_closed_form", "fit_logistic_pass"]

#: A probe's ``(W, b, alpha)``; ``(W, b)`` in the working dtype for scoring.
Solution = tuple[Tensor, Tensor, float]
Linear = tuple[Tensor, Tensor]


@dataclasses.dataclass(frozen=True)
class ProbeJob:
    """What one ``probe_inputs`` call fits, fixed before any forward pass.

    Attributes:
        tokens: ``[n, pos]`` right-padded tokens.
        plan: Training and held-out rows with their targets.
        layers / streams / offsets: What is probed.
        hooks: Hook name to its ``(layer, stream)``, layer-major.
        stop_at: ``stop_at_layer`` of every forward pass.
        method: ``"ridge"``, ``"lda"``, ``"auto"``, ``"logistic"`` or ``"fast-logistic"``.
        shared: One probe per offset shared by every layer and stream.
        alpha: Fixed relative penalty (or shrinkage), or None.
        controls: Whether the shuffled-label control is fitted on the main model.
        batch_size / max_iter / progress: As passed to ``probe_inputs``.
        d_model: Width of the activations.
        act_dtype: Dtype in which activations are scored.
        val_rows: Per offset, the validation rows of ``"auto"`` (empty otherwise).
        test_seqs: Sequences that hold a held-out row.
    """

    tokens: Int[Tensor, "n pos"]
    plan: Plan
    layers: tuple[int, ...]
    streams: tuple[str, ...]
    offsets: tuple[int, ...]
    hooks: dict[str, tuple[int, str]]
    stop_at: int | None
    method: str
    shared: bool
    alpha: float | None
    controls: bool
    batch_size: int
    max_iter: int
    progress: bool | None
    d_model: int
    act_dtype: torch.dtype
    val_rows: list[Bool[Tensor, "n pos"]]
    test_seqs: Int[Tensor, "m"]
    #: Activations the user already cached for ``tokens`` (read instead of running ``cache_model``).
    cache: Any = None
    cache_model: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_layers, n_streams, n_offsets)``."""
        return len(self.layers), len(self.streams), len(self.offsets)

    @property
    def n_classes(self) -> int:
        """Number of probe classes."""
        return len(self.plan.classes)

    def key(self, layer: int, stream: str, k: int) -> tuple:
        """The probe fitted for ``(layer, stream, offset index k)``."""
        return ("shared", k) if self.shared else (layer, stream, k)

    def index(self, layer: int, stream: str) -> tuple[int, int]:
        """Row of ``layer`` and column of ``stream`` in the result arrays."""
        return self.layers.index(layer), self.streams.index(stream)

    def run(self, model: HookedTransformer, seqs: Int[Tensor, "m"], desc: str, fn: BatchFn) -> None:
        """Stream ``model`` over the sequences ``seqs``, calling ``fn(idx, store)`` per batch.

        Under torch.distributed each rank runs its contiguous share of ``seqs``; the callers add
        the ranks' sums afterwards.
        """
        rank, size = world()
        if size > 1:
            check_same_weights(model, desc)
            seqs = seqs[len(seqs) * rank // size : len(seqs) * (rank + 1) // size]
        if not len(seqs):
            return
        if self.cache is not None and model is self.cache_model:
            with torch.inference_mode():
                for s in range(0, len(seqs), self.batch_size):
                    idx = seqs[s : s + self.batch_size]
                    fn(idx, {key: require_finite_activation(self.cache[name][idx.to(self.cache[name].device)], name)
                             for name, key in self.hooks.items()})
            return
        run_batches(model, self.tokens, seqs, self.hooks, self.stop_at, self.batch_size, desc, self.progress, fn)

    def all_keys(self) -> list[tuple]:
        """Every probe key, in a fixed order (the same on every rank)."""
        return [self.key(l, s, k) for l in self.layers for s in self.streams for k in range(len(self.offsets))]

    def reduce_moments(self, moments: dict[tuple, Moments]) -> None:
        """Under torch.distributed: give every rank every probe's moments over all ranks' rows."""
        if world()[1] < 2:
            return
        for key in dict.fromkeys(self.all_keys()):
            if key not in moments:
                moments[key] = Moments(self.d_model, self.n_classes, self.tokens.device)
            moments[key].all_reduce()
        for key in [k for k, m in moments.items() if m.n == 0]:
            del moments[key]


@dataclasses.dataclass
class PassResult:
    """What one pass over one model gives. Weights, bias, alpha and choices: main model only."""

    accuracy: Float[Tensor, "n_layers n_streams n_offsets"]
    shuffled: Float[Tensor, "n_layers n_streams n_offsets"]
    cross_entropy: Float[Tensor, "n_layers n_streams n_offsets"] | None = None
    weights: Float[Tensor, "n_layers n_streams n_offsets d_model n_classes"] | None = None
    bias: Float[Tensor, "n_layers n_streams n_offsets n_classes"] | None = None
    alpha: Float[Tensor, "n_layers n_streams n_offsets"] | None = None
    choices: list[list[Any]] | None = None


def _hits(probe: Linear, x: Tensor, y: Tensor) -> float:
    """How many rows of ``x`` the probe ``(W, b)`` classifies as ``y``."""
    w, b = probe
    return float(((x @ w + b).argmax(-1) == y).sum())


def _working(job: ProbeJob, solution: Solution) -> Linear:
    return solution[0].to(job.act_dtype), solution[1].to(job.act_dtype)


# --------------------------------------------------------------------------- closed forms


def fit_closed_form(job: ProbeJob, model: HookedTransformer, label: str, *, main: bool) -> PassResult:
    """Fit ``"ridge"``/``"lda"``/``"auto"`` probes on ``model`` from streamed moments and score them.

    Args:
        job: What to fit.
        model: The model to run (the probed one, or its random copy).
        label: Progress-bar label of the model.
        main: Whether this is the probed model: then the shuffled-label control is fitted
            (when ``job.controls``) and the weights are returned.

    Returns:
        A :class:`PassResult`.

    Example:
        :func:`~lensworks.probes.probe_inputs` builds the job and calls this for the closed forms:

        >>> from lensworks.probes import probe_inputs
        >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8))
        >>> probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False).accuracy.shape
        torch.Size([2, 2, 1])
    """
    plan = job.plan
    shuffled = plan.shuffled if job.controls and main else None
    fit_rows = plan.train if job.method != "auto" else [t & ~v for t, v in zip(plan.train, job.val_rows)]
    moments: dict[tuple, Moments] = {}
    job.run(
        model, sequences_with_rows(fit_rows), f"probe fit ({label})",
        lambda idx, store: accumulate(moments, idx, store, fit_rows, plan.target, shuffled, job.key, job.n_classes, job.tokens.device),
    )
    job.reduce_moments(moments)
    chosen = _choose_auto(job, model, label, moments, shuffled) if job.method == "auto" else {}
    sol: dict[tuple, Solution] = {}
    sol_shuf: dict[tuple, Solution] = {}
    for key, mom in moments.items():
        sol[key] = mom.solve(chosen.get(key, job.method), job.alpha)
        if shuffled is not None:
            sol_shuf[key] = mom.solve(chosen.get(("shuffled",) + key, job.method), job.alpha, shuffled=True)
    correct, correct_shuf = _score(job, model, label, sol, sol_shuf)
    n_test = torch.tensor([float(t.sum()) for t in plan.test], dtype=torch.float64)
    out = PassResult(accuracy=(correct / n_test).float(), shuffled=(correct_shuf / n_test).float())
    if main:
        out.weights, out.bias, out.alpha = _stack(job, sol)
        if chosen:
            out.choices = [
                [l, st, job.offsets[k], chosen[job.key(l, st, k)]]
                for l in job.layers for st in job.streams for k in range(len(job.offsets))
            ]
    return out


def _choose_auto(
    job: ProbeJob,
    model: HookedTransformer,
    label: str,
    moments: dict[tuple, Moments],
    shuffled: list[Tensor] | None,
) -> dict[tuple, str]:
    """Per probe, the candidate rule with the most validation hits (ties: the first candidate).

    The candidates are fitted on the fit rows already in ``moments`` and scored on the
    validation rows, which are then added to ``moments`` so that the final probe uses every
    training row. Keys ``("shuffled",) + key`` hold the choice for the shuffled-label control.
    """
    plan = job.plan
    cands = {
        key: {
            c: (_working(job, mom.solve(c, job.alpha)), _working(job, mom.solve(c, job.alpha, shuffled=True)) if shuffled is not None else None)
            for c in AUTO_CANDIDATES
        }
        for key, mom in moments.items()
    }
    hits = {key: {c: [0.0, 0.0] for c in AUTO_CANDIDATES} for key in moments}

    # alone, validation rows go straight into the fit moments; under torch.distributed they are
    # summed over ranks first, then added (every rank holds the reduced fit moments already)
    distributed = world()[1] > 1
    extra: dict[tuple, Moments] = {} if distributed else moments

    def validate(idx: Tensor, store: dict[tuple[int, str], Tensor]) -> None:
        _count_validation_hits(job, cands, hits, idx, store)
        accumulate(extra, idx, store, job.val_rows, plan.target, shuffled, job.key, job.n_classes, job.tokens.device)

    job.run(model, sequences_with_rows(job.val_rows), f"probe validation ({label})", validate)
    if distributed:
        job.reduce_moments(extra)
        for key, mom in extra.items():
            moments.setdefault(key, Moments(job.d_model, job.n_classes, job.tokens.device)).add_moments(mom)
    if distributed:  # every rank's validation hits
        keys = list(hits)
        flat = all_reduce_sum(torch.tensor([hits[k][c][i] for k in keys for c in AUTO_CANDIDATES for i in (0, 1)],
                                           dtype=torch.float64))
        it = iter(flat.tolist())
        for k in keys:
            for c in AUTO_CANDIDATES:
                hits[k][c] = [next(it), next(it)]
    chosen: dict[tuple, str] = {}
    for key in moments:
        chosen[key] = max(AUTO_CANDIDATES, key=lambda c: hits[key][c][0])
        chosen[("shuffled",) + key] = max(AUTO_CANDIDATES, key=lambda c: hits[key][c][1])
    return chosen


def _count_validation_hits(
    job: ProbeJob,
    cands: dict[tuple, dict[str, tuple[Linear, Linear | None]]],
    hits: dict[tuple, dict[str, list[float]]],
    idx: Tensor,
    store: dict[tuple[int, str], Tensor],
) -> None:
    """Add one batch's validation hits of every candidate (true and shuffled labels) to ``hits``."""
    plan = job.plan
    for (l, s), act in store.items():
        for k in range(len(job.offsets)):
            mask = job.val_rows[k][idx]
            key = job.key(l, s, k)
            if not bool(mask.any()) or key not in cands:
                continue
            x = act[mask].to(job.act_dtype)
            y, ys = plan.target[k][idx][mask], plan.shuffled[k][idx][mask]
            for c, (sol_c, shuf_c) in cands[key].items():
                hits[key][c][0] += _hits(sol_c, x, y)
                if shuf_c is not None:
                    hits[key][c][1] += _hits(shuf_c, x, ys)


def _score(
    job: ProbeJob,
    model: HookedTransformer,
    label: str,
    sol: dict[tuple, Solution],
    sol_shuf: dict[tuple, Solution],
) -> tuple[Tensor, Tensor]:
    """Held-out hits of every probe (and of its shuffled-label twin) in one streaming pass."""
    correct = torch.zeros(*job.shape, dtype=torch.float64)
    correct_shuf = torch.zeros(*job.shape, dtype=torch.float64)
    work = {key: _working(job, s) for key, s in sol.items()}
    work_shuf = {key: _working(job, s) for key, s in sol_shuf.items()}
    job.run(
        model, job.test_seqs, f"probe score ({label})",
        lambda idx, store: _add_test_hits(job, work, work_shuf, correct, correct_shuf, idx, store),
    )
    return all_reduce_sum(correct), all_reduce_sum(correct_shuf)


def _add_test_hits(
    job: ProbeJob,
    work: dict[tuple, Linear],
    work_shuf: dict[tuple, Linear],
    correct: Tensor,
    correct_shuf: Tensor,
    idx: Tensor,
    store: dict[tuple[int, str], Tensor],
) -> None:
    plan = job.plan
    for (l, s), act in store.items():
        i, j = job.index(l, s)
        for k in range(len(job.offsets)):
            mask = plan.test[k][idx]
            if not bool(mask.any()):
                continue
            x = act[mask].to(job.act_dtype)
            y = plan.target[k][idx][mask]
            correct[i, j, k] += _hits(work[job.key(l, s, k)], x, y)
            if work_shuf:
                correct_shuf[i, j, k] += _hits(work_shuf[job.key(l, s, k)], x, y)


def _stack(job: ProbeJob, sol: dict[tuple, Solution]) -> tuple[Tensor, Tensor, Tensor]:
    """Weights ``[L, S, O, d, C]``, biases ``[L, S, O, C]`` and alphas ``[L, S, O]`` (float32, CPU)."""
    W = torch.zeros(*job.shape, job.d_model, job.n_classes)
    B = torch.zeros(*job.shape, job.n_classes)
    A = torch.zeros(*job.shape)
    for i, l in enumerate(job.layers):
        for j, s in enumerate(job.streams):
            for k in range(len(job.offsets)):
                w, b, a = sol[job.key(l, s, k)]
                W[i, j, k], B[i, j, k], A[i, j, k] = w.float().cpu(), b.float().cpu(), a
    return W, B, A


# --------------------------------------------------------------------------- logistic


def fit_logistic_pass(job: ProbeJob, model: HookedTransformer, label: str, *, main: bool) -> PassResult:
    """Collect the activations of every probed stream, fit logistic probes full batch, score them.

    ``job.method`` picks the solver: ``"logistic"`` (:func:`fit_logistic`) or
    ``"fast-logistic"`` (:func:`fit_logistic_whitened`); both get ``job.max_iter``.

    Args:
        job, model, label, main: As for :func:`fit_closed_form`.

    Returns:
        A :class:`PassResult` with held-out cross-entropy.

    Example:
        :func:`~lensworks.probes.probe_inputs` builds the job and calls this for the logistic methods:

        >>> from lensworks.probes import probe_inputs
        >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8))
        >>> probe_inputs(model, tokens, offsets=(0,), method="fast-logistic", controls=False).accuracy.shape
        torch.Size([2, 2, 1])
    """
    plan, C, device = job.plan, job.n_classes, job.tokens.device
    feats = {key: torch.zeros(*job.tokens.shape, job.d_model, device=device) for key in job.hooks.values()}
    every = torch.arange(job.tokens.shape[0], device=device)
    job.run(model, every, f"probe features ({label})", lambda idx, store: _store_features(feats, idx, store))
    feats = {key: all_reduce_sum(f) for key, f in feats.items()}  # each rank filled its own rows; the rest are 0
    acc = torch.zeros(*job.shape)
    acc_shuf = torch.zeros(*job.shape)
    ce = torch.zeros(*job.shape)
    W = torch.zeros(*job.shape, job.d_model, C)
    B = torch.zeros(*job.shape, C)
    solver = fit_logistic if job.method == "logistic" else fit_logistic_whitened
    groups = [[(l, s)] for l in job.layers for s in job.streams] if not job.shared else [list(job.hooks.values())]
    for k in range(len(job.offsets)):
        tr, te = plan.train[k], plan.test[k]
        y_tr, y_te, ys_tr = plan.target[k][tr], plan.target[k][te], plan.shuffled[k][tr]
        for group in groups:
            x_tr = torch.cat([feats[g][tr] for g in group])
            fit = solver
            if solver is fit_logistic_whitened:  # one whitening for the probe and its control
                fit = functools.partial(fit_logistic_whitened, whitening=whiten(x_tr))
            w, b = fit(x_tr, y_tr.repeat(len(group)), C, job.max_iter)
            ws = bs = None
            if job.controls and main:
                ws, bs = fit(x_tr, ys_tr.repeat(len(group)), C, job.max_iter)
            for l, s in group:
                i, j = job.index(l, s)
                x_te = feats[(l, s)][te]
                acc[i, j, k], ce[i, j, k] = _evaluate(w, b, x_te, y_te)
                W[i, j, k], B[i, j, k] = w.cpu(), b.cpu()
                if ws is not None:
                    acc_shuf[i, j, k] = _evaluate(ws, bs, x_te, y_te)[0]
    out = PassResult(accuracy=acc, shuffled=acc_shuf, cross_entropy=ce)
    if main:
        out.weights, out.bias, out.alpha = W, B, torch.full(job.shape, float("nan"))
    return out


def _store_features(feats: dict[tuple[int, str], Tensor], idx: Tensor, store: dict[tuple[int, str], Tensor]) -> None:
    for key, act in store.items():
        feats[key][idx] = act.float()


def _evaluate(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``logits = x @ w + b`` against ``y``."""
    logits = x @ w + b
    return float((logits.argmax(-1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))
