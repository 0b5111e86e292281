"""Inputs and metrics of the causal analyses: clean and corrupted runs, and what is measured on them.

A metric turns a run's logits into one number per prompt (averaged over prompts for a site). By
name: ``"logit_diff"`` (logit of the answer token minus the logit of the wrong token at the read
position), ``"prob"`` (probability of the answer token there), ``"loss"`` (cross-entropy of the
answer token there; without answer tokens, the mean next-token loss of the clean text). Or a
callable from logits ``[batch, pos, d_vocab]`` to ``[batch]`` or a scalar, as TransformerLens's
``patching_metric`` is written: it is called once per patched site on that site's ``batch`` rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks.model import LensworksError, as_tokens, check_int, encode_batch, model_facts

__all__ = ["Metric", "METRIC_NAMES", "resolve_metric", "paired_tokens", "Prompts"]

#: What can be patched: target -> (hook stream, kind of slice).
PATCH_TARGETS: dict[str, tuple[str, str]] = {
    "resid_pre": ("resid_pre", "pos"),
    "attn_out": ("attn_out", "pos"),
    "mlp_out": ("mlp_out", "pos"),
    "head_z": ("z", "head"),
    "head_pattern": ("pattern", "pattern"),
}


#: The metrics known by name.
METRIC_NAMES: tuple[str, ...] = ("logit_diff", "loss", "prob")

MetricLike = Union[str, "Metric", Callable[[Tensor], Tensor]]
TokenIds = Union[int, Sequence[int], Int[Tensor, " batch"], None]
#: Clean or corrupted prompts: strings, or token ids ``[batch, pos]``.
Prompts = Union[str, Sequence[str], Int[Tensor, "batch pos"]]


def paired_tokens(
    model: Any, clean: Prompts, corrupted: Prompts, *, prepend_bos: bool | None = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Clean and corrupted inputs as two token tensors of one shape on the model's device.

    Strings are encoded one by one (:func:`lensworks.model.encode_batch`); each corrupted text
    must have as many tokens as its clean text, so that positions line up.

    Returns:
        ``(clean_tokens, corrupted_tokens, lengths)``: ``lengths`` is each prompt's token count.

    Example:
        >>> c, k, n = paired_tokens(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 4, 3]]))
        >>> tuple(c.shape), n.tolist()
        ((1, 3), [3])
    """
    def encode(data: Any, what: str) -> tuple[Tensor, Tensor]:
        if isinstance(data, str):
            data = [data]
        if isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data):
            toks, lengths = encode_batch(model, list(data), prepend_bos=prepend_bos, what=what)
            return toks, lengths
        if not isinstance(data, Tensor):
            raise LensworksError(f"{what}: expected strings or a [batch, pos] token tensor, got {type(data).__name__}")
        toks = as_tokens(model, data[None] if data.ndim == 1 else data, what=what)
        return toks, torch.full((toks.shape[0],), toks.shape[1], dtype=torch.long)

    clean_t, clean_n = encode(clean, "clean")
    corr_t, corr_n = encode(corrupted, "corrupted")
    if clean_t.shape != corr_t.shape or not torch.equal(clean_n.cpu(), corr_n.cpu()):
        first = ""
        differ = (clean_n.cpu() != corr_n.cpu()).nonzero() if clean_n.shape == corr_n.shape else []
        if len(differ):
            i = int(differ[0])
            first = f"; prompt {i} is {int(clean_n[i])} tokens clean and {int(corr_n[i])} corrupted"
        raise LensworksError(
            f"clean and corrupted inputs must line up token for token: clean has shape {tuple(clean_t.shape)} "
            f"(lengths {clean_n.tolist()}), corrupted {tuple(corr_t.shape)} (lengths {corr_n.tolist()}){first}")
    device = model_facts(model).device
    return clean_t.to(device), corr_t.to(device), clean_n.to(device)


def _ids(model: Any, value: TokenIds, n: int, name: str) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        ids = value.reshape(-1).long()
    elif isinstance(value, (list, tuple)):
        ids = torch.tensor([check_int(v, f"{name}[{i}]") for i, v in enumerate(value)], dtype=torch.long)
    else:
        ids = torch.tensor([check_int(value, name)], dtype=torch.long)
    if ids.numel() == 1:
        ids = ids.expand(n)
    if ids.numel() != n:
        raise LensworksError(f"{name}: expected one token id or one per prompt ({n}), got {ids.numel()}")
    vocab = model.cfg.d_vocab_out
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise LensworksError(f"{name}: token ids must lie in [0, {vocab}), got {ids.tolist()}")
    return ids.to(model_facts(model).device)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A resolved metric: what is read from a run's logits, for ``n_prompts`` prompts.

    Attributes:
        name: ``"logit_diff"``, ``"prob"``, ``"loss"`` or ``"callable"``.
        read: ``[batch]`` the position each prompt is read at.
        answer, wrong: ``[batch]`` token ids (None when the metric needs none).
        targets: ``[batch, pos]`` the clean tokens (the targets of the sequence loss).
        lengths: ``[batch]`` each prompt's token count.
        fn: The user's callable, for ``name == "callable"``.
    """

    name: str
    read: Tensor
    answer: Tensor | None = None
    wrong: Tensor | None = None
    targets: Tensor | None = None
    lengths: Tensor | None = None
    fn: Callable[[Tensor], Tensor] | None = None

    @property
    def n_prompts(self) -> int:
        """Prompts per run."""
        return int(self.read.shape[0])

    @property
    def needs_all_positions(self) -> bool:
        """Whether the metric reads every position's logits (a callable, the sequence loss)."""
        return self.fn is not None or (self.name == "loss" and self.answer is None)

    def describe(self) -> str:
        """A few words for titles: ``"logit difference"``, ``"loss"``, ..."""
        return {"logit_diff": "logit difference", "prob": "answer probability", "loss": "loss",
                "callable": "metric"}[self.name]

    def per_site(self, logits: Tensor, n_sites: int) -> Float[Tensor, " n_sites"]:
        """The metric of each of ``n_sites`` runs stacked along the batch (``n_sites * batch`` rows).

        ``logits`` is ``[rows, pos, d_vocab]`` when :attr:`needs_all_positions`, else the logits
        at each prompt's read position, ``[rows, d_vocab]``.
        """
        b = self.n_prompts
        if self.fn is not None:
            out = []
            for s in range(n_sites):
                value = self.fn(logits[s * b:(s + 1) * b])
                if not isinstance(value, Tensor):
                    value = torch.as_tensor(float(value))
                if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != b):
                    raise LensworksError(f"the metric callable must return a scalar or one value per prompt "
                                         f"([{b}]), got shape {tuple(value.shape)}")
                out.append(value.float().mean())
            return torch.stack(out)
        values = self._per_prompt(logits.float(), n_sites)
        return values.view(n_sites, b).mean(1)

    def _per_prompt(self, logits: Tensor, n_sites: int) -> Tensor:
        rep = lambda t: t.repeat(n_sites)  # noqa: E731  (row s * b + i is prompt i)
        rows = torch.arange(logits.shape[0], device=logits.device)
        if self.name == "loss" and self.answer is None:
            logp = logits[:, :-1].log_softmax(-1)
            targets = self.targets.repeat(n_sites, 1)[:, 1:]
            nll = -logp.gather(-1, targets[..., None])[..., 0]
            valid = (torch.arange(targets.shape[1], device=logits.device)[None]
                     < (rep(self.lengths) - 1)[:, None]).float()
            return (nll * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        if self.name == "logit_diff":
            return logits[rows, rep(self.answer)] - logits[rows, rep(self.wrong)]
        logp = logits.log_softmax(-1)[rows, rep(self.answer)]
        return logp.exp() if self.name == "prob" else -logp


def resolve_metric(
    model: Any,
    metric: MetricLike,
    clean_tokens: Int[Tensor, "batch pos"],
    lengths: Int[Tensor, " batch"],
    *,
    answer_tokens: TokenIds = None,
    wrong_tokens: TokenIds = None,
    position: int = -1,
) -> Metric:
    """Turn a metric name or callable into a :class:`Metric` for these prompts.

    Args:
        model: The model (its vocabulary size).
        metric: ``"logit_diff"``, ``"loss"``, ``"prob"``, a :class:`Metric` or a callable from
            logits ``[batch, pos, d_vocab]`` to ``[batch]`` or a scalar.
        clean_tokens: The clean prompts (targets of the sequence loss).
        lengths: Each prompt's token count.
        answer_tokens: The answer token (one id, or one per prompt): needed by ``"logit_diff"``
            and ``"prob"``; optional for ``"loss"``.
        wrong_tokens: The wrong answer of ``"logit_diff"``.
        position: Where the answer is read (negative: from each prompt's end).

    Example:
        >>> m = resolve_metric(model, "logit_diff", torch.tensor([[1, 2, 3]]), torch.tensor([3]),
        ...                    answer_tokens=4, wrong_tokens=5)
        >>> m.name, m.read.tolist()
        ('logit_diff', [2])
    """
    if isinstance(metric, Metric):
        return metric
    b, n_pos = clean_tokens.shape
    position = check_int(position, "position", low=-n_pos, high=n_pos)
    lengths = lengths.to(clean_tokens.device)
    read = lengths + position if position < 0 else torch.full_like(lengths, position)
    if bool((read < 0).any()) or bool((read >= lengths).any()):
        raise LensworksError(f"position {position} lies outside a prompt of {int(lengths.min())} tokens")
    if callable(metric) and not isinstance(metric, str):
        return Metric("callable", read, targets=clean_tokens, lengths=lengths, fn=metric)
    if metric not in METRIC_NAMES:
        raise LensworksError(f"metric must be one of {list(METRIC_NAMES)} or a callable, got {metric!r}")
    answer = _ids(model, answer_tokens, b, "answer_tokens")
    wrong = _ids(model, wrong_tokens, b, "wrong_tokens")
    if metric in ("logit_diff", "prob") and answer is None:
        raise LensworksError(f"metric {metric!r} needs answer_tokens (one token id, or one per prompt)")
    if metric == "logit_diff" and wrong is None:
        raise LensworksError("metric 'logit_diff' needs wrong_tokens (one token id, or one per prompt)")
    return Metric(metric, read, answer=answer, wrong=wrong, targets=clean_tokens, lengths=lengths)
