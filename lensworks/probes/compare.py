"""How a probe matrix relates to the embedding: principal angles and weight mass, against chance.

Everything is measured in model space (the residual stream, ``d_model`` dimensions). A probe
``W`` (``[d_model, n]``, ``logits = x @ W``) reads the residual along the left singular
vectors of ``W``; the embedding ``W_E`` (rows of the same ``n`` tokens) writes along its right
singular vectors; the unembedding reads along the left singular vectors of ``W_U``.

The null model is a random matrix with the same shape and the same singular values as the
probe: ``R = Q diag(s) V^T`` with ``Q`` and ``V`` Haar-random orthogonal. Every statistic here
depends on ``R`` only through ``Q`` and ``s``, so a draw costs one QR of a ``d_model x d_model``
Gaussian matrix.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._results import Reference, Result, require_finite
from lensworks.model import HookedTransformer, LensworksError, check_int, embedding, processing_state, unembedding
from lensworks.probes._nulls import check_null_options, null_interval
from lensworks.probes.bases import Basis, embedding_basis

__all__ = ["Comparison", "compare_to_embedding"]


@dataclasses.dataclass(frozen=True)
class Comparison(Result):
    """A probe matrix against ``W_E``/``W_U`` and against random matrices of the same spectrum.

    Attributes:
        rank: Dimension ``r`` of the compared subspaces (top singular directions).
        cosines_embed: Cosines of the ``r`` principal angles between the probe's top-``r``
            read directions and ``W_E``'s top-``r`` write directions (largest first).
        cosines_unembed: The same against ``W_U``'s top-``r`` read directions.
        cosines_embed_null_lo / _hi: Interval of each cosine under the null.
        cosines_unembed_null_lo / _hi: The same for ``W_U``.
        overlap_embed: Mean squared cosine, ``||P_r^T E_r||_F^2 / r`` in [0, 1] (1: same
            subspace; a random subspace gives about ``r / d_model``).
        overlap_unembed: The same against ``W_U``.
        overlap_embed_null / overlap_unembed_null: The statistic for each null draw.
        basis_method: Which basis the mass shares use.
        basis_labels: Labels of the basis components, most important first.
        basis_importance: The basis's own importance of each component.
        mass_share: Share of the probe's squared weight along each (unit) basis direction,
            ``||b_j^T W||^2 / ||W||_F^2``.
        embed_mass_share: The same share for the embedding rows ``W_E[tokens]^T``.
        mass_null_mean / mass_null_lo / mass_null_hi: The share under the null.
        mass_position: Mass-weighted position of the probe's weight along the importance
            order, ``sum_j share_j * j / (k - 1) / sum_j share_j`` (0: all on the most
            important component, 1: all on the least).
        mass_position_null: The statistic for each null draw.
        tokens: Token ids of the probe's columns.
        options: Options used (``n_random``, ``seed``, ``interval``).
        cosines_embed_null_mean / cosines_unembed_null_mean: Mean of each cosine under the null
            (None in results built before they were recorded).

    :meth:`references` gives every null above as a :class:`~lensworks._results.Reference`.
    """

    rank: int
    cosines_embed: Float[Tensor, "rank"]
    cosines_unembed: Float[Tensor, "rank"]
    cosines_embed_null_lo: Float[Tensor, "rank"]
    cosines_embed_null_hi: Float[Tensor, "rank"]
    cosines_unembed_null_lo: Float[Tensor, "rank"]
    cosines_unembed_null_hi: Float[Tensor, "rank"]
    overlap_embed: float
    overlap_unembed: float
    overlap_embed_null: Float[Tensor, "n_random"]
    overlap_unembed_null: Float[Tensor, "n_random"]
    basis_method: str
    basis_labels: tuple[str, ...]
    basis_importance: Float[Tensor, "k"]
    mass_share: Float[Tensor, "k"]
    embed_mass_share: Float[Tensor, "k"]
    mass_null_mean: Float[Tensor, "k"]
    mass_null_lo: Float[Tensor, "k"]
    mass_null_hi: Float[Tensor, "k"]
    mass_position: float
    mass_position_null: Float[Tensor, "n_random"]
    tokens: Int[Tensor, "n"]
    options: dict[str, Any]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: A note on how this result was made (the report sets one, e.g. why this head or how few
    #: samples); the page shows it under the caption.
    note: str = ""
    cosines_embed_null_mean: Float[Tensor, "rank"] | None = None
    cosines_unembed_null_mean: Float[Tensor, "rank"] | None = None

    def references(self) -> dict[str, Reference]:
        """Each statistic's null (random matrices with the same singular values) as a Reference.

        ``overlap_embed``, ``overlap_unembed`` and ``mass_position`` from their null draws;
        ``mass`` (one entry per basis component) and, when recorded, ``cosines_embed`` and
        ``cosines_unembed`` (one per principal angle), all with the ``options["interval"]`` band.
        """
        out = super().references()
        q, n = float(self.options["interval"]), int(self.options["n_random"])
        label = "random matrices with the same spectrum"
        for name in ("overlap_embed", "overlap_unembed", "mass_position"):
            out[name] = Reference.from_samples(getattr(self, f"{name}_null"), kind="null", label=label, interval=q)
        out["mass"] = Reference(mean=self.mass_null_mean, lo=self.mass_null_lo, hi=self.mass_null_hi, n=n,
                                kind="null", label=label)
        for name in ("cosines_embed", "cosines_unembed"):
            mean = getattr(self, f"{name}_null_mean")
            if mean is not None:
                out[name] = Reference(mean=mean, lo=getattr(self, f"{name}_null_lo"), hi=getattr(self, f"{name}_null_hi"),
                                      n=n, kind="null", label=label)
        return out

    def caption(self) -> str:
        """What is compared with what."""
        return ("How the probe's read directions relate to the embedding: principal-angle overlap with W_E and W_U "
                "and where the probe's weight sits along the embedding's PCA basis, each against random matrices "
                "with the same singular values.")

    def headline(self) -> str | None:
        """The overlap with W_E beside its null (random matrices with the same spectrum)."""
        return f"Probe subspace overlap with W_E: {self.overlap_embed:.3f} ({self.references()['overlap_embed'].describe()})."

    def summary(self) -> dict[str, dict[str, Any]]:
        """Each headline statistic with its null mean, interval and a verdict.

        The verdict is ``"closer than chance"``/``"farther than chance"`` when the value lies
        above/below the null interval (for ``mass_position``, lower means more weight on the
        important components), else ``"within chance"``.

        Example:
            >>> from lensworks.probes import probe_inputs
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> cmp = compare_to_embedding(model, res.weights(0, "resid_pre", 0), tokens=res.classes)
            >>> cmp.summary()["overlap_embed"]["verdict"]
            'farther than chance'
        """
        refs = self.references()
        out = {}
        for name, value, higher_is_closer in (
            ("overlap_embed", self.overlap_embed, True),
            ("overlap_unembed", self.overlap_unembed, True),
            ("mass_position", self.mass_position, False),
        ):
            ref, null = refs[name], getattr(self, f"{name}_null")
            side = ref.compare(value)
            if side == "within":
                verdict = "within chance"
            elif (side == "above") == higher_is_closer:
                verdict = "closer than chance"
            else:
                verdict = "farther than chance"
            out[name] = {"value": value, "null_mean": float(null.mean()), "null_lo": float(ref.lo),
                         "null_hi": float(ref.hi), "verdict": verdict}
        return out

    def to_frame(self):
        """One row per basis component: label, importance, probe share, embedding share, null.

        Example:
            >>> from lensworks.probes import probe_inputs
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> cmp = compare_to_embedding(model, res.weights(0, "resid_pre", 0), tokens=res.classes)
            >>> cmp.to_frame().columns[0]
            'component'
        """
        import pandas as pd

        return pd.DataFrame(
            {
                "component": range(len(self.basis_labels)),
                "label": list(self.basis_labels),
                "importance": self.basis_importance.tolist(),
                "mass_share": self.mass_share.tolist(),
                "embed_mass_share": self.embed_mass_share.tolist(),
                "null_mean": self.mass_null_mean.tolist(),
                "null_lo": self.mass_null_lo.tolist(),
                "null_hi": self.mass_null_hi.tolist(),
            }
        )

    def figure(self):
        """Mass share per component and principal-angle cosines, each with the null band.

        Example:
            >>> from lensworks.probes import probe_inputs
            >>> tokens = torch.randint(1, model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
            >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
            >>> cmp = compare_to_embedding(model, res.weights(0, "resid_pre", 0), tokens=res.classes)
            >>> fig = cmp.figure()
        """
        from lensworks.probes._plots import comparison_figure

        return comparison_figure(self)


def haar_orthogonal(d: int, generator: torch.Generator) -> Float[Tensor, "d d"]:
    """A Haar-distributed random orthogonal matrix (QR of a Gaussian with sign correction).

    Example:
        >>> q = haar_orthogonal(4, torch.Generator().manual_seed(0))
        >>> torch.allclose(q @ q.T, torch.eye(4, dtype=q.dtype), atol=1e-10)
        True
    """
    g = torch.randn(d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(d, dtype=torch.float64))


def compare_to_embedding(
    model: HookedTransformer,
    probe_weights: Float[Tensor, "d_model n"],
    *,
    basis: Any = None,
    n_random: int = 100,
    tokens: Int[Tensor, "n"] | None = None,
    rank: int | None = None,
    seed: int = 0,
    interval: float = 0.95,
) -> Comparison:
    """Is a probe matrix closer to the embedding than chance, and where does its weight sit?

    Two questions, each answered with a number and an interval from ``n_random`` random
    matrices of the same shape and singular values:

    1. Principal angles between the probe's top-``r`` read directions (left singular vectors
       of ``W``) and the top-``r`` directions of ``W_E[tokens]`` (right singular vectors) and
       of ``W_U[:, tokens]`` (left singular vectors); summarised by the mean squared cosine.
    2. The share of the probe's squared weight along each direction of a basis ordered by
       importance (default: PCA of ``W_E``), beside the embedding's own share; summarised by
       the mass-weighted position along the importance order. If the probe reads the input
       from directions the embedding barely uses, its mass sits late in the order.

    Args:
        model: The model whose ``W_E``/``W_U`` are compared (first, as in every analysis; the
            old order ``(probe_weights, model)`` still works with a DeprecationWarning).
        probe_weights: ``[d_model, n]`` probe matrix (``logits = x @ W``), e.g.
            ``res.weights(layer, stream, offset)``.
        basis: A :class:`~lensworks.probes.bases.Basis` (default: PCA of ``W_E``).
        n_random: Null draws.
        tokens: Token ids of the columns (default ``arange(d_vocab)``; pass ``res.classes``
            for a :class:`ProbeResults` probe).
        rank: Subspace dimension (default ``max(1, min(n, d_model) // 2)``, so that the
            subspaces are never the whole space).
        seed: Seed of the null draws.
        interval: Central probability of the reported null intervals.

    Returns:
        A :class:`Comparison`.

    Example:
        >>> from lensworks.probes import probe_inputs
        >>> tokens = torch.randint(1, model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
        >>> res = probe_inputs(model, tokens, offsets=(0,), method="ridge", controls=False)
        >>> cmp = compare_to_embedding(model, res.weights(0, "resid_pre", 0), tokens=res.classes)
        >>> cmp.summary()["overlap_embed"]["verdict"]
        'farther than chance'
    """
    if isinstance(model, Tensor) and not isinstance(probe_weights, Tensor):  # the old order (weights, model)
        warnings.warn("compare_to_embedding(probe_weights, model) is now compare_to_embedding(model, probe_weights)",
                      DeprecationWarning, stacklevel=2)
        model, probe_weights = probe_weights, model
    d = model.cfg.d_model
    if not isinstance(probe_weights, Tensor) or probe_weights.ndim != 2 or probe_weights.shape[0] != d:
        shape = tuple(probe_weights.shape) if isinstance(probe_weights, Tensor) else type(probe_weights).__name__
        raise LensworksError(f"probe_weights: expected a [d_model={d}, n] matrix (logits = x @ W), got {shape}")
    n = probe_weights.shape[1]
    if tokens is None:
        if n != model.cfg.d_vocab:
            raise LensworksError(
                f"probe_weights has {n} columns but the vocabulary has {model.cfg.d_vocab}; pass tokens= (e.g. res.classes)"
            )
        tokens = torch.arange(n)
    tokens = torch.as_tensor(tokens).long().cpu()
    if tokens.shape != (n,):
        raise LensworksError(f"tokens: expected {n} ids (one per probe column), got shape {tuple(tokens.shape)}")
    if n == 0 or int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
        raise LensworksError(f"tokens must be ids in [0, {model.cfg.d_vocab}), got {tokens.tolist()[:5]}...")
    check_null_options(n_random, interval)
    seed = check_int(seed, "seed")
    limit = min(n, d)
    r = max(1, limit // 2) if rank is None else rank
    if not isinstance(r, int) or not 1 <= r <= limit:
        raise LensworksError(f"rank must be an int in [1, {limit}] (min of n={n} and d_model={d}), got {rank!r}")
    if basis is None:
        basis = embedding_basis(model, "pca")
    if not isinstance(basis, Basis):
        raise LensworksError(f"basis must be a Basis from embedding_basis, got {type(basis).__name__}")
    if basis.components.shape[1] != d:
        raise LensworksError(f"basis components have width {basis.components.shape[1]}, expected d_model={d}")

    w = require_finite("probe_weights", probe_weights.detach().cpu().double())
    e = embedding(model).cpu().double()[tokens]  # [n, d]
    u = unembedding(model).cpu().double()[:, tokens]  # [d, n]
    up, sp, _ = torch.linalg.svd(w, full_matrices=False)
    ve = torch.linalg.svd(e, full_matrices=False)[2].T  # [d, min]
    uu = torch.linalg.svd(u, full_matrices=False)[0]
    pr, er, ur = up[:, :r], ve[:, :r], uu[:, :r]

    def cosines(a: Tensor, b: Tensor) -> Tensor:
        return torch.linalg.svdvals(a.T @ b).clamp(0, 1)

    cos_e, cos_u = cosines(pr, er), cosines(pr, ur)
    b = basis.components.cpu().double()
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    k = b.shape[0]
    pos = torch.arange(k, dtype=torch.float64) / max(k - 1, 1)

    def mass(mat: Tensor) -> Tensor:
        return ((b @ mat) ** 2).sum(1) / (mat**2).sum().clamp_min(1e-300)

    def position(share: Tensor) -> float:
        return float((share * pos).sum() / share.sum().clamp_min(1e-300))

    share = mass(w)
    gen = torch.Generator().manual_seed(seed)
    null_cos_e, null_cos_u, null_mass, null_pos = [], [], [], []
    sp2 = sp**2
    for _ in range(n_random):
        q = haar_orthogonal(d, gen)
        qs = q[:, : len(sp)]
        null_cos_e.append(cosines(q[:, :r], er))
        null_cos_u.append(cosines(q[:, :r], ur))
        m = ((b @ qs) ** 2 @ sp2) / sp2.sum()
        null_mass.append(m)
        null_pos.append(position(m))
    nce, ncu, nm = torch.stack(null_cos_e), torch.stack(null_cos_u), torch.stack(null_mass)
    ce_lo, ce_hi = null_interval(nce, interval)
    cu_lo, cu_hi = null_interval(ncu, interval)
    m_lo, m_hi = null_interval(nm, interval)
    f = lambda t: t.float()  # noqa: E731
    return Comparison(
        rank=r,
        cosines_embed=f(cos_e),
        cosines_unembed=f(cos_u),
        cosines_embed_null_lo=f(ce_lo),
        cosines_embed_null_hi=f(ce_hi),
        cosines_unembed_null_lo=f(cu_lo),
        cosines_unembed_null_hi=f(cu_hi),
        overlap_embed=float((cos_e**2).mean()),
        overlap_unembed=float((cos_u**2).mean()),
        overlap_embed_null=f((nce**2).mean(1)),
        overlap_unembed_null=f((ncu**2).mean(1)),
        basis_method=f"{basis.method} of {basis.source}",
        basis_labels=tuple(basis.labels),
        basis_importance=basis.importance.float().cpu(),
        mass_share=f(share),
        embed_mass_share=f(mass(e.T)),
        mass_null_mean=f(nm.mean(0)),
        mass_null_lo=f(m_lo),
        mass_null_hi=f(m_hi),
        mass_position=position(share),
        mass_position_null=torch.tensor(null_pos, dtype=torch.float32),
        tokens=tokens,
        options={"n_random": n_random, "seed": seed, "interval": interval},
        processing=processing_state(model),
        cosines_embed_null_mean=f(nce.mean(0)),
        cosines_unembed_null_mean=f(ncu.mean(0)),
    )
