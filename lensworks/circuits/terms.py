"""Term importance (seed 003): how much of the loss each path order through the heads explains.

Freeze a forward pass: every attention pattern, every LayerNorm/RMSNorm scale and every MLP
nonlinearity keeps the value it had on the real input. What is left is an affine function of the
token embeddings, so the final residual stream splits exactly into terms, one per *path*: the
direct path (order 0), each head on its own (order 1), each pair of heads in increasing layers,
the "virtual heads" (order 2), and so on up to ``n_layers`` heads. Summing every order gives back
the real residual stream, so the loss of the full expansion is the model's own loss.

How the pieces are frozen:

- Attention: the pattern is the real one; a head then maps its input linearly (through the frozen
  norm, ``W_V``, the pattern and ``W_O``). Everything that does not depend on the input (biases of
  the norms, ``b_V``, ``b_O``, Gemma's post-attention norm applied to them) is a constant, counted
  in order 0 where it enters.
- MLPs (when the model has them) are *frozen linearisations*: a gated MLP keeps its gate
  ``act(x W_gate)`` from the real pass and stays linear in ``x W_in``; an ungated MLP keeps each
  neuron's ratio ``act(pre) / pre``. At the real input this reproduces the MLP exactly. MLPs move
  no information between positions, so they do not add to a path's order: a term of order ``k``
  counts attention heads only, and includes every way through the MLPs around them. Order 0 is
  then everything the model computes at the current token alone.

The expansion is computed by running the model itself with hooks (one extra batch row per term),
so it holds on every architecture lensworks loads: grouped-query heads, rotary, parallel blocks,
Gemma-2's post-norms and soft-caps (the output soft-cap is applied to each truncated sum, as the
model applies it to its residual).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._dist import Shard, all_reduce_sum, gather_each
from lensworks._heads import HeadId
from lensworks._results import Result
from lensworks.geometry._common import Data, iter_batches, progress_bar, softcap
from lensworks.model import HookedTransformer, LensworksError, check_model, has_resid_mid, model_facts, processing_state
from lensworks.model._compat import capture_hooks
from lensworks.model._core import check_int

__all__ = ["term_importance", "TermImportance"]

# What a slot of the frozen batch does at one block (see _Plan).
_CONST, _SHIFT, _HEAD, _ZERO = range(4)  # attention: constants only / previous order / one head / nothing
_FULL, _LIN, _NONE = range(3)  # MLP: constants and linear part / linear part / nothing


@dataclass(frozen=True)
class TermImportance(Result):
    """The loss explained by each path order, and the loss when each term is removed.

    Attributes:
        loss_by_order: ``[n_layers + 1]``: entry ``k`` is the mean next-token loss (nats) when the
            final residual stream keeps only the paths through at most ``k`` heads.
        model_loss: The model's own mean loss on the same tokens.
        terms: Term labels: ``direct``, ``L0H1``, ``L0H1>L1H2`` (a path through heads in order).
        orders: ``[n_terms]`` how many heads each term passes through.
        loss_without: ``[n_terms]`` the mean loss when that term alone is removed.
        max_order: The largest order in the per-term table.
        n_tokens: Predictions averaged over.
        reconstruction_error: Largest |sum of all orders - real final residual| relative to the
            residual's largest entry (should be at the level of the dtype's rounding).
        mlp: ``"none"`` (attention-only) or ``"frozen linearisation"``.
        processing: The model's weight-processing state.
    """

    loss_by_order: Float[Tensor, " n_orders"]
    model_loss: float
    terms: tuple[str, ...]
    orders: Int[Tensor, " n_terms"]
    loss_without: Float[Tensor, " n_terms"]
    max_order: int
    n_tokens: int
    reconstruction_error: float
    mlp: str
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: A note on how this result was made (the report sets one, e.g. why this head or how few
    #: samples); the page shows it under the caption.
    note: str = ""

    @property
    def full_loss(self) -> float:
        """Loss of the whole expansion (all orders): the model's loss up to rounding."""
        return float(self.loss_by_order[-1])

    def to_frame(self):
        """One row per term: ``term, order, loss_without, loss_increase``, most important first.

        Example:
            >>> term_importance(model, "bagodukebagoduke").to_frame()["term"].head(3).tolist()
            ['L1H0', 'direct', 'L1H3']
        """
        import pandas as pd

        frame = pd.DataFrame({"term": list(self.terms), "order": self.orders.tolist(),
                              "loss_without": self.loss_without.tolist(),
                              "loss_increase": (self.loss_without - self.full_loss).tolist()})
        return frame.sort_values("loss_increase", ascending=False, kind="stable").reset_index(drop=True)

    def order_frame(self):
        """One row per order ``k``: the loss keeping paths of at most ``k`` heads."""
        import pandas as pd

        return pd.DataFrame({"max_heads": list(range(len(self.loss_by_order))),
                             "loss": self.loss_by_order.tolist(),
                             "loss_above_model": (self.loss_by_order - self.model_loss).tolist()})

    def figure(self, top: int = 20):
        """Loss against the largest path order kept (left); the ``top`` terms whose removal costs most (right)."""
        from lensworks.circuits._plots import term_importance_figure

        return term_importance_figure(self, top)

    def caption(self) -> str:
        """How the expansion is made."""
        mlp = (" MLPs are frozen linearisations (their gates or activation ratios fixed), so they do not add to a "
               "path's order." if self.mlp != "none" else "")
        return ("Term importance: with the real attention patterns and norm scales frozen, the output is a sum of "
                "paths through 0, 1, 2, ... heads (direct path, single heads, virtual heads). Left: the loss keeping "
                "the paths through at most k heads (the last point is the model's loss). Right: the loss increase "
                f"when one term alone is removed.{mlp}")

    def headline(self) -> str | None:
        """Which order brings the loss closest to the model's, and the most important term."""
        gaps = (self.loss_by_order - self.model_loss).tolist()
        first = next(k for k, g in enumerate(gaps) if g <= 0.1 * max(gaps[0], 1e-9) or k == len(gaps) - 1)
        frame = self.to_frame()
        return (f"Paths through at most {first} head{'s' if first != 1 else ''} reach a loss of "
                f"{float(self.loss_by_order[first]):.3f} nats (model {self.model_loss:.3f}, direct path alone "
                f"{float(self.loss_by_order[0]):.3f}); the most important term is {frame['term'][0]} "
                f"(+{float(frame['loss_increase'][0]):.3f} nats without it).")


# --------------------------------------------------------------------------- planning


def _paths(n_layers: int, n_heads: int, max_order: int) -> Iterator[tuple[tuple[int, int], ...]]:
    """Every sequence of heads in strictly increasing layers, of 1..max_order heads."""
    for k in range(1, max_order + 1):
        for layers in itertools.combinations(range(n_layers), k):
            yield from itertools.product(*[[(l, h) for h in range(n_heads)] for l in layers])


def count_terms(n_layers: int, n_heads: int, max_order: int) -> int:
    """Terms in the table up to ``max_order``: the direct path and every path of 1..max_order heads.

    Example:
        >>> count_terms(2, 4, 2)  # direct + 8 heads + 16 virtual heads
        25
    """
    return 1 + sum(math.comb(n_layers, k) * n_heads**k for k in range(1, max_order + 1))


def path_label(path: Sequence[tuple[int, int]]) -> str:
    """``direct`` for the empty path, else ``L0H1>L1H2``."""
    return ">".join(HeadId(l, h).label for l, h in path) or "direct"


@dataclass
class _Plan:
    """What each slot (a copy of the batch) does at every block.

    Slots are term paths (``("path", heads)``) or orders (``("order", j)``); two extra slots come
    last: ``Z`` (zero input: its outputs are the constants) and ``Z0`` (zero ``z``: the constant
    added after the heads, i.e. ``b_O`` through any post-norm).
    """

    slots: list[tuple[str, Any]]
    attn: list[list[int]]  # [layer][slot]
    src: list[list[int]]  # [layer][slot]: slot whose linear attention output is taken (SHIFT)
    head: list[list[int]]  # [layer][slot]: head kept (HEAD), else -1
    mlp: list[list[int]]  # [layer][slot]
    start: list[bool]  # [slot]: starts from the embeddings (else zero)


def _plan(slots: list[tuple[str, Any]], n_layers: int, parallel: bool) -> _Plan:
    attn, src, head, mlp = ([[0] * len(slots) for _ in range(n_layers)] for _ in range(4))
    start = []
    for s, (kind, value) in enumerate(slots):
        start.append(kind == "path" or value == 0)
        for l in range(n_layers):
            src[l][s], head[l][s] = -1, -1
            if kind == "order":
                attn[l][s], mlp[l][s] = (_CONST, _FULL) if value == 0 else (_SHIFT, _LIN)
                src[l][s] = s - 1
            else:
                layers = {pl: ph for pl, ph in value}
                if l < value[0][0]:
                    attn[l][s], mlp[l][s] = _CONST, _FULL
                elif l in layers:
                    attn[l][s], mlp[l][s], head[l][s] = _HEAD, (_NONE if parallel else _LIN), layers[l]
                else:
                    attn[l][s], mlp[l][s] = _ZERO, _LIN
    return _Plan(slots, attn, src, head, mlp, start)


# --------------------------------------------------------------------------- running


def _frozen_names(model: HookedTransformer) -> list[str]:
    """Hooks whose real values are frozen: patterns, norm scales, MLP pre-activations (and posts)."""
    cfg, names = model.cfg, []
    for l in range(cfg.n_layers):
        names.append(f"blocks.{l}.attn.hook_pattern")
        for ln in ("ln1", "ln2", "ln1_post", "ln2_post"):
            if f"blocks.{l}.{ln}.hook_scale" in model.hook_dict and hasattr(model.blocks[l], ln):
                if not (cfg.attn_only and ln.startswith("ln2")):
                    names.append(f"blocks.{l}.{ln}.hook_scale")
        if not cfg.attn_only:
            names.append(f"blocks.{l}.mlp.hook_pre")
            if not getattr(cfg, "gated_mlp", False):
                names.append(f"blocks.{l}.mlp.hook_post")
    if cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    return names


class _UnembedInput:
    """Records what ``model.unembed`` reads (after the final norm's weight and bias) during a forward."""

    def __init__(self, model: HookedTransformer):
        self.module, self.value, self.handle = model.unembed, None, None

    def __enter__(self) -> "_UnembedInput":
        def grab(module, args):
            self.value = args[0].detach().clone()

        self.handle = self.module.register_forward_pre_hook(grab)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _frozen_run(model: HookedTransformer, toks: Tensor, plan: _Plan, frozen: dict[str, Tensor]) -> Tensor:
    """Final-norm outputs ``[slots + 2, batch, pos, d_model]`` of the frozen model, one per slot."""
    cfg = model.cfg
    S, B = len(plan.slots) + 2, toks.shape[0]
    Z, Z0 = S - 2, S - 1
    dev = toks.device
    gated = bool(getattr(cfg, "gated_mlp", False))
    state: dict[str, Tensor] = {}

    def tile(t: Tensor) -> Tensor:
        return t.repeat(S, *([1] * (t.ndim - 1)))

    def slots(t: Tensor) -> Tensor:
        return t.reshape(S, B, *t.shape[1:])

    def freeze(name: str):
        return lambda act, hook: tile(frozen[name]).to(act.dtype)

    hooks: list[tuple[str, Any]] = [(n, freeze(n)) for n in frozen if n.endswith(("hook_pattern", "hook_scale"))]
    keep_start = torch.tensor(plan.start + [False, False], device=dev)

    def start(act, hook):
        return (slots(act) * keep_start.view(S, 1, 1, 1).to(act.dtype)).reshape(act.shape)

    hooks.append(("blocks.0.hook_resid_pre", start))
    for l in range(cfg.n_layers):
        masks = torch.ones(S, cfg.n_heads, device=dev)
        for s, h in enumerate(plan.head[l]):
            if h >= 0:
                masks[s] = 0
                masks[s, h] = 1
        masks[Z0] = 0

        def resid_pre(act, hook, l=l):
            state[f"pre{l}"] = slots(act)
            return act

        def z_hook(act, hook, masks=masks):
            z = slots(act)
            lin = (z - z[Z]) * masks.view(S, 1, 1, cfg.n_heads, 1).to(z.dtype)
            lin[Z] = z[Z]
            return lin.reshape(act.shape)

        def attn_out(act, hook, l=l):
            a = slots(act)
            const, lin = a[Z], a - a[Z0]
            out = torch.zeros_like(a)
            for s in range(S - 2):
                kind = plan.attn[l][s]
                if kind == _CONST:
                    out[s] = const
                elif kind == _SHIFT:
                    out[s] = lin[plan.src[l][s]]
                elif kind == _HEAD:
                    out[s] = lin[s] - state[f"pre{l}"][s]
            return out.reshape(act.shape)

        hooks += [(f"blocks.{l}.hook_resid_pre", resid_pre), (f"blocks.{l}.attn.hook_z", z_hook),
                  (f"blocks.{l}.hook_attn_out", attn_out)]
        if cfg.attn_only:
            continue

        def mlp_out(act, hook, l=l):
            m = slots(act)
            out = torch.zeros_like(m)
            for s in range(S - 2):
                kind = plan.mlp[l][s]
                if kind == _FULL:
                    out[s] = m[s]
                elif kind == _LIN:
                    out[s] = m[s] - m[Z]
            return out.reshape(act.shape)

        hooks.append((f"blocks.{l}.hook_mlp_out", mlp_out))
        pre_name, post_name = f"blocks.{l}.mlp.hook_pre", f"blocks.{l}.mlp.hook_post"
        if gated:  # the gate act(x W_gate) keeps its real value; the MLP stays linear in x W_in
            hooks.append((pre_name, freeze(pre_name)))
        else:  # each neuron keeps its real ratio act(pre) / pre
            pre, post = frozen[pre_name], frozen[post_name]
            ratio = tile(torch.where(pre == 0, torch.full_like(post, 0.5), post / torch.where(pre == 0, 1, pre)))

            def grab_pre(act, hook, l=l):
                state[f"mlp{l}"] = act
                return act

            hooks += [(pre_name, grab_pre),
                      (post_name, lambda act, hook, l=l, ratio=ratio: (ratio.to(act.dtype) * state[f"mlp{l}"]))]
    with _UnembedInput(model) as final, warnings.catch_warnings():
        # TransformerLens 4 warns that an edited norm scale leaves HF's native path: intended here.
        warnings.filterwarnings("ignore", message=".*edited hook_scale.*")
        model.run_with_hooks(tile(toks), return_type="logits", fwd_hooks=hooks)
    if final.value is None:
        raise LensworksError("term_importance: the model's forward did not call model.unembed; cannot read its input")
    return slots(final.value)


#: Bytes of attention patterns (the real ones, frozen, and the pass's own) one pass may hold.
PASS_BUDGET = 1 << 30


def _slots_that_fit(model: HookedTransformer, toks: Tensor) -> int:
    """Term slots per pass so that the patterns of one layer's pass stay under PASS_BUDGET."""
    B, pos = toks.shape
    itemsize = torch.finfo(model.cfg.dtype).bits // 8
    per_slot = 2 * B * model.cfg.n_heads * pos * pos * itemsize + 8 * B * pos * model.cfg.d_model * itemsize
    return int(max(1, min(256, PASS_BUDGET // max(per_slot, 1) - 2)))


def _nll_sum(logits: Tensor, toks: Tensor, valid: Tensor) -> Tensor:
    """Summed next-token loss of ``logits`` (``[..., batch, pos, vocab]``) over the valid targets."""
    logp = torch.log_softmax(logits.float()[..., :-1, :], dim=-1)
    target = toks[:, 1:].expand(*logp.shape[:-1])
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return (nll * valid).sum(dim=(-1, -2))


def _next_token_loss(model: HookedTransformer, normalized: Tensor, toks: Tensor, valid: Tensor) -> Tensor:
    """Summed next-token loss when ``normalized`` (``[..., batch, pos, d_model]``) is what the unembedding reads."""
    return _nll_sum(softcap(model, model.unembed(normalized)), toks, valid)


@adaptive_threads
def unsupported(model: HookedTransformer) -> str | None:
    """Why :func:`term_importance` is not defined on ``model``, or None when it is: the
    expansion linearises each MLP at its real input (impossible for SoLU's normalisation across
    neurons and for a routed mixture of experts) and freezes every attention pattern through
    ``hook_pattern`` (impossible where the model discards pattern edits).

    Example:
        >>> unsupported(model) is None
        True
    """
    from lensworks.model._compat import PATTERN_NOT_EDITABLE

    cfg = model.cfg
    act_fn = str(getattr(cfg, "act_fn", "") or "")
    if not cfg.attn_only and (act_fn.startswith("solu") or getattr(cfg, "num_experts", None)):
        return (f"term_importance cannot linearise this MLP (act_fn={act_fn!r}, num_experts="
                f"{getattr(cfg, 'num_experts', None)}); SoLU and mixture-of-experts MLPs are not supported")
    if not model_facts(model).pattern_editable:  # the frozen expansion fixes every pattern through hook_pattern
        return PATTERN_NOT_EDITABLE.format(what="term_importance")
    return None


def term_importance(
    model: HookedTransformer,
    data: Data,
    *,
    max_order: int | None = None,
    max_terms: int = 5000,
    batch_size: int = 8,
    slots_per_pass: int | None = None,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> TermImportance:
    """Loss explained by paths through 0, 1, ..., n_layers heads, with patterns and norms frozen.

    Args:
        model: The model. Models with MLPs are expanded with frozen MLP linearisations (see the
            module docstring and docs/circuits.md); SoLU and mixture-of-experts MLPs are refused.
        data: Token ids ``[batch, pos]``, a string or a list of strings (each read to its own end).
        max_order: Largest path order listed one term at a time in the table (default
            ``min(2, n_layers)``: direct path, heads and virtual heads); ``loss_by_order`` always
            covers every order up to ``n_layers``.
        max_terms: Refuse a table longer than this (orders above 2 grow as ``n_heads ** k``).
        batch_size: Sequences per forward pass.
        slots_per_pass: Terms computed per forward pass (each is a copy of the batch). Default:
            as many as keep one pass's attention patterns under :data:`PASS_BUDGET` bytes
            (at least 1). The pass over the orders always holds ``n_layers + 3`` copies: lower
            ``batch_size`` for long sequences on large models.
        prepend_bos: For strings; default the model's setting.
        progress: Show a progress bar (default: only on a terminal).

    Returns:
        A :class:`TermImportance`. For attention-only models ``loss_by_order[-1]`` is the model's
        own loss; with MLPs it is too, because the linearisations are exact at the real input.

    Example:
        >>> ti = term_importance(model, "bagodukebagoduke")  # "ba go du ke", twice
        >>> [round(loss, 2) for loss in ti.loss_by_order.tolist()]
        [4.83, 4.36, 4.15]
    """
    check_model(model)
    cfg = model.cfg
    max_order = min(2, cfg.n_layers) if max_order is None else check_int(max_order, "max_order", low=0,
                                                                           high=cfg.n_layers + 1)
    check_int(max_terms, "max_terms", low=1)
    if slots_per_pass is not None:
        slots_per_pass = check_int(slots_per_pass, "slots_per_pass", low=1)
    why = unsupported(model)
    if why is not None:
        raise LensworksError(why)
    n_terms = count_terms(cfg.n_layers, cfg.n_heads, max_order)
    if n_terms > max_terms:
        raise LensworksError(f"the table up to order {max_order} has {n_terms} terms (more than max_terms={max_terms}); "
                             "lower max_order or raise max_terms (each term costs one copy of the batch per pass)")
    paths = [()] + list(_paths(cfg.n_layers, cfg.n_heads, max_order))
    order_plan = _plan([("order", j) for j in range(cfg.n_layers + 1)], cfg.n_layers, not has_resid_mid(model))
    # (path plans are made per batch: how many fit in one pass depends on the batch's length)
    parallel = not has_resid_mid(model)
    names = _frozen_names(model)

    order_sum = torch.zeros(cfg.n_layers + 1, dtype=torch.float64)
    without = torch.zeros(len(paths), dtype=torch.float64)
    model_sum, n_tokens, worst, scale = 0.0, 0, 0.0, 0.0
    bar = progress_bar(desc="term importance", progress=progress)
    shard = Shard("data", model)  # under torch.distributed each rank reads its share of every batch
    with torch.inference_mode():
        for toks, last in iter_batches(model, data, batch_size=batch_size, position=-1, prepend_bos=prepend_bos,
                                       shard=shard):
            if toks.shape[1] < 2:
                raise LensworksError(f"data: sequences need at least 2 tokens to have a next-token loss, got {toks.shape[1]}")
            pos = torch.arange(toks.shape[1] - 1, device=toks.device)
            valid = (pos[None] < last[:, None]).float()
            frozen: dict[str, Tensor] = {}
            with _UnembedInput(model) as grabbed:
                logits = model.run_with_hooks(toks, return_type="logits",
                                              fwd_hooks=capture_hooks(names, lambda n, a: frozen.__setitem__(n, a.clone())))
            real_final = grabbed.value
            model_sum += float(_nll_sum(logits, toks, valid))
            n_tokens += int(valid.sum())

            out = _frozen_run(model, toks, order_plan, frozen)  # [orders + 2, B, pos, d]
            const, lin = out[-2], out[:-2] - out[-2]
            partial = const + lin.cumsum(0)
            worst = max(worst, float((partial[-1] - real_final).abs().max()))
            scale = max(scale, float(real_final.abs().max()))
            for k in range(cfg.n_layers + 1):
                order_sum[k] += float(_next_token_loss(model, partial[k], toks, valid))
            without[0] += float(_next_token_loss(model, real_final - lin[0], toks, valid))
            bar.update(1)
            done = 1
            per_pass = slots_per_pass or _slots_that_fit(model, toks)
            chunks = [paths[1 + i: 1 + i + per_pass] for i in range(0, len(paths) - 1, per_pass)]
            for chunk in chunks:
                plan = _plan([("path", p) for p in chunk], cfg.n_layers, parallel)
                out = _frozen_run(model, toks, plan, frozen)
                for i in range(len(chunk)):
                    without[done + i] += float(_next_token_loss(model, real_final - (out[i] - out[-2]), toks, valid))
                done += len(chunk)
                bar.update(1)
    bar.close()
    sums = all_reduce_sum(torch.cat([order_sum, without, torch.tensor([model_sum, float(n_tokens)], dtype=torch.float64)]))
    order_sum, without = sums[: len(order_sum)], sums[len(order_sum): len(order_sum) + len(without)]
    model_sum, n_tokens = float(sums[-2]), int(sums[-1])
    worst = max(float(w) for w in gather_each(torch.tensor([worst / max(scale, 1e-30)], dtype=torch.float64)))
    if n_tokens == 0:
        raise LensworksError("data: no next-token predictions (every sequence is a single token)")
    return TermImportance(
        loss_by_order=(order_sum / n_tokens).float(), model_loss=model_sum / n_tokens,
        terms=tuple(path_label(p) for p in paths), orders=torch.tensor([len(p) for p in paths]),
        loss_without=(without / n_tokens).float(), max_order=max_order, n_tokens=n_tokens,
        reconstruction_error=worst, mlp="none" if cfg.attn_only else "frozen linearisation",
        processing=processing_state(model),
    )
