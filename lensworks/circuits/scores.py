"""``HeadScores``: one number per attention head, the shape most circuit scores share."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtyping import Float
from torch import Tensor

from lensworks._results import Result
from lensworks.model import LensworksError
from lensworks.model._core import check_int

__all__ = ["HeadScores"]


@dataclasses.dataclass(frozen=True)
class HeadScores(Result):
    """One number per head.

    Attributes:
        scores: ``[n_layers, n_heads]``.
        kind: Which score ("copying", "previous_token", "duplicate_token", "induction", a
            TransformerLens detection name such as "induction_head", or "custom").
        labels: Head labels ``L{layer}H{head}``, layer-major.
        options: The options the score was computed with.
        processing: The model's weight-processing state.
    """

    scores: Float[Tensor, "n_layers n_heads"]
    kind: str
    labels: list[str]
    options: dict[str, Any]
    processing: dict[str, Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scores.ndim != 2:
            raise LensworksError(f"scores must be [n_layers, n_heads], got shape {tuple(self.scores.shape)}")
        if len(self.labels) != self.scores.numel():
            raise LensworksError(f"{len(self.labels)} labels for {self.scores.numel()} heads")

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring heads as ``(label, score)``, strongest first.

        Example:
            >>> from lensworks.circuits import head_scores
            >>> scores = head_scores(model, "previous_token")
            >>> [(label, round(score, 2)) for label, score in scores.top(1)]
            [('L0H1', 0.64)]
        """
        k = check_int(k, "k", low=1)
        vals, idx = self.scores.flatten().topk(min(k, self.scores.numel()))
        return [(self.labels[i], v) for v, i in zip(vals.tolist(), idx.tolist())]

    def to_frame(self):
        """One row per head: ``label, layer, head, score``."""
        import pandas as pd

        n_layers, n_heads = self.scores.shape
        flat = self.scores.detach().cpu().flatten().tolist()
        return pd.DataFrame(
            {"label": self.labels, "layer": [i // n_heads for i in range(len(flat))],
             "head": [i % n_heads for i in range(len(flat))], "score": flat}
        )

    def figure(self):
        """Heatmap of the score, layers by heads."""
        from lensworks._figures import sentence_case
        from lensworks.plotting import head_heatmap, reference_title

        n_layers, n_heads = self.scores.shape
        pretty = self.kind.replace("_", "-")
        measure = self.options.get("error_measure")  # set for detection patterns (detect_head's scores)
        diverging = self.kind == "copying" or measure == "abs"
        colorbar = {"abs": "1 - mean |A - D| per row", "mul": "attention on the pattern (0..1)"}.get(
            measure, "score (-1..1)" if diverging else "mean attention (0..1)")
        return head_heatmap(
            self.scores.detach().cpu(),
            title=reference_title(sentence_case(f"{pretty} score per head"), self.references().values()),
            x_labels=[f"H{h}" for h in range(n_heads)],
            y_labels=[f"L{l}" for l in range(n_layers)],
            x_title="head",
            y_title="layer",
            colorbar_title=colorbar,
            zmin=-1.0 if diverging else 0.0,
            zmax=1.0,
            colorscale="RdBu" if diverging else "Viridis",
            hover_name=pretty,
        )

    def caption(self) -> str:
        """What the score measures (subclasses with more to say override this)."""
        return f"{self.kind.replace('_', '-')} score per head, layers by heads."
