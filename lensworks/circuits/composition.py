"""Q-, K- and V-composition scores between heads, computed from small factors.

For heads A (layer i) and B (layer j > i), with row-vector weights ``W_OV = W_V W_O`` and
``W_QK = W_Q W_K^T``, the composition score is

    ||W_OV^A M^B||_F / (||W_OV^A||_F ||M^B||_F),   M^B = W_QK^B (Q), (W_QK^B)^T (K), W_OV^B (V).

Every matrix here is d_model x d_model but of rank d_head, so nothing of that size is built.
Write ``W_V^A = U_A R_A`` (thin QR) and split ``M^B = X_B Y_B^T`` with ``Y_B = U_B' R_B'``. Since
multiplying by a matrix with orthonormal columns keeps the Frobenius norm,

    ||W_OV^A M^B||_F = ||(R_A W_O^A) (X_B R_B'^T)||_F = ||L_A P_B||_F,

a product of a ``[d_head, d_model]`` and a ``[d_model, d_head]`` factor. All left factors of the
earlier layers are stacked into one matrix and multiplied by the right factors of a layer in a
single GEMM, in chunks, for pairs with ``layer_a < layer_b`` only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._threads import adaptive_threads
from lensworks.circuits._factors import _default_cache_bytes, _left_factors, _pair_norms, _right_factors
from lensworks._dist import rank0_only
from lensworks._heads import HeadId
from lensworks._results import Reference, Result, require_finite
from lensworks.model._core import check_int
from lensworks.model import (
    HookedTransformer, LensworksError, attention_weights, check_float, check_int, head_labels, processing_state,
)

__all__ = ["composition_scores", "CompositionScores", "Baseline", "HeadPair", "random_composition_baseline",
           "SIGNIFICANT_Z"]

Mode = Literal["Q", "K", "V"]
_MODES = ("Q", "K", "V")

#: A pair composes clearly above chance when its score is at least this many standard deviations
#: of the random-factor baseline above the baseline's mean: the circuit graph's default edge
#: threshold (``z_min``) and where the composition heatmap marks its cells.
SIGNIFICANT_Z: float = 3.0


class HeadPair(NamedTuple):
    """One (earlier head -> later head) pair with its score."""

    src_layer: int
    src_head: int
    dst_layer: int
    dst_head: int
    score: float

    @property
    def label(self) -> str:
        """``"L0H1 -> L1H3"``."""
        return f"{self.src.label} -> {self.dst.label}"

    @property
    def src(self) -> HeadId:
        """The earlier head (the writer)."""
        return HeadId(self.src_layer, self.src_head)

    @property
    def dst(self) -> HeadId:
        """The later head (the reader)."""
        return HeadId(self.dst_layer, self.dst_head)


@dataclasses.dataclass(frozen=True, init=False)
class Baseline(Reference):
    """Score distribution for random Gaussian factors of the same shapes: a :class:`Reference`
    (kind "baseline", label "random factors") that also records its seed.

    ``n_samples`` is the old name of ``n`` (readable, and accepted by the constructor).

    Example:
        >>> b = Baseline(mean=0.04, std=0.01, n_samples=50, seed=0)
        >>> b.n_samples, b.describe()
        (50, 'random factors 0.040 ± 0.010, n=50')
    """

    seed: int = 0

    def __init__(self, mean: float, std: float = math.nan, lo: float = math.nan, hi: float = math.nan, n: int = 0,
                 kind: str = "baseline", label: str = "random factors", seed: int = 0, *,
                 n_samples: int | None = None) -> None:
        values = dict(mean=mean, std=std, lo=lo, hi=hi, n=n if n_samples is None else n_samples, kind=kind,
                      label=label, seed=seed)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    @property
    def n_samples(self) -> int:
        """The number of random factor pairs (``n``)."""
        return self.n


@dataclasses.dataclass(frozen=True)
class CompositionScores(Result):
    """Composition scores between all pairs of heads.

    Attributes:
        scores: ``[n_layers, n_heads, n_layers, n_heads]``, TransformerLens's layout: entry
            ``[i, a, j, b]`` is the score of head ``a`` in layer ``i`` composing into head ``b``
            in layer ``j``; zero where ``i >= j``.
        mode: "Q", "K" or "V".
        labels: Head labels ``L{layer}H{head}``, layer-major.
        baseline: Random-factor baseline (None when not asked for).
        processing: The model's weight-processing state when scored.
        z_min: The figure marks the pairs whose z-score against the baseline is at least this
            (:data:`SIGNIFICANT_Z`, the circuit graph's edge threshold, unless replaced).
    """

    scores: Float[Tensor, "n_layers n_heads n_layers n_heads"]
    mode: str
    labels: list[str]
    baseline: Baseline | None
    processing: dict[str, Any]
    z_min: float = SIGNIFICANT_Z

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scores.ndim != 4:
            raise LensworksError(f"scores must be [n_layers, n_heads, n_layers, n_heads], got {tuple(self.scores.shape)}")
        object.__setattr__(self, "z_min", check_float(self.z_min, "z_min"))

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def mask(self) -> Tensor:
        """Boolean ``[n_layers, n_heads, n_layers, n_heads]``: True where layer_a < layer_b."""
        layers = torch.arange(self.n_layers, device=self.scores.device)
        m = layers[:, None] < layers[None, :]
        return m[:, None, :, None].expand_as(self.scores)

    def corrected(self) -> Tensor:
        """Scores minus the random baseline's mean (zero outside layer_a < layer_b).

        Raises if the result was computed with ``baseline=False``.
        """
        if self.baseline is None:
            raise LensworksError("this result has no baseline; call composition_scores(..., baseline=True)")
        return torch.where(self.mask(), self.scores - self.baseline.mean, torch.zeros_like(self.scores))

    def z(self) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
        """Each score in standard deviations of the random baseline above its mean.

        ``(scores - baseline.mean) / baseline.std`` (a zero std counts as 1e-12), in the scores'
        dtype and layout; zero outside ``layer_a < layer_b``, like :meth:`corrected`. The circuit
        graph's edges, the induction verdict's K-composition evidence and the command line's
        tables all read their z from here.

        Raises:
            LensworksError: The result was computed with ``baseline=False``.

        Example:
            >>> comp = composition_scores(model, "K")
            >>> pair = comp.top(1)[0]
            >>> round(float(comp.z()[pair.src_layer, pair.src_head, pair.dst_layer, pair.dst_head]), 1)
            12.8
        """
        if self.baseline is None:
            raise LensworksError("this result has no baseline, so no z-score; call composition_scores(..., baseline=True)")
        z = (self.scores - self.baseline.mean) / max(self.baseline.std, 1e-12)
        return torch.where(self.mask(), z, torch.zeros_like(z))

    def significant(self) -> list[HeadPair]:
        """The pairs whose z-score is at least :attr:`z_min`, strongest first (the heatmap's marks).

        Raises:
            LensworksError: The result was computed with ``baseline=False``.

        Example:
            >>> [pair.label for pair in composition_scores(model, "K").significant()][:2]
            ['L0H1 -> L1H3', 'L0H1 -> L1H1']
        """
        z = self.z()  # raises without a baseline
        if self.n_layers < 2:
            return []
        hits = self.mask() & (z >= self.z_min)
        return [p for p in self.top(int(self.mask().sum()))
                if bool(hits[p.src_layer, p.src_head, p.dst_layer, p.dst_head])]

    def top(self, k: int = 10) -> list[HeadPair]:
        """The ``k`` highest-scoring pairs (layer_a < layer_b), strongest first.

        Example:
            >>> composition_scores(model, "K").top(1)[0].label
            'L0H1 -> L1H3'
        """
        k = check_int(k, "k", low=1)
        flat = torch.where(self.mask(), self.scores, torch.full_like(self.scores, -math.inf)).flatten()
        n_valid = int(self.mask().sum())
        vals, idx = flat.topk(min(k, n_valid))
        out = []
        H, L = self.n_heads, self.n_layers
        for v, i in zip(vals.tolist(), idx.tolist()):
            la, rem = divmod(i, H * L * H)
            ha, rem = divmod(rem, L * H)
            lb, hb = divmod(rem, H)
            out.append(HeadPair(la, ha, lb, hb, v))
        return out

    def caption(self) -> str:
        """What the score measures, with the random-factor baseline when it was computed."""
        target = {"Q": "queries", "K": "keys", "V": "values"}.get(self.mode, self.mode)
        text = (
            f"{self.mode}-composition: how much an earlier head's output (row) is read by a later head's "
            f"{target} (column): ‖W_OV^A M^B‖_F / (‖W_OV^A‖_F ‖M^B‖_F), between 0 and 1. "
            "Blank cells are pairs that cannot compose (the reader is not in a later layer)."
        )
        if self.baseline is not None:
            text += (f" Baseline from random factors of the same shapes: {self.baseline.describe()}; read a cell "
                     f"relative to that. A white star marks a pair at least {self.z_min:g} standard deviations above "
                     f"the baseline (z ≥ {self.z_min:g}, the circuit graph's edge threshold): "
                     f"{len(self.significant())} of {int(self.mask().sum())} pairs.")
        return text

    def headline(self) -> str | None:
        """The strongest pair, beside the random baseline (None for a one-layer model)."""
        if self.n_layers < 2:
            return None
        p = self.top(1)[0]
        base = f" ({self.baseline.describe()})" if self.baseline is not None else ""
        return f"Strongest {self.mode}-composition: {p.label}, {p.score:.3f}{base}."

    def html_attrs(self) -> dict[str, str]:
        """Marks the heatmap for the report's head picker."""
        return {"kind": "composition", "mode": self.mode}

    def to_frame(self):
        """One row per valid pair: ``src, dst, src_layer, src_head, dst_layer, dst_head, score``
        (and ``corrected`` with a baseline)."""
        import pandas as pd

        rows = []
        for p in self.top(int(self.mask().sum())) if self.n_layers > 1 else []:
            row = dict(src=p.src.label, dst=p.dst.label, **p._asdict())
            if self.baseline is not None:
                row["corrected"] = p.score - self.baseline.mean
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self):
        """Heatmap of all head pairs (rows: earlier head, columns: later head)."""
        from lensworks.plotting import head_heatmap, reference_title

        n = self.n_layers * self.n_heads
        z = self.scores.reshape(n, n).detach().cpu()
        z = torch.where(self.mask().reshape(n, n).cpu(), z, torch.full_like(z, float("nan")))
        title = reference_title(f"{self.mode}-composition scores", self.references().values())
        marked = self.baseline is not None
        fig = head_heatmap(
            z,
            title=title,
            x_labels=self.labels,
            y_labels=self.labels,
            x_title="later head (reads)",
            y_title="earlier head (writes)",
            colorbar_title="score (unitless, 0-1)" + (f"<br>★: z ≥ {self.z_min:g}<br>vs random" if marked else ""),
            zmin=0.0,
            hover_name=f"{self.mode}-composition",
        )
        if marked:
            from lensworks.circuits._plots import mark_cells

            z_all = self.z()
            pairs = self.significant()
            mark_cells(fig, [p.dst.label for p in pairs], [p.src.label for p in pairs],
                       [[p.score, float(z_all[p.src_layer, p.src_head, p.dst_layer, p.dst_head])] for p in pairs],
                       name=f"z ≥ {self.z_min:g} vs random factors",
                       hover=f"%{{y}} → %{{x}}<br>{self.mode}-composition: %{{customdata[0]:.4f}}"
                             f"<br>z = %{{customdata[1]:.1f}} (≥ {self.z_min:g})")
        return fig


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise LensworksError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    return mode


def random_composition_baseline(
    d_model: int,
    d_head: int,
    mode: str,
    *,
    n_samples: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Baseline:
    """Mean and std of the composition score for i.i.d. Gaussian factors of the given shapes.

    Composition scores are scale-free, so Gaussian factors give the "chance" level for heads of
    these shapes; a score is "above chance" when it is several standard deviations above the mean.
    The mean is close to ``1/sqrt(d_model)`` whatever ``d_head`` is. With Gaussian factors every
    mode has the same distribution (``W_Q``, ``W_K``, ``W_V`` and ``W_O^T`` are exchangeable), so
    the result does not depend on ``mode``; it is cached per shape, sample count and seed.

    Args:
        d_model: Residual width.
        d_head: Head width.
        mode: "Q", "K" or "V" (validated; see above).
        n_samples: Number of random (left, right) pairs.
        seed: Seed of a private generator (global RNG untouched).
        device: Where to compute.

    Returns:
        A :class:`Baseline`.

    Example:
        >>> b = random_composition_baseline(768, 64, "Q", n_samples=50)
        >>> round(b.mean, 2)
        0.04
    """
    _check_mode(mode)
    n_samples = check_int(n_samples, "baseline_samples", low=2)
    seed = check_int(seed, "seed")
    return _gaussian_baseline(int(d_model), int(d_head), int(n_samples), int(seed), str(device))


@functools.lru_cache(maxsize=32)
def _gaussian_baseline(d_model: int, d_head: int, n_samples: int, seed: int, device: str) -> Baseline:
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device)

    # left head: W_V, W_O; right head: M = X Y^T with X, Y independent Gaussians. Sampled in
    # chunks so memory stays near 4 x chunk x d_model x d_head floats even for d_model 4096.
    chunk = max(1, min(n_samples, int(2**24 // max(1, d_model * d_head))))
    parts = []
    with torch.inference_mode():
        for start in range(0, n_samples, chunk):
            n = min(chunk, n_samples - start)
            w_left = {"W_V": rand(n, d_model, d_head), "W_O": rand(n, d_head, d_model)}
            w_right = {"W_Q": rand(n, d_model, d_head), "W_K": rand(n, d_model, d_head)}
            left, ln = _left_factors(w_left, torch.float32)
            right, rn = _right_factors(w_right, "Q", torch.float32)
            parts.append((left @ right).flatten(-2).norm(dim=-1) / (ln * rn))
    ref = Reference.from_samples(torch.cat(parts), kind="baseline", label="random factors")
    return Baseline(mean=ref.mean, std=ref.std, lo=ref.lo, hi=ref.hi, n=n_samples, seed=seed)


@rank0_only
@adaptive_threads
def composition_scores(
    model: HookedTransformer,
    mode: Mode,
    *,
    baseline: bool = True,
    baseline_samples: int = 200,
    chunk_heads: int | None = None,
    max_cache_bytes: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> CompositionScores:
    """Q-, K- or V-composition scores between every pair of heads in different layers.

    Equals ``model.all_composition_scores(mode)`` (to float32 precision) without ever building a
    ``d_model x d_model`` matrix or the masked half of the pairs; grouped-query attention
    heads are mapped to their query heads.

    Args:
        model: The model.
        mode: "Q", "K" or "V".
        baseline: Also compute the random-factor baseline (see
            :func:`random_composition_baseline`).
        baseline_samples: Random pairs for the baseline.
        chunk_heads: Left heads multiplied per GEMM (bounds memory; default chosen so one chunk's
            product stays near 64 MB).
        max_cache_bytes: The left factors of all earlier layers are kept between layers when
            they fit in this many bytes; otherwise each earlier layer's factors are recomputed
            for every later layer (memory of one layer's factors, but a QR per earlier layer
            and later layer: the later layers of a deep model get slower). Default: a quarter of
            the free GPU memory on CUDA (a Llama-3-8B shape needs 2 GiB), 1 GiB on the CPU.
            Peak extra memory is about ``min(cache, 2 layers of factors) + chunk product``.
        dtype: Compute dtype (weights are upcast; bf16/fp16 models are scored in float32).
        progress: Show a progress bar (None: only when the work is large).

    Returns:
        :class:`CompositionScores` with ``scores[layer_a, head_a, layer_b, head_b]``.

    Example:
        >>> comp = composition_scores(model, "K")
        >>> comp.scores.shape == (model.cfg.n_layers, model.cfg.n_heads) * 2
        True
        >>> [pair.label for pair in comp.top(3)]
        ['L0H1 -> L1H3', 'L0H1 -> L1H1', 'L0H0 -> L1H0']
    """
    _check_mode(mode)
    if not dtype.is_floating_point or dtype in (torch.float16, torch.bfloat16):
        raise LensworksError(f"dtype must be float32 or float64, got {dtype}")
    cfg = model.cfg
    L, H, d_model = cfg.n_layers, cfg.n_heads, cfg.d_model
    device = model.W_E.device
    scores = torch.zeros(L, H, L, H, dtype=dtype, device=device)
    if chunk_heads is None:
        r = min(cfg.d_head, d_model)
        chunk_heads = max(1, int(16e6 // max(1, r * H * r)))
    chunk_heads = min(check_int(chunk_heads, "chunk_heads", low=1), H * L)
    if baseline:
        baseline_samples = check_int(baseline_samples, "baseline_samples", low=2)
    if progress is None:
        progress = (L * H) ** 2 * cfg.d_head**2 * d_model > 5e10
    itemsize = torch.empty((), dtype=dtype).element_size()
    r = min(cfg.d_head, d_model)
    if max_cache_bytes is None:
        max_cache_bytes = _default_cache_bytes(device)
    max_cache_bytes = check_int(max_cache_bytes, "max_cache_bytes", low=0)
    cache = (L - 1) * H * r * d_model * itemsize <= max_cache_bytes
    # earlier layers' left factors, filled layer by layer (a view of the first j layers, no copy)
    left_cache = torch.empty((L - 1) * H if cache else 0, r, d_model, dtype=dtype, device=device)
    ln_cache = torch.empty((L - 1) * H if cache else 0, dtype=dtype, device=device)

    def left_of(i: int) -> tuple[Tensor, Tensor]:
        left, ln = _left_factors(attention_weights(model, [i]), dtype)
        return left[0], ln[0]

    with torch.inference_mode():
        for j in tqdm(range(L), desc=f"{mode}-composition", disable=not progress, leave=False):
            w = attention_weights(model, [j])
            if j > 0:
                right, rn = _right_factors(w, mode, dtype)
                groups = [list(range(j))] if cache else [[i] for i in range(j)]
                for group in groups:
                    if cache:
                        left_all, ln_all = left_cache[: j * H], ln_cache[: j * H]  # [(j H), r, d]
                    else:
                        left_all, ln_all = left_of(group[0])
                    num = _pair_norms(left_all, right[0], chunk_heads)  # [(g H), H]
                    denom = ln_all[:, None] * rn[0][None, :]
                    # a head with an all-zero W_OV or W_QK composes with nothing: score 0, not 0/0
                    s = torch.where(denom > 0, num / denom.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(num))
                    scores[group[0] : group[-1] + 1, :, j, :] = s.reshape(len(group), H, H)
            if cache and j < L - 1:
                left, ln = _left_factors(w, dtype)
                left_cache[j * H : (j + 1) * H] = left[0]
                ln_cache[j * H : (j + 1) * H] = ln[0]
    require_finite(f"{mode}-composition scores", scores)
    base = (
        random_composition_baseline(d_model, cfg.d_head, mode, n_samples=baseline_samples, device=device)
        if baseline
        else None
    )
    return CompositionScores(
        scores=scores, mode=mode, labels=head_labels(model), baseline=base, processing=processing_state(model)
    )
