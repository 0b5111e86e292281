"""Results of :class:`~lensworks.geometry.NeighbourApproximation`: similar windows, predictions,
their evaluation against the model, and tuned thresholds and weights."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensworks._results import Reference, Result
from lensworks.geometry import _common

__all__ = ["SimilarWindows", "NeighbourPrediction", "NeighbourEvaluation", "TuneResult"]

_EVALUATION_CAPTION = ("FFN-neighbour approximation: next-token distributions predicted from the corpus windows whose "
                       "FFN outputs are most similar, compared with the model's own by Hellinger distance.")


def _outputs(hook: str) -> str:
    """How captions name the compared block outputs."""
    return "FFN outputs" if hook == "mlp_out" else f"{hook} outputs"


def _prompt_columns(labels: tuple[str, ...], matched: Tensor, n_similar: Tensor,
                    blocks: tuple[int, ...]) -> dict[str, Any]:
    """``prompt``, ``matched`` and ``n_similar_b{block}`` columns, one row per prompt."""
    cols: dict[str, Any] = {"prompt": list(labels), "matched": matched.tolist()}
    for i, b in enumerate(blocks):
        cols[f"n_similar_b{b}"] = n_similar[i].tolist()
    return cols


@dataclass(frozen=True)
class SimilarWindows(Result):
    """Corpus windows whose block output has cosine > threshold with the prompt's, best first.

    Attributes:
        prompt: The prompt as text.
        block: The block compared.
        threshold: The cosine threshold (strict).
        indices: Window indices in the index, closest first.
        cosines: Their cosine with the prompt's output.
        texts: Their text.
        next_counts: How many tokens follow each window in the corpus.
        processing: The model's weight-processing state.
    """

    prompt: str
    block: int
    threshold: float
    indices: Int[Tensor, " n_similar"]
    cosines: Float[Tensor, " n_similar"]
    texts: tuple[str, ...]
    next_counts: Int[Tensor, " n_similar"]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_frame(self):
        """One row per window: ``index, text, cosine, n_next``."""
        import pandas as pd

        return pd.DataFrame({"index": self.indices.tolist(), "text": list(self.texts),
                             "cosine": self.cosines.tolist(), "n_next": self.next_counts.tolist()})

    def figure(self, top: int = 40):
        """Bars of the cosines of the ``top`` closest windows, labelled by their text."""
        from lensworks.geometry._plots import similar_windows_figure

        return similar_windows_figure(self, top=top)

    def caption(self) -> str:
        """How to read the bars."""
        return (f"Corpus windows whose block {self.block} output has cosine similarity above {self.threshold:g} with "
                f"the prompt's, closest first: the bar is the cosine (1 = the same direction) and the label is the "
                f"window's text; the hover gives how many tokens follow the window in the corpus, which is how much "
                f"it counts in the prediction.")

    def headline(self) -> str | None:
        """How many windows, and the closest."""
        if not self.texts:
            return f"No corpus window has cosine above {self.threshold:g} with {self.prompt!r} at block {self.block}."
        return (f"{len(self.texts):,} corpus windows have cosine above {self.threshold:g} with {self.prompt!r} at "
                f"block {self.block}; the closest is {self.texts[0]!r} ({float(self.cosines[0]):.3f}).")


@dataclass(frozen=True)
class NeighbourPrediction(Result):
    """Seed 004's weighted next-token distributions for a set of prompts.

    Attributes:
        probs: ``[prompt, d_vocab]`` normalised ``sum_b w_b * counts_b``. A prompt with no
            similar window in any block with non-zero weight gets the corpus's overall
            next-token frequency (the unigram distribution) and ``matched`` False.
        block_counts: ``[block, prompt, d_vocab]`` raw next-token counts summed over the
            similar windows of each block.
        n_similar: ``[block, prompt]`` number of similar windows.
        matched: ``[prompt]`` whether any weighted block found a similar window.
        model_probs: ``[prompt, d_vocab]`` the model's own distribution at the prompt's last token.
        prompt_labels: The prompts as text.
        thresholds: The cosine threshold per block.
        weights: The weight per block.
        blocks: The blocks.
        top_token_labels: Text of the predicted top token per prompt.
        model_top_token_labels: Text of the model's top token per prompt.
        hook: The block output compared.
        processing: The model's weight-processing state.
    """

    probs: Float[Tensor, "n_prompts d_vocab"]
    block_counts: Float[Tensor, "block n_prompts d_vocab"]
    n_similar: Int[Tensor, "block n_prompts"]
    matched: Bool[Tensor, " n_prompts"]
    model_probs: Float[Tensor, "n_prompts d_vocab"]
    prompt_labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    blocks: tuple[int, ...]
    top_token_labels: tuple[str, ...] = ()
    model_top_token_labels: tuple[str, ...] = ()
    hook: str = "mlp_out"
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def hellinger(self) -> Float[Tensor, " n_prompts"]:
        """Hellinger distance between the prediction and the model's distribution, per prompt."""
        return _common.hellinger(self.probs, self.model_probs).float()

    @property
    def top_agrees(self) -> Bool[Tensor, " n_prompts"]:
        """Whether the predicted top token is the model's top token, per prompt."""
        return self.probs.argmax(-1) == self.model_probs.argmax(-1)

    def to_frame(self):
        """One row per prompt: ``prompt, matched, n_similar_b{block}``, the predicted and the model's
        top token with their probabilities, and ``hellinger``.

        Example:
            >>> from lensworks.geometry import NeighbourApproximation
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> prompts = ["def h(z):", "    return"]
            >>> approx.predict(prompts).to_frame().columns[:2].tolist()
            ['prompt', 'matched']
        """
        import pandas as pd

        top_p, top = self.probs.max(-1)
        model_p, model_top = self.model_probs.max(-1)
        cols = _prompt_columns(self.prompt_labels, self.matched, self.n_similar, self.blocks)
        cols.update({
            "top_token": list(self.top_token_labels) or [str(i) for i in top.tolist()], "top_prob": top_p.tolist(),
            "model_top_token": list(self.model_top_token_labels) or [str(i) for i in model_top.tolist()],
            "model_top_prob": model_p.tolist(), "hellinger": self.hellinger.tolist(),
        })
        return pd.DataFrame(cols)

    def figure(self):
        """Per-prompt Hellinger distance, coloured by whether the top tokens agree."""
        from lensworks.geometry._plots import neighbour_prediction_figure

        return neighbour_prediction_figure(self)

    def caption(self) -> str:
        """How to read the bars."""
        return (f"One bar per prompt: the Hellinger distance between the next-token distribution predicted from the "
                f"corpus windows with the most similar {_outputs(self.hook)} and the model's own (0 = the same, "
                f"1 = disjoint). Green bars are prompts whose predicted top token is the model's top token, red bars "
                f"prompts where they differ, grey bars prompts with no similar window (they get the corpus's "
                f"next-token frequencies). Hover for both top tokens and their probabilities.")

    def headline(self) -> str | None:
        """Top-token agreement, mean distance and unmatched prompts."""
        n = len(self.prompt_labels)
        return (f"The predicted top token is the model's on {int(self.top_agrees.sum())} of {n} prompts "
                f"(mean Hellinger {float(self.hellinger.mean()):.3f}); {int((~self.matched).sum())} prompts had no "
                f"similar window.")


@dataclass(frozen=True)
class NeighbourEvaluation(Result):
    """Hellinger distance between the approximation and the model, per prompt and summarised.

    Attributes:
        hellinger: ``[prompt]`` the distance per prompt.
        mean, std, min, max: Its summary over prompts.
        n_unmatched: Prompts with no similar window (they get the corpus's next-token frequencies).
        matched: ``[prompt]`` whether any weighted block found a similar window.
        n_similar: ``[block, prompt]`` number of similar windows.
        prompt_labels: The prompts as text.
        thresholds: The cosine threshold per block.
        weights: The weight per block.
        blocks: The blocks.
        baseline_mean: Mean distance of a prediction that ignores the prompt (the corpus's
            next-token frequencies).
        hook: The block output compared.
        processing: The model's weight-processing state.
    """

    hellinger: Float[Tensor, " n_prompts"]
    mean: float
    std: float
    min: float
    max: float
    n_unmatched: int
    matched: Bool[Tensor, " n_prompts"]
    n_similar: Int[Tensor, "block n_prompts"]
    prompt_labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    blocks: tuple[int, ...]
    baseline_mean: float = float("nan")
    hook: str = "mlp_out"
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_prediction(cls, pred: NeighbourPrediction, baseline_mean: float = float("nan")) -> "NeighbourEvaluation":
        """The evaluation of a prediction (``NeighbourApproximation.evaluate`` adds the baseline).

        Example:
            >>> from lensworks.geometry import NeighbourApproximation
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> prompts = ["def h(z):", "    return"]
            >>> round(NeighbourEvaluation.from_prediction(approx.predict(prompts)).mean, 3)
            0.122
        """
        h = pred.hellinger
        return cls(
            hellinger=h, mean=float(h.mean()), std=float(_common.std_or_zero(h)), min=float(h.min()),
            max=float(h.max()), n_unmatched=int((~pred.matched).sum()), matched=pred.matched,
            n_similar=pred.n_similar, prompt_labels=pred.prompt_labels, thresholds=pred.thresholds,
            weights=pred.weights, blocks=pred.blocks, baseline_mean=baseline_mean, hook=pred.hook,
            processing=dict(pred.processing),
        )

    def to_frame(self):
        """One row per prompt: ``prompt, hellinger, matched`` and ``n_similar_b{block}``."""
        import pandas as pd

        cols = _prompt_columns(self.prompt_labels, self.matched, self.n_similar, self.blocks)
        cols = {"prompt": cols.pop("prompt"), "hellinger": self.hellinger.tolist(), **cols}
        return pd.DataFrame(cols)

    def figure(self):
        """Histogram of the per-prompt Hellinger distances."""
        from lensworks.geometry._plots import neighbour_figure

        return neighbour_figure(self)

    def caption(self) -> str:
        """What is compared, and how to read the histogram."""
        text = _EVALUATION_CAPTION if self.hook == "mlp_out" else _EVALUATION_CAPTION.replace(
            "FFN outputs", _outputs(self.hook)).replace("FFN-neighbour", f"{self.hook}-neighbour")
        return (text + " The histogram counts prompts by that distance (0 = the same distribution, 1 = disjoint); "
                "the title gives the mean ± std and how many prompts had no similar window (they get the corpus's "
                "next-token frequencies).")

    def references(self) -> dict[str, Reference]:
        """``{"baseline": ...}`` when it was computed: the mean distance of the prompt-blind
        prediction (the corpus's next-token frequencies) over the same prompts."""
        out = super().references()
        if math.isfinite(self.baseline_mean):
            out["baseline"] = Reference(mean=float(self.baseline_mean), n=len(self.prompt_labels), kind="baseline",
                                        label="prompt-blind prediction")
        return out

    def headline(self) -> str | None:
        """Mean distance, against the prompt-blind baseline, and unmatched prompts."""
        ref = self.references().get("baseline")
        base = f" ({ref.describe()})" if ref is not None else ""
        return (f"Predicted from similar corpus windows, the next-token distribution is Hellinger {self.mean:.3f} ± "
                f"{self.std:.3f} from the model's over {len(self.prompt_labels)} prompts{base}; {self.n_unmatched} "
                f"had no similar window.")


@dataclass(frozen=True)
class TuneResult(Result):
    """Thresholds and weights found by :meth:`NeighbourApproximation.tune`, and how they did.

    Attributes:
        thresholds: The best cosine threshold per block.
        weights: The best weight per block.
        mean_hellinger: Their mean Hellinger distance on the tuning prompts.
        history: ``(step, mean Hellinger)`` after the start and each round.
        blocks: The blocks.
        processing: The model's weight-processing state.
    """

    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    mean_hellinger: float
    history: tuple[tuple[str, float], ...]
    blocks: tuple[int, ...]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_frame(self):
        """One row per block: ``block, threshold, weight``."""
        import pandas as pd

        return pd.DataFrame({"block": list(self.blocks), "threshold": list(self.thresholds),
                             "weight": list(self.weights)})

    def figure(self):
        """Bars of the tuned threshold and weight per block."""
        from lensworks.geometry._plots import tune_figure

        return tune_figure(self)

    def caption(self) -> str:
        """How to read the two panels."""
        return ("The cosine threshold (left) and weight (right) per block chosen to minimise the mean Hellinger "
                "distance between the neighbour prediction and the model on the tuning prompts: each block's best "
                "threshold alone, then rounds of coordinate descent over weights and thresholds. A weight of 0 "
                "leaves the block out; a larger weight lets its matched windows' counts dominate.")

    def headline(self) -> str | None:
        """The tuned mean distance, against where the search started."""
        start = f" (each block's best threshold alone, equal weights: {self.history[0][1]:.3f})" if self.history else ""
        return f"Tuned thresholds and weights reach mean Hellinger {self.mean_hellinger:.3f} on the tuning prompts{start}."
