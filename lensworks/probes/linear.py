"""Per-layer linear probes that read the input tokens back out of the residual stream.

``probe_inputs`` answers "which of the last few input tokens can a linear map still recover
from the activation at this layer and stream?". Five fitting methods share one data pipeline:

* ``"ridge"``: least squares onto one-hot targets with an L2 penalty. Every probe is solved
  in closed form from moments accumulated in a single streaming pass over the training
  sequences (``sum x``, ``X^T X``, ``X^T Y``, class counts), so no activation is kept in memory.
  The intercept is handled by centring, and the penalty is chosen per probe by generalised
  cross-validation (GCV), which is also computable from those moments alone.
* ``"lda"``: the same moments, classified by linear discriminant analysis (shared, shrunk
  within-class covariance). Same cost as ``"ridge"``; with many classes it ranks them much
  better than least squares onto one-hot targets does (see ``docs/probes.md``).
* ``"auto"``: per probe, whichever of ``"lda"`` and ``"ridge"`` scores better on a
  validation slice of the training sequences, refitted on all of them.
* ``"logistic"``: multinomial logistic regression on the same features, fitted full batch
  with L-BFGS in torch (standardised features, scikit-learn's default penalty ``C = 1``).
  It keeps the activations of every probed stream in memory.
* ``"fast-logistic"`` (the default): the same objective, minimised in whitened coordinates
  from a scaled LDA start with a few (default 10) L-BFGS steps; on the benchmarks within 0.4
  points of scikit-learn's held-out accuracy on every probe at 1/15 to 1/28 of its time (see
  ``docs/benchmarks.md``). Keeps the activations in memory like ``"logistic"``.

Held-out sequences are then streamed once more to measure accuracy. Two controls are computed
the same way: the probe on a randomly initialised copy of the model (same config, fixed seed),
and the probe trained on shuffled labels.

The work is split across private modules: :mod:`~lensworks.probes._data` (tokens, split,
targets, batched capture), :mod:`~lensworks.probes._moments` (streaming moments),
:mod:`~lensworks.probes._solvers` (ridge, LDA and logistic fits) and
:mod:`~lensworks.probes._fitting` (the passes over the data). This module holds the
orchestration: argument checks, :func:`probe_inputs` and :class:`ProbeResults`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._constants import PROBE_METHODS
from lensworks._results import Reference, Result, require_finite, to_jsonable
from lensworks.model import (
    HookedTransformer, LensworksError, bos_token_id, check_float, check_int, check_layer, hook_name,
    processing_state, random_copy, model_facts,
)
from lensworks.probes._data import Data, make_plan, model_tokens, sequences_with_rows, validation_rows
from lensworks.probes._fitting import ProbeJob, fit_closed_form, fit_logistic_pass
from lensworks.probes._solvers import FAST_LOGISTIC_ITER, LDA_ALPHA, RIDGE_GRID, lda_from_moments, ridge_from_moments
from lensworks.probes._streams import DEFAULT_STREAMS, resolve_streams

__all__ = [
    "ProbeResults",
    "probe_inputs",
    "ridge_from_moments",
    "lda_from_moments",
    "DEFAULT_STREAMS",
    "model_tokens",
]

#: Accepted ``method`` values of :func:`probe_inputs` (the first is the default).
METHODS: tuple[str, ...] = PROBE_METHODS

#: Former private name of :func:`~lensworks.probes._data.make_plan` (benchmarks import it from here).
_plan = make_plan


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class ProbeResults(Result):
    """Held-out accuracy of linear probes for the input token at each layer, stream and offset.

    Attributes:
        layers: Probed layers, in order.
        streams: Probed streams (``resid_pre``, ``resid_mid``, ``resid_post``, ...).
        offsets: Input offsets (0: the token at this position, -1: the previous one, ...).
        accuracy: Held-out top-1 accuracy, ``[n_layers, n_streams, n_offsets]``.
        chance: Accuracy of always predicting the most frequent training token, per offset.
        control_random_model: Accuracy of the same probe on a randomly initialised copy of
            the model (NaN when controls were off).
        control_shuffled: Accuracy of the same probe fitted on shuffled training labels and
            scored on the true held-out labels (NaN when controls were off).
        cross_entropy: Held-out mean cross-entropy in nats (``"logistic"`` and
            ``"fast-logistic"`` only, else None).
        alpha: Relative ridge penalty (or LDA shrinkage) of each probe (NaN for the logistic methods).
        classes: Token ids of the probe's output columns (every token seen as a target).
        probe_weights: ``[n_layers, n_streams, n_offsets, d_model, n_classes]``;
            ``logits = x @ W + b`` in TransformerLens's row-vector convention.
        probe_bias: ``[n_layers, n_streams, n_offsets, n_classes]``.
        n_train: Training rows per offset.
        n_test: Held-out rows per offset.
        method: ``"ridge"``, ``"lda"``, ``"auto"``, ``"logistic"`` or ``"fast-logistic"``.
        shared: Whether one probe per offset was shared by every layer and stream.
        options: The other options used.
        processing: The model's weight-processing state.

    :meth:`references` gives ``chance`` and the two controls as
    :class:`~lensworks._results.Reference` values.
    """

    layers: tuple[int, ...]
    streams: tuple[str, ...]
    offsets: tuple[int, ...]
    accuracy: Float[Tensor, "n_layers n_streams n_offsets"]
    chance: Float[Tensor, "n_offsets"]
    control_random_model: Float[Tensor, "n_layers n_streams n_offsets"]
    control_shuffled: Float[Tensor, "n_layers n_streams n_offsets"]
    cross_entropy: Float[Tensor, "n_layers n_streams n_offsets"] | None
    alpha: Float[Tensor, "n_layers n_streams n_offsets"]
    classes: Int[Tensor, "n_classes"]
    probe_weights: Float[Tensor, "n_layers n_streams n_offsets d_model n_classes"]
    probe_bias: Float[Tensor, "n_layers n_streams n_offsets n_classes"]
    n_train: tuple[int, ...]
    n_test: tuple[int, ...]
    method: str
    shared: bool
    options: dict[str, Any]
    processing: dict[str, Any]

    def _index(self, layer: int, stream: str, offset: int) -> tuple[int, int, int]:
        if layer not in self.layers:
            raise LensworksError(f"layer {layer} was not probed; probed layers are {list(self.layers)}")
        if stream not in self.streams:
            raise LensworksError(f"stream {stream!r} was not probed; probed streams are {list(self.streams)}")
        if offset not in self.offsets:
            raise LensworksError(f"offset {offset} was not probed; probed offsets are {list(self.offsets)}")
        return self.layers.index(layer), self.streams.index(stream), self.offsets.index(offset)

    def weights(self, layer: int, stream: str, offset: int) -> Float[Tensor, "d_model n_classes"]:
        """The probe matrix for one (layer, stream, offset); columns follow ``classes``.

        Example:
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> res.weights(0, "resid_pre", 0).shape[1] == len(res.classes)
            True
        """
        i, j, k = self._index(layer, stream, offset)
        return self.probe_weights[i, j, k]

    def bias(self, layer: int, stream: str, offset: int) -> Float[Tensor, "n_classes"]:
        """The probe intercept for one (layer, stream, offset).

        Example:
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> res.bias(0, "resid_pre", 0).shape == res.classes.shape
            True
        """
        i, j, k = self._index(layer, stream, offset)
        return self.probe_bias[i, j, k]

    def to_frame(self):
        """One row per (layer, stream, offset) with accuracy, chance and the controls.

        Example:
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> list(res.to_frame().columns)[:4]
            ['layer', 'stream', 'offset', 'accuracy']
        """
        import pandas as pd

        rows = []
        for i, layer in enumerate(self.layers):
            for j, stream in enumerate(self.streams):
                for k, offset in enumerate(self.offsets):
                    row = {
                        "layer": layer,
                        "stream": stream,
                        "offset": offset,
                        "accuracy": float(self.accuracy[i, j, k]),
                        "chance": float(self.chance[k]),
                        "control_random_model": float(self.control_random_model[i, j, k]),
                        "control_shuffled": float(self.control_shuffled[i, j, k]),
                    }
                    if self.cross_entropy is not None:
                        row["cross_entropy"] = float(self.cross_entropy[i, j, k])
                    rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self, include_weights: bool = False) -> dict[str, Any]:
        """JSON-ready dict; probe weights are left out unless ``include_weights``.

        Example:
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> "accuracy" in res.to_dict()
            True
        """
        skip = set() if include_weights else {"probe_weights", "probe_bias"}
        return {
            f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip
        }

    def caption(self) -> str:
        """What the probes recover and what they are compared with."""
        return ("Linear probes that recover the input token at each offset from the residual stream, per layer and "
                "stream: held-out top-1 accuracy beside chance (most frequent token), a randomly initialised copy of "
                "the model, and labels shuffled during training.")

    def references(self) -> dict[str, Reference]:
        """``chance`` (one exact level per offset) and, when they were computed, the controls
        ``control_random_model`` and ``control_shuffled`` (one value per layer, stream, offset)."""
        out = {**super().references(), "chance": Reference.exact(self.chance.float(), kind="chance")}
        for name, label in (("control_random_model", "random-model control"), ("control_shuffled", "shuffled-label control")):
            values = getattr(self, name)
            if bool(torch.isfinite(values).all()):
                out[name] = Reference(mean=values.float(), kind="control", label=label)
        return out

    def headline(self) -> str | None:
        """How well the current token reads back at the first and the last layer (offset 0 only)."""
        if 0 not in self.offsets:
            return None
        k = self.offsets.index(0)
        first, last = self.accuracy[0, 0, k], self.accuracy[-1, -1, k]
        chance = self.references()["chance"].at(k)
        return (f"Current input token read back linearly: {float(first):.0%} at layer {self.layers[0]} {self.streams[0]}, "
                f"{float(last):.0%} at layer {self.layers[-1]} {self.streams[-1]} ({chance.describe('.0%')}).")

    def figure(self):
        """Held-out accuracy against depth: one line per offset, controls dashed/dotted.

        Example:
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (16, 8), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> fig = res.figure()
        """
        from lensworks.probes._plots import probe_accuracy_figure

        return probe_accuracy_figure(self)

# --------------------------------------------------------------------------- public entry


def _check_cache(cache: Any, tokens: Tensor, names: Sequence[str]) -> None:
    """A user's ActivationCache must hold every probed hook for exactly these token rows."""
    from lensworks._dist import is_distributed

    if is_distributed():
        raise LensworksError("cache: under torch.distributed pass tokens, not an activation cache (it belongs to one process)")
    if not hasattr(cache, "keys"):
        raise LensworksError(f"cache: expected an ActivationCache or a {{hook: tensor}} dict, got {type(cache).__name__}")
    for name in names:
        if name not in cache.keys():
            raise LensworksError(f"cache has no {name}; cache it (model.run_with_cache(tokens) without a names_filter)")
        shape = tuple(cache[name].shape[:2])
        if shape != tuple(tokens.shape):
            raise LensworksError(f"cache: {name} has batch/pos {shape} but the tokens are {tuple(tokens.shape)}; "
                                 "pass the very token tensor the cache was computed from")


@adaptive_threads
def probe_inputs(
    model: HookedTransformer,
    data: Data,
    *,
    streams: Sequence[str] | None = None,
    offsets: Sequence[int] = (0, -1, -2),
    method: Literal["ridge", "lda", "auto", "logistic", "fast-logistic"] = "fast-logistic",
    shared: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    alpha: float | None = None,
    controls: bool = True,
    max_iter: int | None = None,
    progress: bool | None = None,
    cache: Any = None,
) -> ProbeResults:
    """Fit linear probes that recover input tokens from the residual stream, layer by layer.

    For every layer ``l``, stream ``s`` and offset ``o``, a linear map reads the activation
    at position ``p`` and predicts the input token at position ``p + o`` (``o = 0``: the
    token itself; ``o = -1``: the previous token). Positions whose target lies outside the
    sequence are left out, and so are targets that are the BOS token. Sequences (or, for a
    single sequence, positions) are split at random into training and held-out parts.

    Fitting methods:
        ``"ridge"`` fits ``min ||Y - XW - b||^2 + lam ||W||^2`` onto one-hot targets in closed
        form from moments accumulated in one streaming pass (see :func:`ridge_from_moments`);
        the penalty is chosen per probe by generalised cross-validation unless ``alpha``
        fixes it. ``"lda"`` uses the same moments with the linear-discriminant decision rule
        (see :func:`lda_from_moments`; ``alpha`` is its covariance shrinkage, default
        :data:`LDA_ALPHA`); as cheap as ridge and usually as accurate as logistic. ``"auto"``
        fits both closed forms on 80% of the training sequences, keeps for each probe the one
        with the higher accuracy on the other 20% (``options["auto_choices"]``), and refits it
        on all training rows; same single forward pass. ``"logistic"`` fits multinomial
        logistic regression by full-batch L-BFGS (scikit-learn's objective with ``C = 1`` on
        standardised features) and also reports held-out cross-entropy; it keeps all
        activations of the probed streams in memory. ``"fast-logistic"``
        minimises the same objective in whitened coordinates from a scaled LDA start with
        ``max_iter`` (default :data:`FAST_LOGISTIC_ITER` = 10) L-BFGS steps (see
        :func:`~lensworks.probes._solvers.fit_logistic_whitened`): about scikit-learn's held-out
        accuracy at a small part of its cost; same memory use as ``"logistic"``.

    Controls (``controls=True``): the same probe on a randomly initialised copy of the model
    (same config, weights drawn with ``seed``; the given model is never touched) and the same
    probe fitted on training labels shuffled across rows, scored on the true held-out labels.
    ``chance`` is the held-out accuracy of always answering the most frequent training token.

    Args:
        model: The model to probe.
        data: Strings (each tokenized on its own; BOS prepended as the model does) or a
            ``[batch, pos]`` token tensor.
        streams: Residual streams to probe; ``attn_out`` and ``mlp_out`` also work. None
            (the default) means the model's default streams: :data:`DEFAULT_STREAMS`
            (``resid_pre``, ``resid_mid``, ``resid_post``) less ``resid_mid`` on models
            without one (attention-only and parallel-block models), which is recorded in
            ``options["skipped_streams"]``. An explicit value is taken as given, even one
            equal to :data:`DEFAULT_STREAMS`: asking for ``resid_mid`` on such a model is an
            error. Where the model has every default stream, both give the same result.
        offsets: Which input token to recover, relative to the position (0, -1, -2, ...).
        method: ``"fast-logistic"`` (default), ``"ridge"``, ``"lda"``, ``"auto"`` or ``"logistic"``.
            The closed forms (``"ridge"``, ``"lda"``, ``"auto"``) stream moments and never hold
            the activations: use them when the probed streams of all the data do not fit in memory.
        shared: Fit one probe per offset on the pooled activations of every probed layer and
            stream (then scored at each of them), instead of one per (layer, stream, offset).
        test_fraction: Share of sequences held out (of positions for a single sequence).
        seed: Seed of the split, the label shuffle and the random-model control.
        batch_size: Sequences per forward pass.
        layers: Layers to probe (default all).
        alpha: Fixed relative ridge penalty (``lam = alpha * trace(X_c^T X_c) / d_model``);
            None chooses it by GCV. For ``"lda"``: the relative covariance shrinkage.
        controls: Compute the random-model and shuffled-label controls.
        max_iter: L-BFGS iterations of the logistic methods; None: 100 for ``"logistic"``,
            :data:`FAST_LOGISTIC_ITER` for ``"fast-logistic"``.
        progress: Show progress bars (None: only on a terminal).
        cache: Activations already cached for ``data`` (an ``ActivationCache`` from
            ``model.run_with_cache(tokens)`` or a ``{hook: tensor}`` dict; ``data`` must then be
            that token tensor, which gives the labels). The model is not run again; the
            random-model control still runs its own copy.

    Returns:
        A :class:`ProbeResults`.

    Example:
        >>> tokens = torch.randint(1, model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
        >>> res = probe_inputs(model, tokens, offsets=(0, -1), method="ridge")
        >>> res.to_frame()[["layer", "stream", "offset", "accuracy"]].round(2)
           layer      stream  offset  accuracy
        0      0   resid_pre       0      0.85
        1      0   resid_pre      -1      0.00
        2      0  resid_post       0      0.72
        3      0  resid_post      -1      0.10
        4      1   resid_pre       0      0.72
        5      1   resid_pre      -1      0.10
        6      1  resid_post       0      0.14
        7      1  resid_post      -1      0.01
        >>> bool(res.to_frame()["control_random_model"].notna().all())  # the same probes on a random copy
        True
    """
    if method not in METHODS:
        raise LensworksError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if max_iter is None:
        max_iter = FAST_LOGISTIC_ITER if method == "fast-logistic" else 100
    max_iter = check_int(max_iter, "max_iter", low=0)
    test_fraction = check_float(test_fraction, "test_fraction", low=0, high=1, inclusive=False)
    batch_size = check_int(batch_size, "batch_size", low=1)
    seed = check_int(seed, "seed")
    if alpha is not None:
        alpha = check_float(alpha, "alpha", low=0)
    streams, skipped = resolve_streams(model, streams)
    offsets = _check_offsets(offsets)
    layer_list = _check_layers(model, layers)

    tokens, lengths = model_tokens(model, data)
    if cache is not None:
        _check_cache(cache, tokens, [hook_name(s, l) for l in layer_list for s in streams])
    max_len = int(lengths.max())
    for o in offsets:
        if abs(o) >= max_len:
            raise LensworksError(
                f"offset {o} reaches beyond every sequence: the longest holds {max_len} tokens, "
                f"so offsets must satisfy |offset| < {max_len}"
            )
    plan = make_plan(tokens, lengths, offsets, bos_token_id(model), float(test_fraction), seed)
    stop_at = max(layer_list) + 1
    job = ProbeJob(
        tokens=tokens,
        plan=plan,
        layers=layer_list,
        streams=streams,
        offsets=offsets,
        hooks={hook_name(s, l): (l, s) for l in layer_list for s in streams},
        stop_at=None if stop_at >= model.cfg.n_layers else stop_at,
        method=method,
        shared=bool(shared),
        alpha=alpha,
        controls=controls,
        batch_size=batch_size,
        max_iter=max_iter,
        progress=progress,
        d_model=model.cfg.d_model,
        act_dtype=model_facts(model).working_dtype,
        val_rows=validation_rows(plan, seed) if method == "auto" else [],
        test_seqs=sequences_with_rows(plan.test),
        cache=cache,
        cache_model=model if cache is not None else None,
    )
    fit = fit_logistic_pass if method in ("logistic", "fast-logistic") else fit_closed_form
    main = fit(job, model, "model", main=True)
    nan = torch.full(job.shape, float("nan"))
    ctrl_random, ctrl_shuf = nan, nan
    if controls:
        ctrl_random = fit(job, random_copy(model, seed), "random model", main=False).accuracy
        ctrl_shuf = main.shuffled
    require_finite("probe accuracy", main.accuracy)
    require_finite("probe weights", main.weights)
    return ProbeResults(
        layers=layer_list,
        streams=streams,
        offsets=offsets,
        accuracy=main.accuracy,
        chance=torch.tensor(plan.chance),
        control_random_model=ctrl_random,
        control_shuffled=ctrl_shuf,
        cross_entropy=main.cross_entropy,
        alpha=main.alpha,
        classes=plan.classes.cpu(),
        probe_weights=main.weights,
        probe_bias=main.bias,
        n_train=tuple(int(t.sum()) for t in plan.train),
        n_test=tuple(int(t.sum()) for t in plan.test),
        method=method,
        shared=bool(shared),
        options={
            "test_fraction": float(test_fraction),
            "seed": seed,
            "batch_size": batch_size,
            "alpha": alpha,
            "controls": controls,
            "split": plan.split,
            "skipped_streams": skipped,
            "n_sequences": int(tokens.shape[0]),
            "max_iter": max_iter if method in ("logistic", "fast-logistic") else None,
            "ridge_grid": list(RIDGE_GRID) if method == "ridge" and alpha is None else None,
            "lda_alpha": (LDA_ALPHA if alpha is None else alpha) if method in ("lda", "auto") else None,
            "auto_choices": main.choices,
        },
        processing=processing_state(model),
    )


def _check_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    offsets = tuple(offsets)
    if not offsets:
        raise LensworksError("offsets is empty; expected integers such as (0, -1, -2)")
    for o in offsets:
        if not isinstance(o, int) or isinstance(o, bool):
            raise LensworksError(f"offsets must be ints, got {o!r}")
    if len(set(offsets)) != len(offsets):
        raise LensworksError(f"offsets has repeated entries: {list(offsets)}")
    return offsets


def _check_layers(model: HookedTransformer, layers: Sequence[int] | None) -> tuple[int, ...]:
    layer_list = tuple(range(model.cfg.n_layers)) if layers is None else tuple(check_layer(model, l) for l in layers)
    if not layer_list:
        raise LensworksError("layers is empty; expected at least one layer index")
    if len(set(layer_list)) != len(layer_list):
        raise LensworksError(f"layers has repeated entries: {list(layer_list)}")
    return layer_list
