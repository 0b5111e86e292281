"""Induction-head verdicts that combine behaviour with mechanism.

A head is called an induction head when three independent pieces of evidence agree:

1. behaviour: on repeated random tokens it attends from each token of the second copy to the
   token after that token's first occurrence (induction score at or above a threshold, and well
   above the uniform-attention chance level);
2. OV mechanism: its full OV circuit copies (positive eigenvalue copying score);
3. QK mechanism: its keys read the output of an earlier previous-token head (K-composition with
   such a head at least ``k_comp_z`` standard deviations above the random-factor baseline).

A head that passes (1) alone is listed with the evidence it lacks, never silently promoted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtyping import Int
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._results import Reference, Result, ResultMixin
from lensworks.circuits.composition import CompositionScores, composition_scores
from lensworks.circuits.eigen import CopyingScores, copying_scores
from lensworks.circuits.heads import BehaviourScores, _check_repeated, behaviour_scores, repeated_tokens
from lensworks.model import HookedTransformer, as_tokens, check_float, default_seq_len, uses_bos

__all__ = ["find_induction_heads", "InductionReport", "HeadEvidence"]


@dataclasses.dataclass(frozen=True)
class HeadEvidence(ResultMixin):
    """The evidence for one head."""

    layer: int
    head: int
    induction: float
    copying: float
    previous_partner: str | None
    k_composition: float
    k_composition_z: float
    is_induction: bool
    reasons: list[str]

    @property
    def label(self) -> str:
        return HeadId(self.layer, self.head).label


@dataclasses.dataclass(frozen=True)
class InductionReport(Result):
    """Which heads are induction heads, and why.

    Attributes:
        heads: ``(layer, head)`` judged to be induction heads, strongest induction score first.
        evidence: One :class:`HeadEvidence` per head, in the same order as ``heads`` for the
            induction heads, then the rest by induction score.
        induction: Induction scores.
        previous: Previous-token scores.
        copying: Copying scores.
        k_composition: K-composition scores.
        thresholds: The thresholds used.
        processing: The model's weight-processing state.
    """

    heads: list[tuple[int, int]]
    evidence: list[HeadEvidence]
    induction: BehaviourScores
    previous: BehaviourScores
    copying: CopyingScores
    k_composition: CompositionScores
    thresholds: dict[str, Any]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def caption(self) -> str:
        """How the verdict is reached."""
        return ("Induction verdict: a head is an induction head when its induction score passes the threshold, "
                "its OV circuit copies (positive copying score), and it K-composes with an earlier previous-token "
                "head well above random factors. Hover a point for the evidence.")

    def references(self) -> dict[str, Reference]:
        """The references of the scores behind the verdict, named ``"<part>.<name>"`` (e.g.
        ``"k_composition.baseline"``, ``"induction.chance"``)."""
        out = super().references()
        for part in ("induction", "previous", "copying", "k_composition"):
            out.update({f"{part}.{name}": ref for name, ref in getattr(self, part).references().items()})
        return out

    def headline(self) -> str | None:
        """The induction heads found, or that there are none."""
        heads = ", ".join(HeadId(l, h).label for l, h in self.heads)
        return f"Induction heads: {heads}." if heads else "No induction heads (behaviour and mechanism do not agree on any head)."

    def to_frame(self):
        """One row per head with every piece of evidence."""
        import pandas as pd

        return pd.DataFrame(
            [dict(label=e.label, **{k: v for k, v in dataclasses.asdict(e).items() if k != "reasons"},
                  reasons="; ".join(e.reasons)) for e in self.evidence]
        )

    def summary(self) -> str:
        """A few lines of plain text: the verdict and the evidence for the top heads."""
        if self.heads:
            lines = [f"induction heads: {', '.join(HeadId(l, h).label for l, h in self.heads)}"]
        else:
            lines = ["no induction heads found"]
        for e in self.evidence[: max(3, len(self.heads))]:
            partner = f"K-comp with {e.previous_partner} {e.k_composition:.3f} (z={e.k_composition_z:.1f})" if e.previous_partner else "no earlier previous-token head"
            verdict = "YES" if e.is_induction else "no: " + "; ".join(e.reasons)
            lines.append(f"  {e.label}: induction {e.induction:.3f}, copying {e.copying:+.3f}, {partner} -> {verdict}")
        return "\n".join(lines)

    def figure(self):
        """Induction score against copying score per head; marker size grows with K-composition z."""
        from lensworks.circuits._plots import induction_scatter

        return induction_scatter(self)


def find_induction_heads(
    model: HookedTransformer,
    *,
    seq_len: int | None = None,
    n_seqs: int = 32,
    seed: int = 0,
    prepend_bos: bool | None = None,
    induction_threshold: float = 0.3,
    previous_threshold: float = 0.3,
    k_comp_z: float = 3.0,
    batch_size: int = 32,
    progress: bool | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    cache: Any = None,
) -> InductionReport:
    """Rank heads by induction behaviour and keep those whose mechanism agrees.

    Args:
        model: The model.
        seq_len: Length of the repeated random sequence (default: up to 50, fitting n_ctx).
        n_seqs: Number of sequences.
        seed: Seed of the random sequences.
        prepend_bos: Start with BOS (default: the model's default when it has a BOS token).
        induction_threshold: Minimum induction score (mean attention to the induction target);
            the score must also be at least 3x the uniform-attention chance level.
        previous_threshold: Minimum previous-token score for an earlier head to count as a
            previous-token head.
        k_comp_z: Minimum K-composition z-score (against random factors) between the head and
            an earlier previous-token head.
        batch_size: Sequences per forward pass.
        progress: Progress bar of the K-composition step (None: only when the work is large).
        tokens: Optional repeated sequences ``[batch, o + 2*seq_len]`` to measure the behaviour on
            (``o`` = 1 with BOS; ``seq_len`` and ``n_seqs`` are then read from them). Default:
            :func:`~lensworks.circuits.repeated_tokens` with ``seq_len``, ``n_seqs``, ``seed``.
        cache: The attention patterns of those tokens, already computed (an ``ActivationCache``
            from ``model.run_with_cache(tokens)`` or a ``{hook name: pattern}`` dict): the
            behavioural scores are read from it and the model does not run (the copying and
            composition scores come from the weights anyway). Without ``tokens``, the cache must
            be of the default repeated tokens (same ``seq_len``, ``n_seqs``, ``seed``).

    Returns:
        :class:`InductionReport`; ``.heads`` is empty for a model without induction heads.

    Example:
        >>> report = find_induction_heads(model)
        >>> print(report.summary())
        induction heads: L1H3, L1H0, L1H1, L1H2
          L1H3: induction 0.726, copying +1.000, K-comp with L0H1 0.208 (z=12.8) -> YES
          L1H0: induction 0.713, copying +1.000, K-comp with L0H0 0.200 (z=11.6) -> YES
          L1H1: induction 0.697, copying +1.000, K-comp with L0H1 0.207 (z=12.6) -> YES
          L1H2: induction 0.657, copying +1.000, K-comp with L0H0 0.197 (z=11.1) -> YES
        >>> from lensworks.circuits import repeated_tokens
        >>> toks = repeated_tokens(model, seq_len=20, n_seqs=8)
        >>> _, cache = model.run_with_cache(toks)  # e.g. a cache you already have
        >>> find_induction_heads(model, tokens=toks, cache=cache).heads == find_induction_heads(model, tokens=toks).heads
        True
    """
    cfg = model.cfg
    induction_threshold = check_float(induction_threshold, "induction_threshold", low=0, high=1)
    previous_threshold = check_float(previous_threshold, "previous_threshold", low=0, high=1)
    k_comp_z = check_float(k_comp_z, "k_comp_z")
    if tokens is None:
        bos = uses_bos(model, prepend_bos)
        if seq_len is None:
            seq_len = default_seq_len(model, bos=bos)
        tokens = repeated_tokens(model, seq_len=seq_len, n_seqs=n_seqs, seed=seed, prepend_bos=bos)
    else:
        tokens = as_tokens(model, tokens, what="tokens")
        bos = bool(_check_repeated(model, tokens, prepend_bos))
        seq_len, n_seqs = (tokens.shape[1] - int(bos)) // 2, tokens.shape[0]
    beh = behaviour_scores(model, tokens, offset=int(bos), kinds=("previous_token", "induction"), batch_size=batch_size,
                           cache=cache)
    ind, prev = beh["induction"], beh["previous_token"]
    copy = copying_scores(model)
    kcomp = composition_scores(model, "K", baseline=True, progress=progress)
    assert kcomp.baseline is not None
    kz = kcomp.z()
    L, H = cfg.n_layers, cfg.n_heads
    evidence = []
    for l in range(L):
        for h in range(H):
            s_ind = float(ind.scores[l, h])
            s_copy = float(copy.scores[l, h])
            partner, kc = None, 0.0
            for lp in range(l):
                for hp in range(H):
                    if float(prev.scores[lp, hp]) >= previous_threshold:
                        v = float(kcomp.scores[lp, hp, l, h])
                        if partner is None or v > kc:
                            partner, kc, z = HeadId(lp, hp).label, v, float(kz[lp, hp, l, h])
            if partner is None:
                z = float("-inf")  # no earlier previous-token head to compose with
            reasons = []
            if s_ind < induction_threshold:
                reasons.append(f"induction score {s_ind:.3f} < {induction_threshold}")
            elif s_ind < 3 * ind.chance:
                reasons.append(f"induction score {s_ind:.3f} < 3x chance ({ind.chance:.3f})")
            if s_copy <= 0:
                reasons.append(f"OV circuit does not copy (copying score {s_copy:+.3f})")
            if partner is None:
                reasons.append("no earlier previous-token head")
            elif z < k_comp_z:
                reasons.append(f"K-composition with {partner} only {z:.1f} std above random")
            evidence.append(HeadEvidence(l, h, s_ind, s_copy, partner, kc, z if partner else 0.0, not reasons, reasons))
    evidence.sort(key=lambda e: (not e.is_induction, -e.induction))
    heads = [(e.layer, e.head) for e in evidence if e.is_induction]
    return InductionReport(
        heads=heads,
        evidence=evidence,
        induction=ind,
        previous=prev,
        copying=copy,
        k_composition=kcomp,
        thresholds={
            "induction": induction_threshold,
            "previous_token": previous_threshold,
            "k_comp_z": k_comp_z,
            "seq_len": seq_len,
            "n_seqs": n_seqs,
            "seed": seed,
            "prepend_bos": bos,
            "from_cache": cache is not None,
        },
        processing=ind.processing,
    )
