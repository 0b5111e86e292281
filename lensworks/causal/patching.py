"""Activation patching: put one activation of a corrupted run into the clean run and measure the change.

A *site* is one slice of one activation: the residual stream entering a block at one position
(``resid_pre``), a block's attention or MLP output at one position (``attn_out``, ``mlp_out``),
one head's output ``z`` (``head_z``) or attention pattern (``head_pattern``), over all positions
or at one (query) position. Patching a site runs the clean prompts with that slice replaced by
the corrupted run's and reads the metric.

TransformerLens's ``get_act_patch_*`` functions run one forward pass per site. Here the sites
are stacked along the batch: ``S`` sites times ``batch`` prompts go through one forward pass, row
``s * batch + i`` being prompt ``i`` with site ``s`` patched. Every hook patches only its own
rows, so each row is exactly the single-site run. Two more savings, both exact: a chunk whose
sites all lie in block ``l`` or later starts from the clean run's cached ``resid_pre`` of block
``l`` (``start_at_layer``), and a metric read at one position unembeds only that position.

``direction="noise"`` (the default) patches corrupted activations into the clean run;
``"denoise"`` patches clean activations into the corrupted run, as TransformerLens's demos do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._results import Result
from lensworks._threads import adaptive_threads
from lensworks.causal._metrics import (PATCH_TARGETS, Metric, MetricLike, Prompts, TokenIds, paired_tokens,
                                      resolve_metric)
from lensworks.model import LensworksError, capture_hooks, check_int, is_bridge, logits_from_block, model_facts
from lensworks.model import processing_state
from lensworks.model._compat import PATTERN_NOT_EDITABLE, require_finite_parameters

__all__ = ["ActivationPatching", "activation_patching", "PATCH_TARGETS", "SweepMixin"]


Positions = Union[None, str, Sequence[int]]


@dataclass(frozen=True)
class Sites:
    """The sites of one target: their hook names, slices and where each score goes."""

    target: str
    shape: tuple[int, ...]
    layers: list[int]
    hooks: list[str]
    slices: list[tuple[Any, ...]]  # index into an activation without its batch axis
    cells: list[tuple[int, ...]]  # index into the score tensor


def _position_list(positions: Positions, n_pos: int) -> list[int] | None:
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions != "each":
            raise LensworksError(f"positions must be None, 'each' or a list of positions, got {positions!r}")
        return list(range(n_pos))
    out = [check_int(p, "positions[]", low=-n_pos, high=n_pos) % n_pos for p in positions]
    if not out:
        raise LensworksError("positions: expected at least one position, got an empty list")
    return out


def build_sites(model: Any, target: str, n_pos: int, positions: Positions) -> Sites:
    """Every site of ``target`` for prompts of ``n_pos`` tokens (see :func:`activation_patching`)."""
    facts = model_facts(model)
    if target not in PATCH_TARGETS:
        raise LensworksError(f"what: expected targets among {list(PATCH_TARGETS)}, got {target!r}")
    stream, kind = PATCH_TARGETS[target]
    if stream in ("attn_out", "mlp_out") and not facts.has_stream(stream):
        raise LensworksError(f"what={target!r}: this model has no {stream} (its streams are {list(facts.streams)})")
    pos = _position_list(positions, n_pos)
    L, H = facts.n_layers, facts.n_heads
    layers, hooks, slices, cells = [], [], [], []
    for layer in range(L):
        name = facts.hook(stream, layer)
        if kind == "pos":
            items = [((p,), (layer, i)) for i, p in enumerate(pos if pos is not None else range(n_pos))]
        elif pos is None:
            items = [(((slice(None), h) if kind == "head" else (h,)), (layer, h)) for h in range(H)]
        else:
            items = [(((p, h) if kind == "head" else (h, p)), (layer, i, h)) for i, p in enumerate(pos) for h in range(H)]
        for sl, cell in items:
            layers.append(layer)
            hooks.append(name)
            slices.append(sl)
            cells.append(cell)
    width = len(pos) if pos is not None else n_pos
    shape = (L, width) if kind == "pos" else ((L, H) if pos is None else (L, width, H))
    return Sites(target, shape, layers, hooks, slices, cells)


def source_cache(model: Any, tokens: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The activations ``names`` of one run (checked finite), without a gradient."""
    store: dict[str, Tensor] = {}

    def grab(name: str, act: Tensor) -> None:
        store[name] = act.detach().clone()

    with torch.inference_mode():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=capture_hooks(sorted(set(names)), grab))
    return store


def _final_logits(model: Any, metric: Metric, inputs: Tensor, start: int, hooks: list, n_sites: int) -> Tensor:
    """Logits of the stacked run: every position, or only each row's read position."""
    kwargs: dict[str, Any] = {"start_at_layer": start} if start > 0 else {}
    if metric.needs_all_positions or is_bridge(model):
        logits = model.run_with_hooks(inputs, fwd_hooks=hooks, return_type="logits", **kwargs)
        if metric.needs_all_positions:
            return logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, metric.read.repeat(n_sites)]
    resid = model.run_with_hooks(inputs, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers, **kwargs)
    rows = torch.arange(resid.shape[0], device=resid.device)
    return logits_from_block(model, resid[rows, metric.read.repeat(n_sites)][:, None], model.cfg.n_layers)[:, 0]


def run_sites(model: Any, base: Tensor, source: dict[str, Tensor], sites: Sites, idx: Sequence[int],
              metric: Metric, base_resid: dict[int, Tensor]) -> Float[Tensor, " n"]:
    """The metric with each site of ``idx`` patched (one forward pass, sites along the batch)."""
    b, S = base.shape[0], len(idx)
    groups: dict[str, list[tuple[int, tuple]]] = {}
    for s, i in enumerate(idx):
        groups.setdefault(sites.hooks[i], []).append((s, sites.slices[i]))

    def make(name: str) -> Callable:
        def patch(act: Tensor, hook: Any) -> Tensor:
            out = act.clone()
            view = out.view(S, b, *out.shape[1:])
            src = source[name]
            for s, sl in groups[name]:
                view[(s, slice(None)) + sl] = src[(slice(None),) + sl]
            return out
        return patch

    hooks = [(name, make(name)) for name in groups]
    start = min(sites.layers[i] for i in idx)
    if start > 0 and start in base_resid:
        inputs = base_resid[start].repeat(S, *([1] * (base_resid[start].ndim - 1)))
    else:
        start, inputs = 0, base.repeat(S, 1)
    with torch.inference_mode():
        logits = _final_logits(model, metric, inputs, start, hooks, S)
        return metric.per_site(logits, S).float().cpu()


def metric_of(model: Any, tokens: Tensor, metric: Metric) -> float:
    """The metric of one unpatched run."""
    with torch.inference_mode():
        return float(metric.per_site(_final_logits(model, metric, tokens, 0, [], 1), 1)[0])


class SweepMixin:
    """What a patching sweep and its gradient estimate share: ``res[target]``, ``normalised()``
    and the notebook view. Needs ``scores``, ``clean_metric`` and ``corrupted_metric``."""

    def __getitem__(self, target: str) -> Tensor:
        if target not in self.scores:
            raise LensworksError(f"no scores for {target!r}; this result has {list(self.scores)}")
        return self.scores[target]

    def normalised(self, target: str | None = None) -> Any:
        """``(patched - corrupted) / (clean - corrupted)``: 1 where patching changes nothing, 0 where
        it gives the corrupted run's metric (noising); one tensor, or a dict when ``target`` is None.

        Example:
            >>> res = activation_patching(model, torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]]),
            ...                           "logit_diff", answer_tokens=3, wrong_tokens=5, what="resid_pre")
            >>> [round(v, 2) for v in res.normalised("resid_pre")[0].tolist()]
            [1.0, 0.0, 1.0, 1.0, 1.0]
        """
        gap = self.clean_metric - self.corrupted_metric
        if gap == 0.0:
            raise LensworksError("normalised(): the clean and corrupted metrics are equal, so there is nothing to normalise by")
        if target is not None:
            return (self[target] - self.corrupted_metric) / gap
        return {k: (v - self.corrupted_metric) / gap for k, v in self.scores.items()}

    def _repr_html_(self) -> str:
        from lensworks.causal._plots import result_html

        return result_html(self)


@dataclass(frozen=True)
class ActivationPatching(SweepMixin, Result):
    """The metric of the clean run with each site patched from the corrupted run.

    Attributes:
        scores: target -> the patched run's metric per site: ``[n_layers, n_pos]`` for
            ``resid_pre`` / ``attn_out`` / ``mlp_out``; ``[n_layers, n_heads]`` for ``head_z`` /
            ``head_pattern`` over all positions, ``[n_layers, n_pos, n_heads]`` per (query) position.
        clean_metric: The metric of the unpatched clean run.
        corrupted_metric: The metric of the unpatched corrupted run.
        metric: What was measured (``"logit_diff"``, ``"prob"``, ``"loss"``, ``"callable"``).
        direction: ``"noise"`` (corrupted activations into the clean run) or ``"denoise"``.
        positions: The positions of the per-position axes (None: heads over all positions).
        tokens: ``[n_pos]`` labels of the first clean prompt's tokens.
        n_prompts: Prompts averaged over.
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
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: How the result was made, for the reader (the report says which prompts); shown under the caption.
    note: str = ""

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.scores.items())
        return (f"{type(self).__name__}({self.metric}, {self.direction}, clean {self.clean_metric:.4g}, "
                f"corrupted {self.corrupted_metric:.4g}; {shapes})")

    def caption(self) -> str:
        """How to read the heatmaps."""
        way = ("the corrupted run's activation put into the clean run" if self.direction == "noise"
               else "the clean run's activation put into the corrupted run")
        return (f"Activation patching: each cell is the {self.metric} metric (mean over {self.n_prompts} prompts) with "
                f"one site ({way}); the clean run gives {self.clean_metric:.4g}, the corrupted {self.corrupted_metric:.4g}. "
                "Cells far from the unpatched run's value mark the activations the difference passes through.")

    def headline(self) -> str | None:
        """The site whose patch moves the metric most."""
        base = self.clean_metric if self.direction == "noise" else self.corrupted_metric
        return best_site_sentence(self.scores, base, self.positions, "Patching")

    def to_frame(self):
        """One row per site: target, layer, position (-1: all), head (-1: none), patched metric and
        the normalised value.

        Example:
            >>> res = activation_patching(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 5, 3]]),
            ...                           "prob", answer_tokens=3, what="head_z")
            >>> res.to_frame().columns.tolist()
            ['target', 'layer', 'position', 'head', 'metric', 'normalised']
        """
        gap = self.clean_metric - self.corrupted_metric
        return sites_frame(self.scores, self.positions,
                           lambda v: (v - self.corrupted_metric) / gap if gap != 0.0 else float("nan"))

    def figure(self):
        """One heatmap per target (a menu switches between them)."""
        from lensworks.causal._plots import patching_figure

        return patching_figure(self)


def best_site_sentence(scores: dict[str, Tensor], base: float, positions: tuple[int, ...] | None, verb: str) -> str | None:
    """A headline naming the site that moves the metric furthest from ``base``."""
    best = None
    for target, values in scores.items():
        if values.numel() == 0:
            continue
        flat = (values - base).abs().flatten()
        i = int(flat.argmax())
        if best is None or float(flat[i]) > best[0]:
            best = (float(flat[i]), target, tuple(int(j) for j in torch.unravel_index(torch.tensor(i), values.shape)),
                    float(values.flatten()[i]))
    if best is None:
        return None
    _, target, cell, value = best
    return f"{verb} {site_label(target, cell, positions)} moves the metric most: {base:.4g} -> {value:.4g}."


def site_label(target: str, cell: tuple[int, ...], positions: tuple[int, ...] | None) -> str:
    """``"resid_pre L1 pos 3"``, ``"head_z L0H2"``, ``"head_pattern L1H0 pos 4"``."""
    from lensworks._heads import HeadId

    if PATCH_TARGETS[target][1] == "pos":
        p = positions[cell[1]] if positions is not None else cell[1]
        return f"{target} L{cell[0]} pos {p}"
    if len(cell) == 2:
        return f"{target} {HeadId(cell[0], cell[1]).label}"
    p = positions[cell[1]] if positions is not None else cell[1]
    return f"{target} {HeadId(cell[0], cell[2]).label} pos {p}"


def sites_frame(scores: dict[str, Tensor], positions: tuple[int, ...] | None, norm: Callable[[float], float]):
    """Long table of per-site scores (shared by both patching results)."""
    import pandas as pd

    rows = []
    for target, values in scores.items():
        kind = PATCH_TARGETS[target][1]
        for cell in torch.cartesian_prod(*[torch.arange(n) for n in values.shape]).tolist():
            cell = tuple(cell)
            v = float(values[cell])
            if kind == "pos":
                layer, p, h = cell[0], (positions[cell[1]] if positions else cell[1]), -1
            elif len(cell) == 2:
                layer, p, h = cell[0], -1, cell[1]
            else:
                layer, p, h = cell[0], (positions[cell[1]] if positions else cell[1]), cell[2]
            rows.append((target, layer, p, h, v, norm(v)))
    return pd.DataFrame(rows, columns=["target", "layer", "position", "head", "metric", "normalised"])


def default_targets(model: Any, what: Any) -> tuple[str, ...]:
    """The targets asked for (None: every target the model has)."""
    editable = model_facts(model).pattern_editable
    if what is None:  # every target the model has, and can patch
        facts = model_facts(model)
        return tuple(t for t in PATCH_TARGETS if (PATCH_TARGETS[t][0] not in ("mlp_out",) or facts.has_stream("mlp_out"))
                     and (t != "head_pattern" or editable))
    if isinstance(what, str):
        what = (what,)
    what = tuple(what)
    if not what:
        raise LensworksError(f"what: expected at least one of {list(PATCH_TARGETS)}, got nothing")
    if "head_pattern" in what and not editable:
        raise LensworksError(PATTERN_NOT_EDITABLE.format(what="patching head_pattern"))
    return what


def prepare(model: Any, clean: Any, corrupted: Any, metric: MetricLike, *, answer_tokens: TokenIds,
            wrong_tokens: TokenIds, position: int, prepend_bos: bool | None, direction: str):
    """Shared argument handling: tokens, the resolved metric, base and source runs."""
    if direction not in ("noise", "denoise"):
        raise LensworksError(f"direction must be 'noise' or 'denoise', got {direction!r}")
    require_finite_parameters(model)
    clean_t, corr_t, lengths = paired_tokens(model, clean, corrupted, prepend_bos=prepend_bos)
    m = resolve_metric(model, metric, clean_t, lengths, answer_tokens=answer_tokens, wrong_tokens=wrong_tokens,
                       position=position)
    base, source = (clean_t, corr_t) if direction == "noise" else (corr_t, clean_t)
    return clean_t, corr_t, base, source, m


def token_labels(model: Any, tokens: Tensor) -> tuple[str, ...]:
    """Labels of the first prompt's tokens."""
    from lensworks.model import token_strings

    try:
        return tuple(token_strings(model, tokens[0].tolist()))
    except LensworksError:
        return tuple(str(t) for t in tokens[0].tolist())


@adaptive_threads
def activation_patching(
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
    batch_size: int = 64,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> ActivationPatching:
    """Patch each site's activation from one run into the other and measure the metric.

    The same numbers as TransformerLens's ``get_act_patch_resid_pre``, ``..._attn_out``,
    ``..._mlp_out``, ``..._attn_head_out_all_pos`` / ``_by_pos`` and
    ``..._attn_head_pattern_all_pos`` / ``_by_pos`` (called with the run patched *into* as their
    ``corrupted_tokens`` and the other run's cache as their ``clean_cache``), computed with many
    sites per forward pass (``batch_size`` sites, each with every prompt).

    Args:
        model: The model (not modified).
        clean: Clean prompts: strings or a ``[batch, pos]`` token tensor.
        corrupted: Corrupted prompts, token for token aligned with ``clean``.
        metric: ``"logit_diff"``, ``"loss"``, ``"prob"`` or a callable from logits
            ``[batch, pos, d_vocab]`` to ``[batch]`` or a scalar.
        what: Targets among ``resid_pre``, ``attn_out``, ``mlp_out``, ``head_z``, ``head_pattern``
            (None: all the model has).
        positions: For ``head_z`` / ``head_pattern``: None patches each head at every position at
            once, ``"each"`` each (head, position), a list of positions only those. For the
            per-position targets: None or ``"each"`` every position, a list only those.
        answer_tokens: Answer token id(s) of ``"logit_diff"``, ``"prob"`` and ``"loss"``.
        wrong_tokens: Wrong answer token id(s) of ``"logit_diff"``.
        position: Where named metrics read the answer (negative: from each prompt's end).
        direction: ``"noise"`` (corrupted into clean, the default) or ``"denoise"`` (clean into corrupted).
        batch_size: Sites per forward pass (each site is ``batch`` rows).
        prepend_bos: Prepend BOS to strings (default: the model's setting).
        progress: Progress bar (None: only on a terminal).

    Returns:
        An :class:`ActivationPatching`.

    Example:
        >>> res = activation_patching(model, torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]]),
        ...                           "logit_diff", answer_tokens=3, wrong_tokens=5, what=("resid_pre", "head_z"))
        >>> res["resid_pre"].shape, res["head_z"].shape
        (torch.Size([2, 5]), torch.Size([2, 4]))
    """
    from lensworks.geometry._common import progress_bar

    batch_size = check_int(batch_size, "batch_size", low=1)
    clean_t, corr_t, base, source, m = prepare(
        model, clean, corrupted, metric, answer_tokens=answer_tokens, wrong_tokens=wrong_tokens,
        position=position, prepend_bos=prepend_bos, direction=direction)
    targets = default_targets(model, what)
    n_pos = clean_t.shape[1]
    all_sites = [build_sites(model, t, n_pos, positions) for t in targets]
    facts = model_facts(model)
    start_ok = facts.positional_embedding != "shortformer"
    resid_names = [facts.hook("resid_pre", l) for l in range(1, facts.n_layers)] if start_ok else []
    src = source_cache(model, source, [h for s in all_sites for h in s.hooks])
    base_store = source_cache(model, base, resid_names) if resid_names else {}
    base_resid = {l: base_store[facts.hook("resid_pre", l)] for l in range(1, facts.n_layers) if resid_names}
    clean_value, corrupted_value = metric_of(model, clean_t, m), metric_of(model, corr_t, m)
    scores: dict[str, Tensor] = {}
    rows = max(1, batch_size)
    jobs = [(s, list(range(i, min(i + rows, len(s.hooks))))) for s in all_sites for i in range(0, len(s.hooks), rows)]
    results: dict[str, list[Tensor]] = {s.target: [] for s in all_sites}
    for s, idx in progress_bar(jobs, desc="activation_patching", progress=progress):
        results[s.target].append(run_sites(model, base, src, s, idx, m, base_resid))
    for s in all_sites:
        flat = torch.cat(results[s.target]) if results[s.target] else torch.zeros(0)
        out = torch.zeros(s.shape)
        for value, cell in zip(flat.tolist(), s.cells):
            out[cell] = value
        scores[s.target] = out
    p = _position_list(positions, n_pos)
    return ActivationPatching(
        scores=scores, clean_metric=clean_value, corrupted_metric=corrupted_value, metric=m.name,
        direction=direction, positions=tuple(p) if p is not None and isinstance(positions, (list, tuple)) else None,
        tokens=token_labels(model, clean_t), n_prompts=int(clean_t.shape[0]), processing=processing_state(model),
    )
