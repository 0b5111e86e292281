"""Bases of the embedding matrix (or of any activation matrix) ordered by importance.

Three ways to get directions in the residual stream that are "important" for a matrix whose
rows are vectors in model space (``W_E``: one row per token; ``W_U`` transposed; or
activations, one row per sample):

* ``"pca"``: principal components of the centred rows (an SVD), ordered by explained variance.
* ``"nmf"``: non-negative matrix factorisation. Rows of ``W_E`` have negative entries, so the
  matrix is split into its positive and negative parts side by side, ``[max(M, 0), max(-M, 0)]``
  (``n x 2 d_model``), which is non-negative, and factorised as ``A H`` with ``A, H >= 0``. The
  model-space direction of component ``j`` is ``H[j, :d] - H[j, d:]``. Solved in torch by
  hierarchical alternating least squares (the coordinate-descent scheme of scikit-learn's
  default solver) from an NNDSVDa start; components are ordered by the Frobenius norm of their
  rank-one piece ``||A[:, j]|| ||H[j]||``.
* ``"frequency"``: the rows of the tokens that are most frequent in data you pass, each
  normalised, ordered by frequency (only for vocabulary-indexed matrices).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._results import Result, require_finite
from lensworks.model import (
    HookedTransformer, LensworksError, bos_token_id, check_int, embedding, model_vocab, processing_state,
    unembedding,
)
from lensworks.probes._data import model_tokens

__all__ = ["Basis", "embedding_basis", "nmf"]


@dataclasses.dataclass(frozen=True)
class Basis(Result):
    """Directions in model space ordered by importance.

    Attributes:
        method: ``"pca"``, ``"nmf"`` or ``"frequency"``.
        source: ``"W_E"``, ``"W_U"`` or ``"activations"``.
        components: ``[k, d_model]``, one direction per row, most important first. PCA rows
            are orthonormal; NMF rows are the signed directions ``H+ - H-``; frequency rows
            are unit-norm rows of the matrix.
        importance: ``[k]``: explained-variance ratio (PCA), share of the summed norms of the
            rank-one pieces (NMF), or share of the counted tokens (frequency).
        importance_name: What ``importance`` measures.
        labels: One label per component (``PC1``, ``NMF1``, or the token string).
        codes: ``[n_rows, k]`` coordinates of each row (PCA scores, NMF ``A``), or None.
        mean: The row mean removed before PCA, or None.
        tokens: Token ids of the frequency basis, or None.
        reconstruction_error: Frobenius norm of what the k components leave out (of the
            centred matrix for PCA, of the split non-negative matrix for NMF; NaN for
            frequency).
        options: Other options used.
    """

    method: str
    source: str
    components: Float[Tensor, "k d_model"]
    importance: Float[Tensor, "k"]
    importance_name: str
    labels: tuple[str, ...]
    codes: Float[Tensor, "n_rows k"] | None
    mean: Float[Tensor, "d_model"] | None
    tokens: Int[Tensor, "k"] | None
    reconstruction_error: float
    options: dict[str, Any]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def caption(self) -> str:
        """What the bars show."""
        return (f"Share of the {self.source} matrix's variance ({self.importance_name}) captured by each {self.method} "
                "basis direction, in order of importance.")

    def headline(self) -> str | None:
        """How concentrated the matrix is on its first directions."""
        k = min(5, self.importance.numel())
        return f"The first {k} {self.method} directions of {self.source} carry {float(self.importance[:k].sum()):.0%} of its {self.importance_name}."

    def to_frame(self):
        """One row per component: index, label, importance.

        Example:
            >>> embedding_basis(model, "pca", 3).to_frame().shape
            (3, 3)
        """
        import pandas as pd

        return pd.DataFrame(
            {"component": range(len(self.labels)), "label": list(self.labels), "importance": self.importance.tolist()}
        )

    def figure(self):
        """Bar chart of the importance of each component.

        Example:
            >>> fig = embedding_basis(model, "pca").figure()
        """
        from lensworks.probes._plots import basis_figure

        return basis_figure(self)


# --------------------------------------------------------------------------- NMF in torch


def _nndsvda(m: Tensor, k: int) -> tuple[Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    n, p = m.shape
    w = torch.zeros(n, k, dtype=m.dtype, device=m.device)
    h = torch.zeros(k, p, dtype=m.dtype, device=m.device)
    w[:, 0] = s[0].sqrt() * u[:, 0].abs()
    h[0] = s[0].sqrt() * vh[0].abs()
    for j in range(1, k):
        x, y = u[:, j], vh[j]
        xp, xn, yp, yn = x.clamp_min(0), (-x).clamp_min(0), y.clamp_min(0), (-y).clamp_min(0)
        xpn, xnn, ypn, ynn = xp.norm(), xn.norm(), yp.norm(), yn.norm()
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            uu, vv, sigma = xp / xpn, yp / ypn, mp
        else:
            uu, vv, sigma = xn / xnn.clamp_min(1e-300), yn / ynn.clamp_min(1e-300), mn
        lbd = (s[j] * sigma).sqrt()
        w[:, j], h[j] = lbd * uu, lbd * vv
    eps = 1e-6
    w[w < eps] = 0
    h[h < eps] = 0
    avg = m.mean()
    w[w == 0] = avg
    h[h == 0] = avg
    return w, h


def nmf(
    m: Float[Tensor, "n p"], k: int, *, max_iter: int = 400, tol: float = 1e-5
) -> tuple[Float[Tensor, "n k"], Float[Tensor, "k p"], float]:
    """Non-negative factorisation ``m ~ A H`` by hierarchical alternating least squares.

    Each sweep updates one row of ``H`` (then one column of ``A``) at a time by its exact
    non-negative least-squares step, as scikit-learn's coordinate-descent solver does; it
    starts from NNDSVDa and stops when the relative error changes by less than ``tol``.

    Args:
        m: Non-negative matrix.
        k: Number of components, ``1 <= k <= min(n, p)``.
        max_iter: Maximum sweeps.
        tol: Relative change of the error that stops the iteration.

    Returns:
        ``(A, H, error)`` with ``error = ||m - A H||_F``.

    Example:
        >>> A, H, err = nmf(torch.rand(20, 8), 3)
        >>> A.shape, H.shape
        (torch.Size([20, 3]), torch.Size([3, 8]))
    """
    if bool((m < 0).any()):
        raise LensworksError("nmf needs a non-negative matrix; split it into positive and negative parts first")
    if not 1 <= k <= min(m.shape):
        raise LensworksError(f"nmf: k={k} must lie in [1, {min(m.shape)}] for a matrix of shape {tuple(m.shape)}")
    m = m.to(torch.float64)
    a, h = _nndsvda(m, k)
    norm_m = float(m.norm())
    prev = None
    tiny = 1e-12
    for _ in range(max_iter):
        wtw, wtm = a.T @ a, a.T @ m
        for j in range(k):
            h[j] = (h[j] + (wtm[j] - wtw[j] @ h) / wtw[j, j].clamp_min(tiny)).clamp_min(0)
        hht, mht = h @ h.T, m @ h.T
        for j in range(k):
            a[:, j] = (a[:, j] + (mht[:, j] - a @ hht[:, j]) / hht[j, j].clamp_min(tiny)).clamp_min(0)
        err = float((m - a @ h).norm())
        if prev is not None and abs(prev - err) <= tol * max(norm_m, tiny):
            break
        prev = err
    return a, h, float((m - a @ h).norm())


# --------------------------------------------------------------------------- public entry


def _matrix(model: HookedTransformer | None, matrix: Union[str, Tensor]) -> tuple[Tensor, str]:
    if isinstance(matrix, Tensor):
        x = matrix.detach()
        if x.ndim == 3:
            x = x.reshape(-1, x.shape[-1])
        if x.ndim != 2:
            raise LensworksError(f"matrix: expected [n_rows, d_model] (or [batch, pos, d_model]) activations, got shape {tuple(matrix.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise LensworksError(f"matrix: empty data set (shape {tuple(x.shape)})")
        return x.to(torch.float64), "activations"
    if model is None:
        raise LensworksError(f"matrix={matrix!r} needs a model; pass a model or an activation tensor")
    if matrix == "W_E":
        return embedding(model).to(torch.float64), "W_E"
    if matrix == "W_U":
        return unembedding(model).T.to(torch.float64), "W_U"
    raise LensworksError(f"matrix must be 'W_E', 'W_U' or a [n_rows, d_model] tensor, got {matrix!r}")


def _principal_axes(xc: Float[Tensor, "n d"]) -> tuple[Float[Tensor, "r d"], Float[Tensor, " r"]]:
    """Principal axes (rows, by decreasing variance) and the variance along each (``s**2``) of a
    centred matrix, ``r = min(n, d)``.

    A tall matrix (more rows than columns: a 128k-token embedding of width 4096) goes through
    the ``d x d`` eigenproblem of ``xc^T xc``: a thin SVD of the whole matrix costs several times
    the arithmetic and, on a GPU, far more time. Otherwise the thin SVD.
    """
    n, d = xc.shape
    if n > d:
        evals, evecs = torch.linalg.eigh(xc.T @ xc)
        return evecs.flip(1).T.contiguous(), evals.flip(0).clamp_min(0.0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    return vh, s**2


def _check_k(k: int | None, limit: int, what: str) -> int:
    if k is None:
        return limit
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise LensworksError(f"k must be a positive int, got {k!r}")
    if k > limit:
        raise LensworksError(f"k={k} is larger than {what} ({limit})")
    return k


def embedding_basis(
    model: HookedTransformer | None,
    method: Literal["pca", "nmf", "frequency"],
    k: int | None = None,
    *,
    matrix: Union[str, Tensor] = "W_E",
    random_state: int = 0,
    data: Union[Tensor, Sequence[str], None] = None,
    max_iter: int = 400,
) -> Basis:
    """A basis of the embedding (or unembedding, or activations) ordered by importance.

    Args:
        model: The model (may be None when ``matrix`` is a tensor and method is not
            ``"frequency"``).
        method: ``"pca"``, ``"nmf"`` (positive and negative parts factorised side by side) or
            ``"frequency"`` (rows of the tokens most frequent in ``data``).
        k: Number of components (default: as many as the method allows: ``min(n, d_model)``
            for PCA, ``min(n, d_model)`` for NMF, every token seen for frequency).
        matrix: ``"W_E"`` (rows are tokens), ``"W_U"`` (its transpose: rows are tokens), or a
            ``[n_rows, d_model]`` activation tensor (``[batch, pos, d_model]`` is flattened).
        random_state: Kept for API symmetry with scikit-learn; PCA, NNDSVDa-initialised NMF
            and frequency are deterministic.
        data: Tokens or strings whose token counts order the frequency basis.
        max_iter: NMF sweeps.

    Returns:
        A :class:`Basis`.

    Example:
        >>> basis = embedding_basis(model, "pca", 8)
        >>> basis.components.shape == (8, model.cfg.d_model)
        True
    """
    random_state = check_int(random_state, "random_state")
    max_iter = check_int(max_iter, "max_iter", low=1)
    if k is not None:
        k = check_int(k, "k", low=1)
    basis = _embedding_basis(model, method, k, matrix=matrix, random_state=random_state, data=data, max_iter=max_iter)
    return dataclasses.replace(basis, processing=processing_state(model) if model is not None else {})


def _embedding_basis(model: HookedTransformer | None, method: str, k: int | None, *, matrix: Union[str, Tensor],
                     random_state: int, data: Any, max_iter: int) -> Basis:
    if method not in ("pca", "nmf", "frequency"):
        raise LensworksError(f"method must be 'pca', 'nmf' or 'frequency', got {method!r}")
    x, source = _matrix(model, matrix)
    require_finite(f"{source} matrix", x)
    n, d = x.shape
    options: dict[str, Any] = {"k": k, "random_state": random_state}
    if method == "pca":
        k = _check_k(k, min(n, d), f"the rank limit min(n_rows, d_model) of a {n}x{d} matrix")
        mean = x.mean(0)
        xc = x - mean
        vh, var = _principal_axes(xc)
        # deterministic signs: the largest-magnitude entry of each component is positive
        idx = vh.abs().argmax(1)
        signs = torch.sign(vh[torch.arange(len(vh)), idx])
        signs[signs == 0] = 1
        vh = vh * signs[:, None]
        total = float(var.sum()) or 1.0
        return Basis(
            method="pca",
            source=source,
            components=vh[:k].float(),
            importance=(var[:k] / total).float(),
            importance_name="explained variance ratio",
            labels=tuple(f"PC{i + 1}" for i in range(k)),
            codes=(xc @ vh[:k].T).float(),
            mean=mean.float(),
            tokens=None,
            reconstruction_error=float(var[k:].sum().sqrt()),
            options=options,
        )
    if method == "nmf":
        k = _check_k(k, min(n, 2 * d) if k is not None else min(n, d), f"min(n_rows, 2 d_model) for a {n}x{d} matrix")
        split = torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=1)
        a, h, err = nmf(split, k, max_iter=max_iter)
        piece = a.norm(dim=0) * h.norm(dim=1)
        order = torch.argsort(piece, descending=True)
        a, h, piece = a[:, order], h[order], piece[order]
        direction = h[:, :d] - h[:, d:]
        options["max_iter"] = max_iter
        return Basis(
            method="nmf",
            source=source,
            components=direction.float(),
            importance=(piece / piece.sum().clamp_min(1e-300)).float(),
            importance_name="share of rank-one piece norms",
            labels=tuple(f"NMF{i + 1}" for i in range(k)),
            codes=a.float(),
            mean=None,
            tokens=None,
            reconstruction_error=err,
            options=options,
        )
    # frequency
    if source == "activations":
        raise LensworksError("method='frequency' needs a vocabulary-indexed matrix ('W_E' or 'W_U'), not activations")
    if data is None:
        raise LensworksError("method='frequency' needs data (tokens or strings) whose token counts order the basis")
    toks, lengths = model_tokens(model, data)
    mask = torch.arange(toks.shape[1], device=toks.device)[None, :] < lengths[:, None]
    flat = toks[mask]
    bos = bos_token_id(model)
    if bos is not None:
        flat = flat[flat != bos]
    if flat.numel() == 0:
        raise LensworksError("method='frequency': data holds no tokens besides BOS")
    counts = torch.bincount(flat.cpu(), minlength=n).double()
    seen = int((counts > 0).sum())
    if k is not None and k > n:
        raise LensworksError(f"k={k} is larger than the vocabulary ({n} tokens)")
    k = _check_k(k, seen, "the number of distinct tokens in data")
    order = torch.argsort(counts, descending=True, stable=True)[:k]
    rows = x[order.to(x.device)]
    norms = rows.norm(dim=1, keepdim=True)
    vocab = model_vocab(model)
    labels = tuple(vocab[int(t)] if vocab else f"token {int(t)}" for t in order)
    return Basis(
        method="frequency",
        source=source,
        components=(rows / norms.clamp_min(1e-12)).float(),
        importance=(counts[order] / counts.sum()).float(),
        importance_name="share of token occurrences",
        labels=labels,
        codes=None,
        mean=None,
        tokens=order,
        reconstruction_error=float("nan"),
        options=options,
    )
