"""Per-layer linear probes that read the input tokens back out of the residual stream.

``probe_inputs`` answers "which of the last few input tokens can a linear map still recover
from the activation at this layer and stream?". Two fitting methods share one data pipeline:

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

Held-out sequences are then streamed once more to measure accuracy. Two controls are computed
the same way: the probe on a randomly initialised copy of the model (same config, fixed seed),
and the probe trained on shuffled labels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._results import ResultMixin, require_finite, to_jsonable
from lensworks.model._compat import capture_hooks
from lensworks.model import (
    HookedTransformer,
    LensworksError,
    as_tokens,
    bos_token_id,
    check_layer,
    hook_name,
    missing_stream_error,
    model_streams,
    processing_state,
    random_copy,
)

__all__ = [
    "ProbeResults",
    "probe_inputs",
    "ridge_from_moments",
    "lda_from_moments",
    "DEFAULT_STREAMS",
    "model_tokens",
]

#: The streams probed by default. ``resid_mid`` is dropped from the default for models that
#: have no MLP (attention-only or parallel attention/MLP blocks), where it is never computed.
DEFAULT_STREAMS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

_STREAMS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Where each stream sits along the residual stream of its block (for plots).
STREAM_DEPTH = {"resid_pre": 0.0, "attn_out": 0.4, "resid_mid": 0.5, "mlp_out": 0.9, "resid_post": 1.0}

#: Relative ridge penalties searched by GCV: lambda = a * trace(X_c^T X_c) / d_model.
RIDGE_GRID: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

Data = Union[str, Sequence[str], Tensor]


# --------------------------------------------------------------------------- ridge algebra


def ridge_from_moments(
    n: int,
    sum_x: Float[Tensor, "d"],
    gram: Float[Tensor, "d d"],
    xty: Float[Tensor, "d c"],
    counts: Float[Tensor, "c"],
    alpha: float | None = None,
    grid: Sequence[float] = RIDGE_GRID,
) -> tuple[Float[Tensor, "d c"], Float[Tensor, "c"], float]:
    """Solve a ridge regression onto one-hot targets from accumulated moments.

    Minimises ``||Y - X W - 1 b^T||_F^2 + lam ||W||_F^2`` (the intercept ``b`` is not
    penalised) with ``lam = alpha * trace(X_c^T X_c) / d`` where ``X_c`` is ``X`` centred.
    With ``mu = sum_x / n``: ``X_c^T X_c = gram - n mu mu^T`` and
    ``X_c^T Y_c = xty - mu counts^T``. One symmetric eigendecomposition ``X_c^T X_c = Q L Q^T``
    gives the solution for every penalty at once, ``W = Q (L + lam)^-1 Q^T X_c^T Y_c``.

    When ``alpha`` is None it is chosen from ``grid`` by generalised cross-validation,
    ``GCV(lam) = n RSS(lam) / (n - df(lam))^2`` with ``df = 1 + sum_i L_i / (L_i + lam)`` and
    ``RSS = tr(Y_c^T Y_c) - sum_i c_i (L_i + 2 lam) / (L_i + lam)^2`` where ``c_i`` is the squared
    norm of row ``i`` of ``Q^T X_c^T Y_c``. Everything comes from the moments; no data is needed.

    Args:
        n: Number of rows.
        sum_x: Column sums of ``X``.
        gram: ``X^T X``.
        xty: ``X^T Y`` (``Y`` one-hot, so column ``k`` is the sum of rows of class ``k``).
        counts: Rows per class (the column sums of ``Y``).
        alpha: Relative penalty, or None for the GCV choice.
        grid: Relative penalties searched by GCV.

    Returns:
        ``(W, b, alpha)``: weights ``[d, c]``, intercept ``[c]`` and the relative penalty used.

    Example:
        >>> X = torch.randn(50, 4, dtype=torch.float64); y = torch.randint(0, 3, (50,))
        >>> Y = torch.nn.functional.one_hot(y, 3).double()
        >>> W, b, a = ridge_from_moments(50, X.sum(0), X.T @ X, X.T @ Y, Y.sum(0), alpha=0.0)
        >>> W.shape, b.shape
        (torch.Size([4, 3]), torch.Size([3]))
    """
    if n < 1:
        raise LensworksError(f"ridge needs at least one row, got n={n}")
    dtype = torch.float64
    sum_x, gram, xty, counts = (t.to(dtype) for t in (sum_x, gram, xty, counts))
    d = gram.shape[0]
    mu = sum_x / n
    gc = gram - n * torch.outer(mu, mu)
    gc = (gc + gc.T) / 2
    bc = xty - torch.outer(mu, counts)
    evals, evecs = torch.linalg.eigh(gc)
    evals = evals.clamp_min(0.0)
    cm = evecs.T @ bc  # [d, c]
    scale = float(evals.sum()) / d
    if scale <= 0:
        scale = 1.0
    if alpha is None:
        tyy = float(counts.sum() - (counts**2).sum() / n)
        c = (cm**2).sum(1)
        best, best_alpha = math.inf, float(grid[0])
        for a in grid:
            lam = a * scale
            denom = evals + lam
            rss = tyy - float((c * (evals + 2 * lam) / denom**2).sum())
            df = 1.0 + float((evals / denom).sum())
            gcv = n * max(rss, 0.0) / max(n - df, 1e-12) ** 2
            if gcv < best:
                best, best_alpha = gcv, float(a)
        alpha = best_alpha
    lam = float(alpha) * scale
    denom = evals + lam
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    inv = torch.where(denom > 1e-12 * max(float(evals.max()), 1e-300), 1.0 / safe, torch.zeros_like(denom))
    w = evecs @ (inv[:, None] * cm)
    b = counts / n - mu @ w
    return w, b, float(alpha)


#: Default relative shrinkage of the within-class covariance for ``method="lda"``.
LDA_ALPHA = 1e-3


def lda_from_moments(
    n: int,
    sum_x: Float[Tensor, "d"],
    gram: Float[Tensor, "d d"],
    xty: Float[Tensor, "d c"],
    counts: Float[Tensor, "c"],
    alpha: float | None = None,
) -> tuple[Float[Tensor, "d c"], Float[Tensor, "c"], float]:
    """Linear discriminant analysis (shared covariance) from the same moments as the ridge.

    With class means ``m_k = xty[:, k] / n_k``, overall mean ``mu``, between-class scatter
    ``S_b = sum_k n_k (m_k - mu)(m_k - mu)^T`` and within-class covariance
    ``S_w = (X_c^T X_c - S_b) / n``, shrunk as ``S = S_w + lam I`` with
    ``lam = alpha * trace(S_w) / d``, the discriminant of class ``k`` is
    ``x^T S^-1 (m_k - mu) - (m_k - mu)^T S^-1 (m_k - mu) / 2 - mu^T S^-1 (m_k - mu) + log(n_k / n)``,
    linear in ``x``. Least squares onto one-hot targets spans the same discriminant subspace
    but ranks classes worse when there are many of them (Hastie, Tibshirani & Friedman,
    "masking"); this rule fixes that at the cost of one more ``d x d`` solve. Classes never
    seen in training get a bias of ``-1e9`` (never predicted).

    Args:
        n: Number of rows.
        sum_x: Column sums of ``X``.
        gram: ``X^T X``.
        xty: ``X^T Y`` (class sums as columns).
        counts: Rows per class.
        alpha: Relative shrinkage (default :data:`LDA_ALPHA`).

    Returns:
        ``(W, b, alpha)`` with ``logits = x @ W + b``.

    Example:
        >>> X = torch.randn(50, 4, dtype=torch.float64); y = torch.randint(0, 3, (50,))
        >>> Y = torch.nn.functional.one_hot(y, 3).double()
        >>> W, b, a = lda_from_moments(50, X.sum(0), X.T @ X, X.T @ Y, Y.sum(0))
        >>> W.shape
        torch.Size([4, 3])
    """
    if n < 1:
        raise LensworksError(f"lda needs at least one row, got n={n}")
    alpha = LDA_ALPHA if alpha is None else float(alpha)
    f64 = torch.float64
    sum_x, gram, xty, counts = (t.to(f64) for t in (sum_x, gram, xty, counts))
    d = gram.shape[0]
    mu = sum_x / n
    seen = counts > 0
    means = xty / counts.clamp_min(1.0)  # [d, c]
    mc = means - mu[:, None]
    gc = gram - n * torch.outer(mu, mu)
    sb = (mc * counts) @ mc.T
    sw = (gc - sb) / n
    sw = (sw + sw.T) / 2
    scale = float(torch.trace(sw)) / d
    if scale <= 0:
        scale = 1.0
    s = sw + (alpha * scale + 1e-12 * scale) * torch.eye(d, dtype=f64, device=sw.device)
    w = torch.linalg.solve(s, mc)
    b = -0.5 * (mc * w).sum(0) - mu @ w + torch.log(counts.clamp_min(1.0) / n)
    w = torch.where(seen[None, :], w, torch.zeros_like(w))
    b = torch.where(seen, b, torch.full_like(b, -1e9))
    return w, b, alpha


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class ProbeResults(ResultMixin):
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
        cross_entropy: Held-out mean cross-entropy in nats (logistic only, else None).
        alpha: Relative ridge penalty (or LDA shrinkage) of each probe (NaN for logistic).
        classes: Token ids of the probe's output columns (every token seen as a target).
        probe_weights: ``[n_layers, n_streams, n_offsets, d_model, n_classes]``;
            ``logits = x @ W + b`` in TransformerLens's row-vector convention.
        probe_bias: ``[n_layers, n_streams, n_offsets, n_classes]``.
        n_train: Training rows per offset.
        n_test: Held-out rows per offset.
        method: ``"ridge"``, ``"lda"``, ``"auto"`` or ``"logistic"``.
        shared: Whether one probe per offset was shared by every layer and stream.
        options: The other options used.
        processing: The model's weight-processing state.
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
            >>> res.weights(0, "resid_pre", 0).shape[1] == len(res.classes)
            True
        """
        i, j, k = self._index(layer, stream, offset)
        return self.probe_weights[i, j, k]

    def bias(self, layer: int, stream: str, offset: int) -> Float[Tensor, "n_classes"]:
        """The probe intercept for one (layer, stream, offset).

        Example:
            >>> res.bias(0, "resid_pre", 0).shape == res.classes.shape
            True
        """
        i, j, k = self._index(layer, stream, offset)
        return self.probe_bias[i, j, k]

    def to_frame(self):
        """One row per (layer, stream, offset) with accuracy, chance and the controls.

        Example:
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
            >>> "accuracy" in res.to_dict()
            True
        """
        skip = set() if include_weights else {"probe_weights", "probe_bias"}
        return {
            f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip
        }

    def figure(self):
        """Held-out accuracy against depth: one line per offset, controls dashed/dotted.

        Example:
            >>> fig = res.figure()
        """
        from lensworks.probes._plots import probe_accuracy_figure

        return probe_accuracy_figure(self)


# --------------------------------------------------------------------------- data preparation


def model_tokens(model: HookedTransformer, data: Data, *, what: str = "data") -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Tokens and lengths for strings (each tokenized on its own, right-padded) or a tensor.

    Right padding never changes the activations of real positions in a causal model, and the
    padded positions are masked out by their length.

    Example:
        >>> toks, lengths = model_tokens(model, ["ab", "abc"])
        >>> lengths.tolist()
        [3, 4]
    """
    if isinstance(data, Tensor):
        toks = as_tokens(model, data, what=what)
        return toks, torch.full((toks.shape[0],), toks.shape[1], dtype=torch.long, device=toks.device)
    if isinstance(data, str):
        data = [data]
    data = list(data)
    if not data:
        raise LensworksError(f"{what}: empty data set; expected at least one string or a [batch, pos] token tensor")
    rows = [as_tokens(model, s, what=what)[0] for s in data]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    toks = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = r
    return toks, lengths.to(toks.device)


@dataclasses.dataclass
class _Plan:
    """Which (sequence, position) rows train and test each offset, with their targets."""

    tokens: Tensor  # [n, P]
    train: list[Tensor]  # per offset, bool [n, P]
    test: list[Tensor]
    target: list[Tensor]  # per offset, class index [n, P] (-1 where invalid)
    shuffled: list[Tensor]  # per offset, shuffled class index on train rows
    classes: Tensor
    chance: list[float]
    split: str


def _plan(tokens: Tensor, lengths: Tensor, offsets: Sequence[int], bos: int | None, test_fraction: float, seed: int) -> _Plan:
    n, P = tokens.shape
    dev = tokens.device
    gen = torch.Generator().manual_seed(seed)
    pos = torch.arange(P, device=dev)[None, :].expand(n, P)
    inside = pos < lengths[:, None]
    max_len = int(lengths.max())
    if n >= 2:
        n_test = min(n - 1, max(1, round(test_fraction * n)))
        perm = torch.randperm(n, generator=gen)
        test_seq = torch.zeros(n, dtype=torch.bool)
        test_seq[perm[:n_test]] = True
        test_rows = test_seq.to(dev)[:, None].expand(n, P)
        split = "sequences"
    else:
        n_test = min(P - 1, max(1, round(test_fraction * P)))
        if P < 2:
            raise LensworksError("a single sequence of one token cannot be split into training and held-out positions")
        perm = torch.randperm(P, generator=gen)
        test_pos = torch.zeros(P, dtype=torch.bool)
        test_pos[perm[:n_test]] = True
        test_rows = test_pos.to(dev)[None, :].expand(n, P)
        split = "positions"
    valids, targets_tok = [], []
    for o in offsets:
        src = pos + o
        ok = inside & (src >= 0) & (src < lengths[:, None])
        tgt = tokens.gather(1, src.clamp(0, P - 1))
        if bos is not None:
            ok = ok & (tgt != bos)
        valids.append(ok)
        targets_tok.append(torch.where(ok, tgt, torch.full_like(tgt, -1)))
    all_t = torch.cat([t[v] for t, v in zip(targets_tok, valids)])
    classes = torch.unique(all_t) if all_t.numel() else torch.zeros(0, dtype=torch.long, device=dev)
    lut = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long, device=dev)
    lut[classes] = torch.arange(len(classes), device=dev)
    plan = _Plan(tokens, [], [], [], [], classes, [], split)
    for o, ok, tt in zip(offsets, valids, targets_tok):
        tr, te = ok & ~test_rows, ok & test_rows
        if int(tr.sum()) == 0 or int(te.sum()) == 0:
            raise LensworksError(
                f"offset {o} leaves {int(tr.sum())} training and {int(te.sum())} held-out positions "
                f"(sequences hold at most {max_len} tokens, BOS excluded as a target); "
                "pass longer or more sequences, or smaller offsets"
            )
        cls = torch.where(ok, lut[tt.clamp_min(0)], torch.full_like(tt, -1))
        y = cls[tr]
        shuf = torch.full_like(cls, -1)
        shuf[tr] = y[torch.randperm(len(y), generator=gen).to(dev)]
        counts = torch.bincount(y, minlength=len(classes))
        majority = int(counts.argmax())
        plan.train.append(tr)
        plan.test.append(te)
        plan.target.append(cls)
        plan.shuffled.append(shuf)
        plan.chance.append(float((cls[te] == majority).float().mean()))
    return plan


#: Closed-form rules ``method="auto"`` chooses between, per probe, on validation accuracy.
AUTO_CANDIDATES: tuple[str, ...] = ("lda", "ridge")


def _validation_rows(plan: _Plan, seed: int, fraction: float = 0.2) -> list[Tensor]:
    """A validation subset of each offset's training rows: whole training sequences when
    there are at least two of them, else random positions."""
    gen = torch.Generator().manual_seed(seed + 1)
    train_any = torch.stack([t.any(1) for t in plan.train]).any(0)
    seqs = torch.nonzero(train_any).flatten().cpu()
    n, P = plan.tokens.shape
    dev = plan.tokens.device
    if len(seqs) >= 2:
        n_val = min(len(seqs) - 1, max(1, round(fraction * len(seqs))))
        pick = seqs[torch.randperm(len(seqs), generator=gen)[:n_val]]
        rows = torch.zeros(n, dtype=torch.bool)
        rows[pick] = True
        mask = rows.to(dev)[:, None].expand(n, P)
    else:
        mask = (torch.rand(n, P, generator=gen) < fraction).to(dev)
    out = []
    for k, t in enumerate(plan.train):
        v = t & mask
        if int(v.sum()) == 0 or int((t & ~v).sum()) == 0:
            raise LensworksError(
                f"method='auto' needs training rows for both fitting and validation; offset index {k} has "
                f"{int(t.sum())} training rows; pass more data or use method='lda' or 'ridge'"
            )
        out.append(v)
    return out


def _check_streams(model: HookedTransformer, streams: Sequence[str] | None) -> tuple[tuple[str, ...], list[str]]:
    skipped: list[str] = []
    if streams is None:
        streams = model_streams(model, DEFAULT_STREAMS)
        skipped = [s for s in DEFAULT_STREAMS if s not in streams]
    if isinstance(streams, str):
        streams = (streams,)
    streams = tuple(streams)
    if not streams:
        raise LensworksError("streams is empty; expected some of " + ", ".join(_STREAMS))
    for s in streams:
        if s not in _STREAMS:
            raise LensworksError(f"unknown stream {s!r}; expected one of {list(_STREAMS)}")
    if len(set(streams)) != len(streams):
        raise LensworksError(f"streams has repeated entries: {list(streams)}")
    missing_stream_error(model, streams)
    return streams, skipped


def _run_batches(
    model: HookedTransformer,
    tokens: Tensor,
    seq_idx: Tensor,
    hooks: dict[str, tuple[int, str]],
    stop_at: int | None,
    batch_size: int,
    desc: str,
    progress: bool | None,
    fn: Callable[[Tensor, dict[tuple[int, str], Tensor]], None],
) -> None:
    """Run the model over ``tokens[seq_idx]`` in batches; call ``fn(idx, {key: acts})``."""
    disable = None if progress is None else not progress
    starts = range(0, len(seq_idx), batch_size)
    for s in tqdm(starts, desc=desc, disable=disable, leave=False):
        idx = seq_idx[s : s + batch_size]
        store: dict[tuple[int, str], Tensor] = {}

        def grab(name: str, act: Tensor) -> None:
            store[hooks[name]] = act

        with torch.inference_mode():
            model.run_with_hooks(
                tokens[idx],
                fwd_hooks=capture_hooks(list(hooks), grab),
                stop_at_layer=stop_at,
                return_type=None,
            )
            fn(idx, store)


# --------------------------------------------------------------------------- fitting back-ends


class _Moments:
    """Streaming moments of one probe's training rows.

    Rows are shifted by a fixed vector (the mean of the first batch) before accumulating, so
    that the per-batch products can be formed in float32 without losing the small centred
    variance to a large common mean; the sums themselves are kept in float64.
    """

    __slots__ = ("n", "shift", "sx", "g", "xty", "xty_shuf", "counts")

    def __init__(self, d: int, c: int, device: torch.device) -> None:
        f64 = torch.float64
        self.n = 0
        self.shift: Tensor | None = None
        self.sx = torch.zeros(d, dtype=f64, device=device)
        self.g = torch.zeros(d, d, dtype=f64, device=device)
        self.xty = torch.zeros(c, d, dtype=f64, device=device)
        self.xty_shuf = torch.zeros(c, d, dtype=f64, device=device)
        self.counts = torch.zeros(c, dtype=f64, device=device)

    def add(self, x: Tensor, y: Tensor, ys: Tensor | None) -> None:
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.shift is None:
            self.shift = x.to(torch.float64).mean(0)
        xs = x.to(work) - self.shift.to(work)
        c = self.counts.shape[0]
        self.n += xs.shape[0]
        self.sx += xs.sum(0, dtype=torch.float64)
        self.g += (xs.T @ xs).to(torch.float64)
        # class sums as a one-hot product: a dense matmul is much faster than index_add_
        onehot = torch.nn.functional.one_hot(y, c).to(work)
        self.xty += (onehot.T @ xs).to(torch.float64)
        if ys is not None:
            self.xty_shuf += (torch.nn.functional.one_hot(ys, c).to(work).T @ xs).to(torch.float64)
        self.counts += onehot.sum(0, dtype=torch.float64)

    def solve(self, method: str, alpha: float | None, shuffled: bool = False) -> tuple[Tensor, Tensor, float]:
        xty = self.xty_shuf if shuffled else self.xty
        counts = self.counts  # a permutation keeps the class counts
        if method == "lda":
            w, b, a = lda_from_moments(self.n, self.sx, self.g, xty.T, counts, alpha=alpha)
        else:
            w, b, a = ridge_from_moments(self.n, self.sx, self.g, xty.T, counts, alpha=alpha)
        assert self.shift is not None
        return w, b - self.shift @ w, a  # undo the shift: (x - c) W + b = x W + (b - c W)


def _lda_start(z: Tensor, y: Tensor, n_classes: int, l2: float) -> tuple[Tensor, Tensor]:
    """A warm start for logistic regression: the LDA solution, scaled to minimise the loss.

    LDA's logits are usually over-confident, so the start is ``s * (W_lda, b_lda)`` with ``s``
    the best of a few scales (0 included, which is the usual zero start). On the demo model
    this reaches in about 30 L-BFGS iterations the accuracy a zero start reaches in 100.
    """
    zd = z.to(torch.float64)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(torch.float64)
    w, b, _ = lda_from_moments(len(zd), zd.sum(0), zd.T @ zd, zd.T @ onehot, onehot.sum(0))
    w, b = w.to(z.dtype), b.clamp_min(-30.0).to(z.dtype)
    best, best_s = math.inf, 0.0
    for scale in (0.0, 0.03, 0.1, 0.3, 1.0):
        loss = float(torch.nn.functional.cross_entropy(scale * (z @ w + b), y) + l2 * scale**2 * float((w * w).sum()))
        if loss < best:
            best, best_s = loss, scale
    return (best_s * w).detach().clone(), (best_s * b).detach().clone()


def _fit_logistic(x: Tensor, y: Tensor, n_classes: int, max_iter: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full-batch L-BFGS on standardised features.

    The objective is scikit-learn's with ``C = 1``: mean cross-entropy plus
    ``||W||^2 / (2 n)`` on the standardised features, started from the scaled LDA solution
    (:func:`_lda_start`). Returns weights for the raw features.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().float()
        y = y.detach().clone()
        n, d = x.shape
        mu = x.mean(0)
        sd = x.std(0, unbiased=False).clamp_min(1e-6)
        z = (x - mu) / sd
        l2 = 1.0 / (2.0 * n)
        w0, b0 = _lda_start(z, y, n_classes, l2)
        w = w0.contiguous().requires_grad_(True)
        b = b0.contiguous().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-6, tolerance_change=1e-9,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        w_raw = (w / sd[:, None]).detach()
        b_raw = (b - (mu / sd) @ w).detach()
    return w_raw, b_raw


# --------------------------------------------------------------------------- public entry


def probe_inputs(
    model: HookedTransformer,
    data: Data,
    *,
    streams: Sequence[str] | None = None,
    offsets: Sequence[int] = (0, -1, -2),
    method: Literal["ridge", "lda", "auto", "logistic"] = "ridge",
    shared: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
    alpha: float | None = None,
    controls: bool = True,
    max_iter: int = 100,
    progress: bool | None = None,
) -> ProbeResults:
    """Fit linear probes that recover input tokens from the residual stream, layer by layer.

    For every layer ``l``, stream ``s`` and offset ``o``, a linear map reads the activation
    at position ``p`` and predicts the input token at position ``p + o`` (``o = 0``: the
    token itself; ``o = -1``: the previous token). Positions whose target lies outside the
    sequence are left out, and so are targets that are the BOS token. Sequences (or, for a
    single sequence, positions) are split at random into training and held-out parts.

    Methods:
        ``"ridge"`` fits ``min ||Y - XW - b||^2 + lam ||W||^2`` onto one-hot targets in closed
        form from moments accumulated in one streaming pass (see :func:`ridge_from_moments`);
        the penalty is chosen per probe by generalised cross-validation unless ``alpha``
        fixes it. ``"lda"`` uses the same moments with the linear-discriminant decision rule
        (see :func:`lda_from_moments`; ``alpha`` is its covariance shrinkage, default
        :data:`LDA_ALPHA`); as cheap as ridge and usually as accurate as logistic. ``"auto"``
        fits both closed forms on 80% of the training sequences, keeps for each probe the one
        with the higher accuracy on the other 20% (``options["auto_choices"]``), and refits it
        on all training rows; same single forward pass. ``"logistic"`` fits multinomial logistic regression by full-batch L-BFGS
        (scikit-learn's objective with ``C = 1`` on standardised features) and also reports
        held-out cross-entropy; it keeps all activations of the probed streams in memory.

    Controls (``controls=True``): the same probe on a randomly initialised copy of the model
    (same config, weights drawn with ``seed``; the given model is never touched) and the same
    probe fitted on training labels shuffled across rows, scored on the true held-out labels.
    ``chance`` is the held-out accuracy of always answering the most frequent training token.

    Args:
        model: The model to probe.
        data: Strings (each tokenized on its own; BOS prepended as the model does) or a
            ``[batch, pos]`` token tensor.
        streams: Residual streams to probe (default ``resid_pre``, ``resid_mid``,
            ``resid_post``; ``resid_mid`` is dropped from the default for models without
            one, i.e. attention-only and parallel-block models; asking for it there is an error). ``attn_out`` and
            ``mlp_out`` also work.
        offsets: Which input token to recover, relative to the position (0, -1, -2, ...).
        method: ``"ridge"``, ``"lda"``, ``"auto"`` or ``"logistic"``.
        shared: Fit one probe per offset on the pooled activations of every probed layer and
            stream (then scored at each of them), instead of one per (layer, stream, offset).
        test_fraction: Share of sequences held out (of positions for a single sequence).
        seed: Seed of the split, the label shuffle and the random-model control.
        batch_size: Sequences per forward pass.
        layers: Layers to probe (default all).
        alpha: Fixed relative ridge penalty (``lam = alpha * trace(X_c^T X_c) / d_model``);
            None chooses it by GCV. For ``"lda"``: the relative covariance shrinkage.
        controls: Compute the random-model and shuffled-label controls.
        max_iter: L-BFGS iterations for the logistic method.
        progress: Show progress bars (None: only on a terminal).

    Returns:
        A :class:`ProbeResults`.

    Example:
        >>> res = probe_inputs(model, tokens, offsets=(0, -1))
        >>> res.to_frame().head()  # doctest: +SKIP
    """
    if method not in ("ridge", "lda", "auto", "logistic"):
        raise LensworksError(f"method must be 'ridge', 'lda', 'auto' or 'logistic', got {method!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise LensworksError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LensworksError(f"batch_size must be a positive int, got {batch_size!r}")
    if alpha is not None and (not math.isfinite(alpha) or alpha < 0):
        raise LensworksError(f"alpha must be a finite non-negative number or None, got {alpha}")
    streams, skipped = _check_streams(model, streams)
    offsets = tuple(offsets)
    if not offsets:
        raise LensworksError("offsets is empty; expected integers such as (0, -1, -2)")
    for o in offsets:
        if not isinstance(o, int) or isinstance(o, bool):
            raise LensworksError(f"offsets must be ints, got {o!r}")
    if len(set(offsets)) != len(offsets):
        raise LensworksError(f"offsets has repeated entries: {list(offsets)}")
    layer_list = tuple(range(model.cfg.n_layers)) if layers is None else tuple(check_layer(model, l) for l in layers)
    if not layer_list:
        raise LensworksError("layers is empty; expected at least one layer index")
    if len(set(layer_list)) != len(layer_list):
        raise LensworksError(f"layers has repeated entries: {list(layer_list)}")

    tokens, lengths = model_tokens(model, data)
    max_len = int(lengths.max())
    for o in offsets:
        if abs(o) >= max_len:
            raise LensworksError(
                f"offset {o} reaches beyond every sequence: the longest holds {max_len} tokens, "
                f"so offsets must satisfy |offset| < {max_len}"
            )
    plan = _plan(tokens, lengths, offsets, bos_token_id(model), float(test_fraction), seed)
    C = len(plan.classes)
    d = model.cfg.d_model
    L, S, O = len(layer_list), len(streams), len(offsets)
    hooks = {hook_name(s, l): (l, s) for l in layer_list for s in streams}
    stop_at = max(layer_list) + 1
    stop_at = None if stop_at >= model.cfg.n_layers else stop_at
    device = tokens.device

    val_rows = _validation_rows(plan, seed) if method == "auto" else []
    test_seqs = torch.nonzero(torch.stack([t.any(1) for t in plan.test]).any(0)).flatten()

    def run(m: HookedTransformer, label: str) -> dict[str, Tensor]:
        fit = _fit_logistic_all if method == "logistic" else _fit_ridge
        return fit(m, label)

    def key_of(l: int, s: str, k: int) -> tuple:
        return ("shared", k) if shared else (l, s, k)

    # ---------------- ridge: one streaming pass to fit, one to score
    act_dtype = torch.float64 if model.cfg.dtype == torch.float64 else torch.float32

    def _fit_ridge(m: HookedTransformer, label: str) -> dict[str, Tensor]:
        moments: dict[tuple, _Moments] = {}
        want_shuffled = controls and label == "model"
        fit_rows = plan.train if method != "auto" else [t & ~v for t, v in zip(plan.train, val_rows)]

        def accumulate_rows(idx: Tensor, store: dict[tuple[int, str], Tensor], rows: list[Tensor]) -> None:
            for (l, s), act in store.items():
                for k in range(O):
                    mask = rows[k][idx]
                    if not bool(mask.any()):
                        continue
                    key = key_of(l, s, k)
                    if key not in moments:
                        moments[key] = _Moments(d, C, device)
                    moments[key].add(
                        act[mask], plan.target[k][idx][mask], plan.shuffled[k][idx][mask] if want_shuffled else None
                    )

        seqs = torch.nonzero(torch.stack([t.any(1) for t in fit_rows]).any(0)).flatten()
        _run_batches(
            m, tokens, seqs, hooks, stop_at, batch_size, f"probe fit ({label})", progress,
            lambda idx, store: accumulate_rows(idx, store, fit_rows),
        )
        chosen: dict[tuple, str] = {}
        if method == "auto":
            # candidates fitted on the fit rows, scored on the validation rows, which are then
            # added to the moments so that the final probe uses every training row
            def work(sol_: tuple[Tensor, Tensor, float]) -> tuple[Tensor, Tensor]:
                return sol_[0].to(act_dtype), sol_[1].to(act_dtype)

            cands = {
                key: {
                    c: (work(mom.solve(c, alpha)), work(mom.solve(c, alpha, shuffled=True)) if want_shuffled else None)
                    for c in AUTO_CANDIDATES
                }
                for key, mom in moments.items()
            }
            hits = {key: {c: [0.0, 0.0] for c in AUTO_CANDIDATES} for key in moments}

            def validate(idx: Tensor, store: dict[tuple[int, str], Tensor]) -> None:
                for (l, s), act in store.items():
                    for k in range(O):
                        mask = val_rows[k][idx]
                        key = key_of(l, s, k)
                        if not bool(mask.any()) or key not in cands:
                            continue
                        x = act[mask].to(act_dtype)
                        y, ys = plan.target[k][idx][mask], plan.shuffled[k][idx][mask]
                        for c, (sol_c, shuf_c) in cands[key].items():
                            hits[key][c][0] += float(((x @ sol_c[0] + sol_c[1]).argmax(-1) == y).sum())
                            if shuf_c is not None:
                                hits[key][c][1] += float(((x @ shuf_c[0] + shuf_c[1]).argmax(-1) == ys).sum())
                accumulate_rows(idx, store, val_rows)

            vseqs = torch.nonzero(torch.stack([t.any(1) for t in val_rows]).any(0)).flatten()
            _run_batches(m, tokens, vseqs, hooks, stop_at, batch_size, f"probe validation ({label})", progress, validate)
            for key in moments:
                chosen[key] = max(AUTO_CANDIDATES, key=lambda c: hits[key][c][0])  # ties: first candidate
                chosen[("shuffled",) + key] = max(AUTO_CANDIDATES, key=lambda c: hits[key][c][1])
        sol: dict[tuple, tuple[Tensor, Tensor, float]] = {}
        sol_shuf: dict[tuple, tuple[Tensor, Tensor, float]] = {}
        for key, mom in moments.items():
            sol[key] = mom.solve(chosen.get(key, method), alpha)
            if want_shuffled:
                sol_shuf[key] = mom.solve(chosen.get(("shuffled",) + key, method), alpha, shuffled=True)
        correct = torch.zeros(L, S, O, dtype=torch.float64)
        correct_shuf = torch.zeros(L, S, O, dtype=torch.float64)
        sol_work = {key: (w.to(act_dtype), b.to(act_dtype)) for key, (w, b, _) in sol.items()}
        shuf_work = {key: (w.to(act_dtype), b.to(act_dtype)) for key, (w, b, _) in sol_shuf.items()}

        def score(idx: Tensor, store: dict[tuple[int, str], Tensor]) -> None:
            for (l, s), act in store.items():
                i, j = layer_list.index(l), streams.index(s)
                for k in range(O):
                    mask = plan.test[k][idx]
                    if not bool(mask.any()):
                        continue
                    x = act[mask].to(act_dtype)
                    y = plan.target[k][idx][mask]
                    w, b = sol_work[key_of(l, s, k)]
                    correct[i, j, k] += float(((x @ w + b).argmax(-1) == y).sum())
                    if sol_shuf:
                        w, b = shuf_work[key_of(l, s, k)]
                        correct_shuf[i, j, k] += float(((x @ w + b).argmax(-1) == y).sum())

        _run_batches(m, tokens, test_seqs, hooks, stop_at, batch_size, f"probe score ({label})", progress, score)
        n_test = torch.tensor([float(t.sum()) for t in plan.test], dtype=torch.float64)
        out = {"accuracy": (correct / n_test).float(), "shuffled": (correct_shuf / n_test).float()}
        if label == "model":
            W = torch.zeros(L, S, O, d, C)
            B = torch.zeros(L, S, O, C)
            A = torch.zeros(L, S, O)
            for i, l in enumerate(layer_list):
                for j, s in enumerate(streams):
                    for k in range(O):
                        w, b, a = sol[key_of(l, s, k)]
                        W[i, j, k], B[i, j, k], A[i, j, k] = w.float().cpu(), b.float().cpu(), a
            out.update(weights=W, bias=B, alpha=A)
            if chosen:
                out["choices"] = [
                    [l, st, offsets[k], chosen[key_of(l, st, k)]] for l in layer_list for st in streams for k in range(O)
                ]
        return out

    # ---------------- logistic: collect features, fit full batch
    def _fit_logistic_all(m: HookedTransformer, label: str) -> dict[str, Tensor]:
        feats: dict[tuple[int, str], Tensor] = {key: torch.zeros(*tokens.shape, d, device=device) for key in hooks.values()}
        every = torch.arange(tokens.shape[0], device=device)

        def collect(idx: Tensor, store: dict[tuple[int, str], Tensor]) -> None:
            for key, act in store.items():
                feats[key][idx] = act.float()

        _run_batches(m, tokens, every, hooks, stop_at, batch_size, f"probe features ({label})", progress, collect)
        acc = torch.zeros(L, S, O)
        acc_shuf = torch.zeros(L, S, O)
        ce = torch.zeros(L, S, O)
        W = torch.zeros(L, S, O, d, C)
        B = torch.zeros(L, S, O, C)

        def evaluate(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
            logits = x @ w + b
            return float((logits.argmax(-1) == y).float().mean()), float(torch.nn.functional.cross_entropy(logits, y))

        for k in range(O):
            tr, te = plan.train[k], plan.test[k]
            y_tr, y_te, ys_tr = plan.target[k][tr], plan.target[k][te], plan.shuffled[k][tr]
            groups = [[(l, s)] for l in layer_list for s in streams] if not shared else [list(hooks.values())]
            for group in groups:
                x_tr = torch.cat([feats[g][tr] for g in group])
                yy = y_tr.repeat(len(group))
                w, b = _fit_logistic(x_tr, yy, C, max_iter)
                ws = bs = None
                if controls and label == "model":
                    ws, bs = _fit_logistic(x_tr, ys_tr.repeat(len(group)), C, max_iter)
                for l, s in group:
                    i, j = layer_list.index(l), streams.index(s)
                    x_te = feats[(l, s)][te]
                    acc[i, j, k], ce[i, j, k] = evaluate(w, b, x_te, y_te)
                    W[i, j, k], B[i, j, k] = w.cpu(), b.cpu()
                    if ws is not None:
                        acc_shuf[i, j, k] = evaluate(ws, bs, x_te, y_te)[0]
        out = {"accuracy": acc, "shuffled": acc_shuf, "cross_entropy": ce}
        if label == "model":
            out.update(weights=W, bias=B, alpha=torch.full((L, S, O), float("nan")))
        return out

    main = run(model, "model")
    nan = torch.full((L, S, O), float("nan"))
    ctrl_random, ctrl_shuf = nan, nan
    if controls:
        ctrl_random = run(random_copy(model, seed), "random model")["accuracy"]
        ctrl_shuf = main["shuffled"]
    require_finite("probe accuracy", main["accuracy"])
    require_finite("probe weights", main["weights"])
    return ProbeResults(
        layers=layer_list,
        streams=streams,
        offsets=offsets,
        accuracy=main["accuracy"],
        chance=torch.tensor(plan.chance),
        control_random_model=ctrl_random,
        control_shuffled=ctrl_shuf,
        cross_entropy=main.get("cross_entropy"),
        alpha=main["alpha"],
        classes=plan.classes.cpu(),
        probe_weights=main["weights"],
        probe_bias=main["bias"],
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
            "max_iter": max_iter if method == "logistic" else None,
            "ridge_grid": list(RIDGE_GRID) if method == "ridge" and alpha is None else None,
            "lda_alpha": (LDA_ALPHA if alpha is None else alpha) if method in ("lda", "auto") else None,
            "auto_choices": main.get("choices"),
        },
        processing=processing_state(model),
    )
