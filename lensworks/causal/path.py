"""Path patching: the effect of sender heads on one receiver, through the direct path only.

Wang et al. (2022, the IOI circuit) ask not "does this head matter" (activation patching) but
"does it matter *through this path*". Here, with clean and corrupted prompts that line up token
for token:

1. the clean and the corrupted runs are cached (every head's output ``z``);
2. a run on the clean prompts takes the sender heads' outputs from the corrupted run and freezes
   every other head's output at its clean value (MLPs recompute, so a path may pass through them,
   as in the paper); whatever changes downstream reached the residual stream from the senders;
3. the receiver reads that residual: for ``"logits"`` the metric is read from this run; for a
   head's query, key or value input ``(layer, head, "q"|"k"|"v")`` only that input is recomputed
   (the other two are held at their clean values) and the receiver's new output is put into a
   fresh clean run, whose metric is read.

So a sender moves the metric only through the receiver's chosen input. Several sender groups (or
every upstream head, one at a time, with ``sender_heads="each"``) go through one forward pass,
stacked along the batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._results import Result
from lensworks._threads import adaptive_threads
from lensworks.causal._metrics import Metric, MetricLike, TokenIds, paired_tokens, resolve_metric
from lensworks.model import LensworksError, capture_hooks, check_int, model_facts, processing_state
from lensworks.model._compat import require_finite_parameters

__all__ = ["PathPatching", "path_patching", "parse_receiver"]

HeadLike = Union[HeadId, tuple[int, int], str]
_WORDS = {"logit_diff": "logit difference", "prob": "answer probability", "loss": "loss", "callable": "metric"}
Receiver = Union[str, tuple[int, int, str]]


def parse_receiver(model: Any, receiver: Any) -> tuple[int, int, str] | None:
    """``None`` for ``"logits"``, else ``(layer, head, "q"|"k"|"v")`` checked against the model.

    A head's input is ``(layer, head, "q"|"k"|"v")`` or its label, ``"L1H2.k"`` (what
    :attr:`PathPatching.receiver` shows).

    Example:
        >>> parse_receiver(model, (1, 2, "k")), parse_receiver(model, "L1H2.q"), parse_receiver(model, "logits")
        ((1, 2, 'k'), (1, 2, 'q'), None)
    """
    facts = model_facts(model)
    if isinstance(receiver, str) and receiver == "logits":
        return None
    if isinstance(receiver, str) and receiver.count(".") == 1:
        label, which = receiver.split(".")
        try:
            hid = HeadId.parse(label)
        except LensworksError:
            hid = None
        if hid is not None:
            receiver = (hid.layer, hid.head, which)
    if not (isinstance(receiver, (tuple, list)) and len(receiver) == 3 and receiver[2] in ("q", "k", "v")):
        raise LensworksError(f"receiver must be 'logits', (layer, head, 'q'|'k'|'v') or a label like 'L1H2.k', "
                             f"got {receiver!r}")
    layer = check_int(receiver[0], "receiver layer", low=0, high=facts.n_layers)
    head = check_int(receiver[1], "receiver head", low=0, high=facts.n_heads)
    return layer, head, str(receiver[2])


def _head(model: Any, value: Any) -> HeadId:
    facts = model_facts(model)
    if isinstance(value, str):
        hid = HeadId.parse(value)
    elif isinstance(value, HeadId):
        hid = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        hid = HeadId(check_int(value[0], "sender layer"), check_int(value[1], "sender head"))
    else:
        raise LensworksError(f"a sender head is a HeadId, (layer, head) or a label like 'L0H1', got {value!r}")
    check_int(hid.layer, "sender layer", low=0, high=facts.n_layers)
    check_int(hid.head, "sender head", low=0, high=facts.n_heads)
    return hid


def _is_head(value: Any) -> bool:
    return isinstance(value, (HeadId, str)) or (
        isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) or hasattr(v, "__index__")
                                                                     for v in value) and not isinstance(value[0], (tuple, list)))


def _sender_groups(model: Any, sender_heads: Any, receiver: tuple[int, int, str] | None) -> tuple[tuple[HeadId, ...], ...]:
    """Groups of heads patched together: one group, several, or each upstream head alone (``"each"``)."""
    facts = model_facts(model)
    top = facts.n_layers if receiver is None else receiver[0]
    if isinstance(sender_heads, str) and sender_heads == "each":
        groups = tuple((HeadId(l, h),) for l in range(top) for h in range(facts.n_heads))
        if not groups:
            raise LensworksError(f"no head lies upstream of the receiver in layer {top}; pick a later receiver")
        return groups
    if _is_head(sender_heads):
        groups = ((_head(model, sender_heads),),)
    elif isinstance(sender_heads, (list, tuple)) and sender_heads and all(_is_head(s) for s in sender_heads):
        groups = (tuple(_head(model, s) for s in sender_heads),)
    elif isinstance(sender_heads, (list, tuple)) and sender_heads and all(
            isinstance(g, (list, tuple)) and g and all(_is_head(s) for s in g) for g in sender_heads):
        groups = tuple(tuple(_head(model, s) for s in g) for g in sender_heads)
    else:
        raise LensworksError("sender_heads must be 'each', a head (HeadId, (layer, head) or 'L0H1'), a list of heads "
                             f"patched together or a list of such lists, got {sender_heads!r}")
    late = sorted({h.label for g in groups for h in g if h.layer >= top})
    if late:
        raise LensworksError(f"sender heads {late} are not upstream of the receiver (layer {top}); a sender must lie "
                             "in an earlier layer than the head it sends to")
    return groups


def _logits_at(model: Any, metric: Metric, tokens: Tensor, hooks: list, n: int) -> Tensor:
    """The run's logits: every position when the metric needs them, else each row's read position."""
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, return_type="logits")
    if metric.needs_all_positions:
        return logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, metric.read.repeat(n)]


def _cache(model: Any, tokens: Tensor, names: Sequence[str], metric: Metric) -> tuple[dict[str, Tensor], float]:
    store: dict[str, Tensor] = {}
    with torch.inference_mode():
        logits = _logits_at(model, metric, tokens, capture_hooks(names, lambda n, a: store.__setitem__(n, a.clone())), 1)
        return store, float(metric.per_site(logits, 1)[0])


def _patched_values(model: Any, clean_t: Tensor, clean: dict[str, Tensor], corr: dict[str, Tensor],
                    groups: Sequence[tuple[HeadId, ...]], receiver: tuple[int, int, str] | None,
                    metric: Metric) -> Tensor:
    """The metric with each group's path patched (groups stacked along the batch)."""
    facts = model_facts(model)
    G, b = len(groups), clean_t.shape[0]
    top = facts.n_layers if receiver is None else receiver[0]
    mask = torch.zeros(top, G, facts.n_heads, dtype=torch.bool)
    for g, heads in enumerate(groups):
        for h in heads:
            mask[h.layer, g, h.head] = True

    def freeze(layer: int) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            z_clean = clean[facts.hook("z", layer)].repeat(G, 1, 1, 1)
            z_corr = corr[facts.hook("z", layer)].repeat(G, 1, 1, 1)
            m = mask[layer].to(act.device).repeat_interleave(b, 0)[:, None, :, None]
            return torch.where(m, z_corr, z_clean).to(act.dtype)
        return hook

    hooks = [(facts.hook("z", l), freeze(l)) for l in range(top)]
    tokens = clean_t.repeat(G, 1)
    with torch.inference_mode():
        if receiver is None:
            return metric.per_site(_logits_at(model, metric, tokens, hooks, G), G).float().cpu()
        layer, head, which = receiver
        held: dict[str, Tensor] = {}

        def keep_clean(name: str) -> Callable:
            return lambda act, hook: clean[name].repeat(G, *([1] * (act.ndim - 1))).to(act.dtype)

        def grab(act: Tensor, hook: Any) -> None:
            held["z"] = act[:, :, head].clone()

        fixed = [f"blocks.{layer}.attn.hook_{x}" for x in ("q", "k", "v") if x != which]
        model.run_with_hooks(tokens, fwd_hooks=hooks + [(n, keep_clean(n)) for n in fixed]
                             + [(facts.hook("z", layer), grab)], stop_at_layer=layer + 1)

        def put(act: Tensor, hook: Any) -> Tensor:
            out = act.clone()
            out[:, :, head] = held["z"].to(act.dtype)
            return out

        logits = _logits_at(model, metric, tokens, [(facts.hook("z", layer), put)], G)
        return metric.per_site(logits, G).float().cpu()


@dataclass(frozen=True)
class PathPatching(Result):
    """The metric when only the path from sender heads to a receiver carries the corrupted run.

    Attributes:
        receiver: ``"logits"`` or ``"L{layer}H{head}.{q|k|v}"``.
        sender_groups: The heads patched together in each run.
        patched: ``[n_groups]`` the metric with each group's path patched.
        clean_metric: The metric of the clean run.
        corrupted_metric: The metric of the corrupted run.
        metric: What was measured (``"logit_diff"``, ``"prob"``, ``"loss"``, ``"callable"``).
        sweep: True when every upstream head was a sender on its own (``sender_heads="each"``).
        n_layers, n_heads: The model's shape (for :meth:`effect_grid`).
        n_prompts: Prompts averaged over.
    """

    receiver: str
    sender_groups: tuple[tuple[str, ...], ...]
    patched: Float[Tensor, " n_groups"]
    clean_metric: float
    corrupted_metric: float
    metric: str
    sweep: bool
    n_layers: int
    n_heads: int
    n_prompts: int
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sender_labels(self) -> tuple[str, ...]:
        """One label per group: its heads joined with ``+``."""
        return tuple("+".join(g) for g in self.sender_groups)

    @property
    def metric_words(self) -> str:
        """The metric in words, for headlines and titles."""
        return _WORDS.get(self.metric, self.metric)

    @property
    def change(self) -> Float[Tensor, " n_groups"]:
        """``patched - clean``: how far each group's path moves the metric."""
        return self.patched - self.clean_metric

    def normalised(self) -> Float[Tensor, " n_groups"]:
        """``(patched - clean) / (corrupted - clean)``: 0 when the path carries nothing of the
        corruption, 1 when it carries all of the corrupted run's change (NaN when the two runs agree)."""
        gap = self.corrupted_metric - self.clean_metric
        return self.change / gap if gap != 0.0 else torch.full_like(self.patched, float("nan"))

    def effect_grid(self) -> Float[Tensor, "n_layers n_heads"]:
        """A sweep's ``patched - clean`` per sender head (NaN for heads not upstream of the receiver).

        Example:
            >>> res = path_patching(model, torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]]),
            ...                     "each", "logits", "logit_diff", answer_tokens=3, wrong_tokens=5)
            >>> tuple(res.effect_grid().shape)
            (2, 4)
        """
        grid = torch.full((self.n_layers, self.n_heads), float("nan"))
        for label, value in zip(self.sender_labels, self.change):
            if "+" not in label:
                hid = HeadId.parse(label)
                grid[hid.layer, hid.head] = float(value)
        return grid

    def caption(self) -> str:
        """How to read the figure."""
        return (f"Path patching into {self.receiver}: the clean prompts run with the sender heads' outputs taken "
                f"from the corrupted prompts and every other head's output frozen at its clean value (MLPs recompute); "
                + ("the logits are read from that run. " if self.receiver == "logits" else
                   "only the receiver's input recomputes from that residual and its new output goes into a clean run. ")
                + f"Values are the {self.metric_words} (mean over {self.n_prompts} prompts; clean {self.clean_metric:.4g}, "
                f"corrupted {self.corrupted_metric:.4g}); a sender whose value stays at the clean one does not act "
                "on the receiver through this path.")

    def headline(self) -> str | None:
        """The sender group whose path moves the metric most."""
        if not len(self.patched):
            return None
        i = int(self.change.abs().argmax())
        norm = self.normalised()[i]
        share = "" if torch.isnan(norm) else f", {round(float(norm), 2) + 0.0:.0%} of the corrupted run's change"
        return (f"Patching {self.sender_labels[i]} -> {self.receiver} moves the {self.metric_words} by "
                f"{float(self.change[i]):+.3f}{share}.")

    def to_frame(self):
        """One row per sender group: senders, receiver, patched metric, change and normalised change.

        Example:
            >>> res = path_patching(model, torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]]),
            ...                     [(0, 0)], (1, 0, "k"), "prob", answer_tokens=3)
            >>> res.to_frame().columns.tolist()
            ['senders', 'receiver', 'metric', 'change', 'normalised']
        """
        import pandas as pd

        return pd.DataFrame({"senders": list(self.sender_labels), "receiver": self.receiver,
                             "metric": self.patched.tolist(), "change": self.change.tolist(),
                             "normalised": self.normalised().tolist()})

    def figure(self):
        """A heatmap of a sweep (sender layer x head), or bars of the clean, corrupted and patched metric."""
        from lensworks.causal._dla_plots import path_figure

        return path_figure(self)


@adaptive_threads
def path_patching(
    model: Any,
    clean: Any,
    corrupted: Any,
    sender_heads: Any,
    receiver: Receiver = "logits",
    metric: MetricLike = "logit_diff",
    *,
    answer_tokens: TokenIds = None,
    wrong_tokens: TokenIds = None,
    position: int = -1,
    prepend_bos: bool | None = None,
    batch_size: int = 16,
) -> PathPatching:
    """Patch the path from sender heads to a receiver (logits, or one head's q, k or v input).

    See the module's description for the three runs. ``metric`` is a name (``"logit_diff"``,
    ``"prob"``, ``"loss"``) read at ``position`` with ``answer_tokens`` / ``wrong_tokens``, or a
    callable from logits ``[batch, pos, d_vocab]`` to ``[batch]`` or a scalar.

    Args:
        model: The model.
        clean: Clean prompts (strings or a ``[batch, pos]`` token tensor).
        corrupted: Corrupted prompts, lining up with the clean ones token for token.
        sender_heads: ``"each"`` (every head upstream of the receiver, one at a time), one head
            (``HeadId``, ``(layer, head)`` or ``"L0H1"``), a list of heads patched together, or a
            list of such lists (one run each).
        receiver: ``"logits"``, or one head's input: ``(layer, head, "q"|"k"|"v")`` or ``"L1H2.k"``.
        metric: The metric (see above).
        answer_tokens: Answer token(s) of a named metric.
        wrong_tokens: Wrong token(s) of ``"logit_diff"``.
        position: Where a named metric is read (negative: from each prompt's end).
        prepend_bos: Prepend BOS to strings (default: the model's setting).
        batch_size: Sender groups per forward pass.

    Returns:
        A :class:`PathPatching`.

    Example:
        >>> res = path_patching(model, torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 5, 3, 1, 2]]),
        ...                     [(0, 0), (0, 1)], (1, 3, "v"), "logit_diff", answer_tokens=3, wrong_tokens=5)
        >>> res.sender_labels, res.receiver
        (('L0H0+L0H1',), 'L1H3.v')
    """
    facts = model_facts(model)
    require_finite_parameters(model)
    batch_size = check_int(batch_size, "batch_size", low=1)
    recv = parse_receiver(model, receiver)
    groups = _sender_groups(model, sender_heads, recv)
    clean_t, corr_t, lengths = paired_tokens(model, clean, corrupted, prepend_bos=prepend_bos)
    m = resolve_metric(model, metric, clean_t, lengths, answer_tokens=answer_tokens, wrong_tokens=wrong_tokens,
                       position=position)
    top = facts.n_layers if recv is None else recv[0]
    names = [facts.hook("z", l) for l in range(top + (recv is not None))]
    if recv is not None:
        names += [f"blocks.{recv[0]}.attn.hook_{x}" for x in ("q", "k", "v")]
    clean_store, clean_value = _cache(model, clean_t, names, m)
    corr_store, corr_value = _cache(model, corr_t, names, m)
    values = [_patched_values(model, clean_t, clean_store, corr_store, groups[i:i + batch_size], recv, m)
              for i in range(0, len(groups), batch_size)]
    label = "logits" if recv is None else f"{HeadId(recv[0], recv[1]).label}.{recv[2]}"
    return PathPatching(
        receiver=label, sender_groups=tuple(tuple(h.label for h in g) for g in groups), patched=torch.cat(values),
        clean_metric=clean_value, corrupted_metric=corr_value, metric=m.name,
        sweep=isinstance(sender_heads, str) and sender_heads == "each", n_layers=facts.n_layers,
        n_heads=facts.n_heads, n_prompts=int(clean_t.shape[0]), processing=processing_state(model),
    )
