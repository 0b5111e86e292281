"""The circuit as a picture: heads as nodes (with the roles their scores give them), composition
far above random factors as edges.

Edges come from :func:`lensworks.circuits.composition_scores`: a pair (earlier head A, later
head B) is an edge of mode Q, K or V when its score is at least ``z_min`` standard deviations above
the scores of random factors of the same shapes. Node roles come from the behavioural scores
(previous-token, duplicate-token, induction, on repeated random tokens) and the copying score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from lensworks._heads import HeadId
from lensworks._results import Reference, Result
from lensworks.circuits.composition import SIGNIFICANT_Z, composition_scores
from lensworks.circuits.eigen import copying_scores
from lensworks.circuits.heads import behaviour_scores, repeated_tokens
from lensworks.model import (HookedTransformer, LensworksError, check_float, check_int, default_seq_len, processing_state,
                             uses_bos)

__all__ = ["circuit_graph", "CircuitGraph", "Edge"]

Edge = tuple[str, str, str, float, float]  # (from_label, to_label, mode, score, z)


@dataclass(frozen=True)
class CircuitGraph(Result):
    """Heads, their roles, and the composition edges far above chance.

    Attributes:
        nodes: One dict per head: ``label, layer, head, roles`` (a tuple of role names) and the
            scores behind them (``previous_token, duplicate_token, induction, copying``).
        edges: ``(from_label, to_label, mode, score, z)``, strongest z first.
        modes: The composition modes searched.
        z_min: The z threshold of an edge.
        thresholds: Role thresholds used.
        processing: The model's weight-processing state.
        baselines: The random-factor baseline behind each mode's ``z`` (a
            :class:`~lensworks._results.Reference`), by mode; empty for a one-layer model.
    """

    nodes: tuple[dict[str, Any], ...]
    edges: tuple[Edge, ...]
    modes: tuple[str, ...]
    z_min: float
    thresholds: dict[str, float]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    baselines: dict[str, Reference] = dataclasses.field(default_factory=dict)

    def references(self) -> dict[str, Reference]:
        """``{"<mode>_composition": ...}``: the baseline each mode's edges were measured against."""
        return {**super().references(), **{f"{mode}_composition": ref for mode, ref in self.baselines.items()}}

    def to_frame(self):
        """One row per edge: ``from, to, mode, score, z``."""
        import pandas as pd

        return pd.DataFrame(list(self.edges), columns=["from", "to", "mode", "score", "z"])

    def figure(self):
        """Layers left to right, heads top to bottom; edges coloured by mode, width by z."""
        from lensworks.circuits._plots import circuit_graph_figure

        return circuit_graph_figure(self)

    def caption(self) -> str:
        """How nodes and edges are chosen."""
        t = self.thresholds
        return (f"Circuit graph: each head is a node, orange when its scores give it a role (previous-token, "
                f"duplicate-token or induction score at least {t['behaviour']:g}, copying score at least "
                f"{t['copying']:g}); each edge is a pair whose {'/'.join(self.modes)}-composition score is at least "
                f"{self.z_min:g} standard deviations above random factors of the same shapes"
                + "".join(f"; {mode}: {ref.describe()}" for mode, ref in self.baselines.items())
                + ". Hover for the numbers.")

    def headline(self) -> str | None:
        """The strongest edge, if any."""
        if not self.edges:
            return f"No composition at least {self.z_min:g} std above random factors."
        a, b, mode, score, z = self.edges[0]
        return f"Strongest circuit edge: {a} → {b} ({mode}-composition {score:.3f}, z {z:.1f}); {len(self.edges)} edges in all."


def circuit_graph(
    model: HookedTransformer,
    *,
    modes: Sequence[str] = ("Q", "K", "V"),
    z_min: float = SIGNIFICANT_Z,
    behaviour_threshold: float = 0.3,
    copying_threshold: float = 0.5,
    seed: int = 0,
    baseline_samples: int = 200,
    precomputed: dict[str, Any] | None = None,
) -> CircuitGraph:
    """Heads with their roles and the composition edges far above chance.

    Args:
        model: The model (two layers or more for any edge).
        modes: Composition modes to search.
        z_min: An edge needs a score at least this many baseline standard deviations above the mean
            (default ``SIGNIFICANT_Z`` = 3, where the composition heatmaps mark their cells too).
        behaviour_threshold: A behavioural score at least this gives the head that role.
        copying_threshold: A copying score at least this gives the role "copying".
        seed: Seed of the repeated random tokens.
        baseline_samples: Random factor pairs behind each mode's baseline (and so behind ``z``).
        precomputed: Results already at hand, reused instead of recomputed: ``"Q"``/``"K"``/``"V"``
            (:class:`CompositionScores` with a baseline), ``"copying"``, and ``"previous_token"``,
            ``"duplicate_token"``, ``"induction"`` (behavioural scores); the report passes its own.

    Returns:
        A :class:`CircuitGraph`.

    Example:
        >>> g = circuit_graph(zoo.load("induction-2l"))
        >>> g.edges[0][:3]
        ('L0H1', 'L1H3', 'K')
    """
    modes = tuple(modes)
    if not modes or any(m not in ("Q", "K", "V") for m in modes):
        raise LensworksError(f"modes must be a non-empty subset of ('Q', 'K', 'V'), got {modes}")
    z_min = check_float(z_min, "z_min")
    behaviour_threshold = check_float(behaviour_threshold, "behaviour_threshold", low=0, high=1)
    copying_threshold = check_float(copying_threshold, "copying_threshold", low=-1, high=1)
    seed = check_int(seed, "seed")
    baseline_samples = check_int(baseline_samples, "baseline_samples", low=2)
    given = dict(precomputed or {})
    kinds = ("previous_token", "duplicate_token", "induction")
    if all(k in given for k in kinds):
        scores = {k: given[k] for k in kinds}
    else:
        bos = uses_bos(model)
        tokens = repeated_tokens(model, seq_len=default_seq_len(model, bos=bos), n_seqs=32, seed=seed, prepend_bos=bos)
        scores = behaviour_scores(model, tokens, offset=int(bos))
    copying = given["copying"] if "copying" in given else copying_scores(model, baseline=False)
    labels = copying.labels
    H = model.cfg.n_heads
    roles_of = {"previous_token": "previous-token", "duplicate_token": "duplicate-token", "induction": "induction"}
    nodes = []
    for i, label in enumerate(labels):
        layer, head = divmod(i, H)
        values = {k: float(scores[k].scores[layer, head]) for k in roles_of}
        values["copying"] = float(copying.scores[layer, head])
        roles = tuple(name for k, name in roles_of.items() if values[k] >= behaviour_threshold)
        roles += ("copying",) if values["copying"] >= copying_threshold else ()
        nodes.append({"label": label, "layer": layer, "head": head, "roles": roles, **values})
    edges: list[Edge] = []
    baselines: dict[str, Reference] = {}
    if model.cfg.n_layers > 1:
        for mode in modes:
            comp = given.get(mode)
            if comp is None or comp.baseline is None:
                comp = composition_scores(model, mode, baseline_samples=baseline_samples, progress=False)
            baselines[mode] = comp.baseline
            z = comp.z()
            hits = (comp.mask() & (z >= z_min)).nonzero().tolist()
            for la, ha, lb, hb in hits:
                edges.append((HeadId(la, ha).label, HeadId(lb, hb).label, mode, float(comp.scores[la, ha, lb, hb]),
                              float(z[la, ha, lb, hb])))
    edges.sort(key=lambda e: -e[4])
    return CircuitGraph(nodes=tuple(nodes), edges=tuple(edges), modes=modes, z_min=float(z_min),
                        thresholds={"behaviour": float(behaviour_threshold), "copying": float(copying_threshold)},
                        processing=processing_state(model), baselines=baselines)
