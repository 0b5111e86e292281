"""Attribution patching: activation patching's first-order estimate from one backward pass.

Patching site ``a`` (an activation slice) from value ``a_base`` to ``a_src`` changes the metric
``M`` by ``M(a_src) - M(a_base) ≈ <∂M/∂a at a_base, a_src - a_base>``. One forward and one
backward pass of the run being patched give ``∂M/∂a`` for every activation at once; one forward
pass of the other run gives ``a_src``. Summing the product over a site's slice (and over prompts,
the metric being their mean) estimates every site of :func:`activation_patching` at the cost of
two forward passes and one backward pass. The estimate is exact where the metric is linear in
the site (a head's output read by a logit difference without a final norm) and degrades where
the patch pushes a non-linearity (a softmax, a norm) far from where it was differentiated.

The gradient is taken through zero-valued leaves added at each hook (``act + 0``), with
:func:`torch.autograd.grad`, so the parameters' ``.grad`` are never touched and the model is
unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from lensworks._results import Result
from lensworks._threads import adaptive_threads
from lensworks.causal._metrics import MetricLike, Prompts, TokenIds
from lensworks.causal.patching import (
    PATCH_TARGETS, ActivationPatching, SweepMixin, Positions, _position_list, best_site_sentence, build_sites, default_targets,
    prepare, sites_frame, source_cache, token_labels,
)
from lensworks.model import capture_hooks, model_facts, processing_state

__all__ = ["AttributionPatching", "attribution_patching"]


@dataclass(frozen=True)
class AttributionPatching(SweepMixin, Result):
    """The first-order estimate of each site's patched metric (same layout as :class:`ActivationPatching`).

    Attributes:
        scores: target -> estimated metric of the patched run, shaped as in :class:`ActivationPatching`.
        clean_metric, corrupted_metric: The unpatched runs' metrics.
        metric, direction, positions, tokens, n_prompts: As in :class:`ActivationPatching`.
        correlation: target -> Pearson correlation with the exact sweep, when one was given
            (``exact=``); empty otherwise.
        note: How the result was made (the report names its prompts); shown under the caption.
    """

    scores: dict[str, Tensor]
    clean_metric: float
    corrupted_metric: float
    metric: str
    direction: str
    positions: tuple[int, ...] | None
    tokens: tuple[str, ...]
    n_prompts: int
    correlation: dict[str, float] = dataclasses.field(default_factory=dict)
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: How the result was made, for the reader (the report says which prompts); shown under the caption.
    note: str = ""

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.scores.items())
        corr = "".join(f", r[{k}]={v:.3f}" for k, v in self.correlation.items())
        return (f"{type(self).__name__}({self.metric}, {self.direction}, clean {self.clean_metric:.4g}, "
                f"corrupted {self.corrupted_metric:.4g}; {shapes}{corr})")

    def caption(self) -> str:
        """How to read the heatmaps."""
        corr = ""
        if self.correlation:
            corr = " Correlation with the exact sweep: " + ", ".join(f"{k} {v:.3f}" for k, v in self.correlation.items()) + "."
        return (f"Attribution patching: each cell estimates the {self.metric} metric (mean over {self.n_prompts} "
                "prompts) with one site patched, to first order: the unpatched run's metric plus the gradient "
                "times the change of the activation. Exact where the metric is linear in the site; large patches "
                f"through softmaxes and norms are only approximated.{corr}")

    def headline(self) -> str | None:
        """The site estimated to move the metric most."""
        base = self.clean_metric if self.direction == "noise" else self.corrupted_metric
        return best_site_sentence(self.scores, base, self.positions, "Patching (estimated)")

    def to_frame(self):
        """One row per site, as :meth:`ActivationPatching.to_frame` (``metric`` is the estimate).

        Example:
            >>> res = attribution_patching(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]]),
            ...                            "prob", answer_tokens=3, what="head_z")
            >>> len(res.to_frame())
            8
        """
        gap = self.clean_metric - self.corrupted_metric
        return sites_frame(self.scores, self.positions,
                           lambda v: (v - self.corrupted_metric) / gap if gap != 0.0 else float("nan"))

    def figure(self):
        """One heatmap per target (a menu switches between them)."""
        from lensworks.causal._plots import patching_figure

        return patching_figure(self, title="Attribution patching")


def _reduce(target: str, contrib: Tensor, pos: list[int] | None) -> Tensor:
    """Sum one layer's ``grad * delta`` over each site's slice (and the prompts)."""
    kind = PATCH_TARGETS[target][1]
    if kind == "pos":  # [batch, pos, d]
        out = contrib.sum(dim=(0, 2))
        return out[pos] if pos is not None else out
    if kind == "head":  # [batch, pos, head, d_head]
        return contrib.sum(dim=(0, 1, 3)) if pos is None else contrib.sum(dim=(0, 3))[pos]
    # pattern [batch, head, query, key]
    return contrib.sum(dim=(0, 2, 3)) if pos is None else contrib.sum(dim=(0, 3)).T[pos]


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a @ b) / den) if den > 0 else float("nan")


@adaptive_threads
def attribution_patching(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    metric: MetricLike,
    *,
    what: Union[str, Sequence[str], None] = None,
    positions: Positions = None,
    answer_tokens: TokenIds = None,
    wrong_tokens: TokenIds = None,
    position: int = -1,
    direction: str = "noise",
    exact: ActivationPatching | None = None,
    prepend_bos: bool | None = None,
) -> AttributionPatching:
    """Estimate :func:`activation_patching`'s sweep from gradients (two forward passes, one backward).

    Takes the same arguments as :func:`activation_patching` (no ``batch_size``: everything is one
    pass). ``exact``, an :class:`ActivationPatching` of the same sweep, adds the correlation of
    the estimate with it per target.

    Returns:
        An :class:`AttributionPatching`.

    Example:
        >>> from lensworks.causal import activation_patching
        >>> clean, corrupted = torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]])
        >>> args = dict(answer_tokens=3, wrong_tokens=5, what="head_z")
        >>> exact = activation_patching(model, clean, corrupted, "logit_diff", **args)
        >>> approx = attribution_patching(model, clean, corrupted, "logit_diff", exact=exact, **args)
        >>> approx["head_z"].shape, -1 <= approx.correlation["head_z"] <= 1
        (torch.Size([2, 4]), True)
    """
    with torch.inference_mode(False):  # the gradient is taken also when called under inference_mode
        return _attribution(model, clean, corrupted, metric, what=what, positions=positions,
                            answer_tokens=answer_tokens, wrong_tokens=wrong_tokens, position=position,
                            direction=direction, exact=exact, prepend_bos=prepend_bos)


def _normal(t: Any) -> Any:
    """A normal tensor (an inference-mode tensor cannot be saved for backward)."""
    return t.clone() if isinstance(t, Tensor) else t


def _attribution(model: Any, clean: Any, corrupted: Any, metric: MetricLike, *, what: Any, positions: Positions,
                 answer_tokens: TokenIds, wrong_tokens: TokenIds, position: int, direction: str,
                 exact: ActivationPatching | None, prepend_bos: bool | None) -> AttributionPatching:
    clean_t, corr_t, base, source, m = prepare(
        model, clean, corrupted, metric, answer_tokens=answer_tokens, wrong_tokens=wrong_tokens,
        position=position, prepend_bos=prepend_bos, direction=direction)
    clean_t, corr_t, base, source = (_normal(t) for t in (clean_t, corr_t, base, source))
    m = dataclasses.replace(m, **{f.name: _normal(getattr(m, f.name)) for f in dataclasses.fields(m) if f.name != "fn"})
    targets = default_targets(model, what)
    n_pos = clean_t.shape[1]
    all_sites = [build_sites(model, t, n_pos, positions) for t in targets]  # checks targets, gives shapes
    facts = model_facts(model)
    names = sorted({facts.hook(PATCH_TARGETS[t][0], l) for t in targets for l in range(facts.n_layers)})
    src = source_cache(model, source, names)
    zeros: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    def leaf(name: str, act: Tensor) -> Tensor:
        acts[name] = act.detach()
        zeros[name] = torch.zeros_like(act, requires_grad=True)
        return act + zeros[name]

    with torch.enable_grad():
        logits = model.run_with_hooks(base, return_type="logits", fwd_hooks=capture_hooks(names, leaf))
        if not m.needs_all_positions:
            logits = logits[torch.arange(logits.shape[0], device=logits.device), m.read]
        value = m.per_site(logits, 1)[0]
        grads = torch.autograd.grad(value, [zeros[n] for n in names], allow_unused=True)
    grad = {n: (g if g is not None else torch.zeros_like(acts[n])) for n, g in zip(names, grads)}
    base_value = float(value.detach())
    with torch.inference_mode():
        other_value = float(m.per_site(_logits_at(model, source, m), 1)[0])
    clean_value, corrupted_value = (base_value, other_value) if direction == "noise" else (other_value, base_value)
    pos = _position_list(positions, n_pos)
    scores: dict[str, Tensor] = {}
    for s in all_sites:
        stream = PATCH_TARGETS[s.target][0]
        rows = []
        for layer in range(facts.n_layers):
            n = facts.hook(stream, layer)
            contrib = grad[n].double() * (src[n].double() - acts[n].double())
            rows.append(_reduce(s.target, contrib, pos))
        scores[s.target] = (base_value + torch.stack(rows)).float().cpu().reshape(s.shape)
    correlation = {}
    if exact is not None:
        for t, v in scores.items():
            if t in exact.scores and exact.scores[t].shape == v.shape:
                correlation[t] = _pearson(v, exact.scores[t])
    return AttributionPatching(
        scores=scores, clean_metric=clean_value, corrupted_metric=corrupted_value, metric=m.name,
        direction=direction, positions=tuple(pos) if pos is not None and isinstance(positions, (list, tuple)) else None,
        tokens=token_labels(model, clean_t), n_prompts=int(clean_t.shape[0]), correlation=correlation,
        processing=processing_state(model),
    )


def _logits_at(model: Any, tokens: Tensor, m: Any) -> Tensor:
    logits = model(tokens, return_type="logits")
    if m.needs_all_positions:
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), m.read]
