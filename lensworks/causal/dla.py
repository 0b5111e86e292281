"""Direct logit attribution: how much each head, MLP and embedding writes towards the answer's logit.

The final residual stream at the read position is a sum of components: the token (and learned
position) embedding, every head's output ``z_h W_O^h``, each layer's attention bias ``b_O``, and
every MLP's output. The logit of a token (or the difference of two) is linear in that residual
once the final norm's scale is frozen at its value in the run, which is what TransformerLens's
``ActivationCache.apply_ln_to_stack`` / ``logit_attrs`` do: each component is centred (LayerNorm
only), divided by the run's final-norm scale, multiplied by the norm's weight and projected on
the unembedding direction ``W_U[:, answer] - W_U[:, wrong]``. The final norm's bias and the
unembedding bias give two more rows, so the rows add up to the model's logit (difference) before
any output soft-cap. Gemma-2's norm after attention is frozen the same way (its scale from the
run), so its heads' outputs are read as what reaches the residual stream.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._results import Result
from lensworks._threads import adaptive_threads
from lensworks.model import LensworksError, capture_hooks, check_int, model_facts, processing_state
from lensworks.model._compat import (
    has_hook,
    normalization_type,
    require_finite_activation,
    require_finite_parameters,
    stacked,
)

__all__ = ["DirectLogitAttribution", "direct_logit_attribution"]

TokenIds = Union[int, Sequence[int], Tensor, None]

#: Relative error above which the components are reported as not adding up to the final residual.
DECOMPOSITION_RTOL = 1e-4


def _ids(model: Any, value: TokenIds, n: int, name: str) -> Tensor | None:
    """One token id per prompt (a single id is repeated), checked against the output vocabulary."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        ids = value.detach().reshape(-1).long().cpu()
    elif isinstance(value, (list, tuple)):
        ids = torch.tensor([check_int(v, f"{name}[{i}]") for i, v in enumerate(value)], dtype=torch.long)
    else:
        ids = torch.tensor([check_int(value, name)], dtype=torch.long)
    if ids.numel() == 1:
        ids = ids.expand(n).clone()
    if ids.numel() != n:
        raise LensworksError(f"{name}: expected one token id or one per prompt ({n}), got {ids.numel()}")
    vocab = model.cfg.d_vocab_out
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise LensworksError(f"{name}: token ids must lie in [0, {vocab}), got {ids.tolist()}")
    return ids


def _norm_affine(module: Any, d_model: int, eps: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(w, b)`` of a LayerNorm / RMSNorm module on either TransformerLens line, read from what the
    module computes (a folded norm gives ``w = 1``, ``b = 0``; Gemma's ``1 + weight`` is included).

    ``b = f(0)``; ``w`` from a zero-mean vector ``e`` of entries +-1 (mean-square 1), for which
    ``f(e) = w * e / sqrt(1 + eps) + b``.
    """
    e = torch.ones(d_model, dtype=like.dtype, device=like.device)
    e[1::2] = -1.0
    if d_model % 2:
        e[-1] = 0.0
    scale = float((e.pow(2).mean() + eps) ** 0.5)
    with torch.no_grad():
        zero = torch.zeros(1, 1, d_model, dtype=like.dtype, device=like.device)
        b = module(zero)[0, 0].to(like.dtype)
        w = (module(e[None, None])[0, 0].to(like.dtype) - b) * scale * e
        if d_model % 2:  # the last entry from the vector moved one place
            e2 = torch.roll(e, 1)
            s2 = float((e2.pow(2).mean() + eps) ** 0.5)
            w[-1] = (module(e2[None, None])[0, 0, -1].to(like.dtype) - b[-1]) * s2 * e2[-1]
    return w, b


def _hook_names(model: Any) -> list[str]:
    facts = model_facts(model)
    names = [facts.hook("resid_pre", 0), facts.hook("resid_post", facts.n_layers - 1), "ln_final.hook_scale"]
    if facts.pos_embed_in_residual:
        names.append(facts.hook("pos_embed"))
    for layer in range(facts.n_layers):
        names += [facts.hook("z", layer), facts.hook("attn_out", layer)]
        if facts.has_stream("mlp_out"):
            names.append(facts.hook("mlp_out", layer))
        if has_hook(model, f"blocks.{layer}.ln1_post.hook_scale"):
            names.append(f"blocks.{layer}.ln1_post.hook_scale")
    return [n for n in names if n != "ln_final.hook_scale" or model.cfg.normalization_type is not None]


def _components(model: Any, store: dict[str, Tensor], rows: Tensor, idx: Tensor
                ) -> tuple[Tensor, list[str], list[str], float]:
    """``[n_components, batch, d_model]`` residual components at each row's read position, their
    labels and kinds, and the relative error of their sum against the final residual."""
    facts = model_facts(model)
    wd = facts.working_dtype
    at = lambda name: store[name][rows, idx].to(wd)  # noqa: E731
    comps: list[Tensor] = []
    labels: list[str] = []
    kinds: list[str] = []
    first = at(facts.hook("resid_pre", 0))
    if facts.pos_embed_in_residual:
        pos = at(facts.hook("pos_embed"))
        comps += [first - pos, pos]
        labels += ["embed", "pos_embed"]
        kinds += ["embed", "embed"]
    else:
        comps.append(first)
        labels.append("embed")
        kinds.append("embed")
    W_O = stacked(model, "W_O", range(facts.n_layers)).to(wd)
    for layer in range(facts.n_layers):
        heads = torch.einsum("bhd,hdm->hbm", at(facts.hook("z", layer)), W_O[layer])
        b_O = model.blocks[layer].attn.b_O
        bias = (b_O.detach().to(wd)[None].expand(len(rows), -1) if b_O is not None
                else torch.zeros_like(heads[0]))
        post = f"blocks.{layer}.ln1_post.hook_scale"
        if post in store:  # Gemma-2: a norm after attention, its scale frozen at the run's value
            w, b = _norm_affine(model.blocks[layer].ln1_post, facts.d_model, model.cfg.eps, heads)
            s = at(post)
            heads, bias = w * heads / s, w * bias / s + b
        comps += list(heads) + [bias]
        labels += [HeadId(layer, h).label for h in range(facts.n_heads)] + [f"L{layer} attn bias"]
        kinds += ["head"] * facts.n_heads + ["attn_bias"]
        if facts.has_stream("mlp_out"):
            comps.append(at(facts.hook("mlp_out", layer)))
            labels.append(f"L{layer} MLP")
            kinds.append("mlp")
    stack = torch.stack(comps)
    final = at(facts.hook("resid_post", facts.n_layers - 1))
    err = float((stack.sum(0) - final).abs().max() / final.norm(dim=-1).max().clamp_min(1e-12))
    return stack, labels, kinds, err


def _attribute(model: Any, store: dict[str, Tensor], rows: Tensor, idx: Tensor, answer: Tensor,
               wrong: Tensor | None) -> tuple[Tensor, list[str], list[str], Tensor, float]:
    """Attributions ``[n_components, batch]``, labels, kinds, the model's own logit (difference)
    ``[batch]`` before any soft-cap, and the decomposition error."""
    facts = model_facts(model)
    wd = facts.working_dtype
    stack, labels, kinds, err = _components(model, store, rows, idx)
    W_U = model.W_U.detach().to(wd)
    direction = W_U[:, answer.to(W_U.device)].T  # [batch, d_model]
    if wrong is not None:
        direction = direction - W_U[:, wrong.to(W_U.device)].T
    b_U = getattr(model, "b_U", None)
    b_U = b_U.detach().to(wd) if b_U is not None else torch.zeros(W_U.shape[1], dtype=wd, device=W_U.device)
    unembed_bias = b_U[answer.to(b_U.device)] - (b_U[wrong.to(b_U.device)] if wrong is not None else 0.0)
    nt = normalization_type(model)
    if nt is not None:
        if nt in ("LN", "LNPre"):
            stack = stack - stack.mean(-1, keepdim=True)
        stack = stack / store["ln_final.hook_scale"][rows, idx].to(wd)
        w, b = _norm_affine(model.ln_final, facts.d_model, model.cfg.eps, stack)
    else:
        w, b = torch.ones_like(direction[0]), torch.zeros_like(direction[0])
    attrs = (stack * (w * direction)).sum(-1)
    extra, extra_labels = [], []
    if bool(b.abs().max() > 0):
        extra.append((b * direction).sum(-1))
        extra_labels.append("final norm bias")
    if bool(unembed_bias.abs().max() > 0):
        extra.append(unembed_bias)
        extra_labels.append("unembed bias")
    if extra:
        attrs = torch.cat([attrs, torch.stack(extra)])
        labels, kinds = labels + extra_labels, kinds + ["bias"] * len(extra)
    with torch.no_grad():
        resid = store[facts.hook("resid_post", facts.n_layers - 1)][rows, idx]
        normed = model.ln_final(resid[:, None])[:, 0] if nt is not None else resid
        logit = (normed.to(wd) * direction).sum(-1) + unembed_bias
    return attrs, labels, kinds, logit, err


@dataclass(frozen=True)
class DirectLogitAttribution(Result):
    """Each component's direct contribution to the answer's logit (or logit difference), per prompt.

    Rows (``labels``, ``kinds``) are the embedding (``"embed"``, and ``"pos_embed"`` for learned
    positions), every head (``"L{layer}H{head}"``, kind ``"head"``), each layer's attention bias
    (``"L{layer} attn bias"``), each MLP (``"L{layer} MLP"``) and, when the model has them, the
    final norm's and the unembedding's biases (kind ``"bias"``). They add up to ``logit_diff``.

    Attributes:
        attributions: ``[n_components, n_prompts]`` direct logit attribution of each row.
        labels: Row labels.
        kinds: Row kinds: ``"embed"``, ``"head"``, ``"attn_bias"``, ``"mlp"``, ``"bias"``.
        logit_diff: ``[n_prompts]`` the model's logit of the answer (minus the wrong token's), before
            any output soft-cap.
        answer_tokens: The answer token of each prompt.
        wrong_tokens: The wrong token of each prompt (None: plain logits are attributed).
        position: The read position (negative: from each prompt's end).
        n_layers, n_heads: The model's shape (for :meth:`head_attributions`).
        decomposition_error: Largest relative error of the components' sum against the final residual.
        note: How the result was made (the report names its prompts); shown under the caption.
    """

    attributions: Float[Tensor, "n_components n_prompts"]
    labels: tuple[str, ...]
    kinds: tuple[str, ...]
    logit_diff: Float[Tensor, " n_prompts"]
    answer_tokens: tuple[int, ...]
    wrong_tokens: tuple[int, ...] | None
    position: int
    n_layers: int
    n_heads: int
    decomposition_error: float
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: How the result was made, for the reader (the report says which prompts); shown under the caption.
    note: str = ""

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return int(self.attributions.shape[1])

    @property
    def target(self) -> str:
        """``"logit difference"`` or ``"logit"``."""
        return "logit difference" if self.wrong_tokens is not None else "logit"

    def mean(self) -> Float[Tensor, " n_components"]:
        """Attribution of each row averaged over prompts."""
        return self.attributions.float().mean(1)

    def head_attributions(self) -> Float[Tensor, "n_layers n_heads"]:
        """Per-head attribution averaged over prompts, as a ``[n_layers, n_heads]`` grid.

        Example:
            >>> dla = direct_logit_attribution(model, torch.tensor([[1, 2, 3, 1, 2]]), 3, wrong_tokens=4)
            >>> tuple(dla.head_attributions().shape)
            (2, 4)
        """
        sel = torch.tensor([k == "head" for k in self.kinds])
        return self.mean()[sel].reshape(self.n_layers, self.n_heads)

    def mlp_attributions(self) -> Float[Tensor, " n_layers"]:
        """Per-MLP attribution averaged over prompts (zeros for an attention-only model)."""
        sel = torch.tensor([k == "mlp" for k in self.kinds])
        values = self.mean()[sel]
        return values if values.numel() else torch.zeros(self.n_layers)

    def caption(self) -> str:
        """How to read the figure."""
        return (f"Direct logit attribution: each head's output (z times W_O), each MLP's output and the embeddings "
                f"at the read position, projected on the unembedding direction of the {self.target} with the final "
                f"norm's scale frozen at its value in the run (as TransformerLens's logit_attrs); mean over "
                f"{self.n_prompts} prompts. Rows add up to the model's {self.target} (before any soft-cap); a large "
                "value says what a component writes directly, not what it causes through later layers.")

    def headline(self) -> str | None:
        """The component with the largest direct effect."""
        m = self.mean()
        i = int(m.abs().argmax())
        return (f"{self.labels[i]} writes {float(m[i]):+.3f} to the {self.target} directly "
                f"(of {float(self.logit_diff.float().mean()):.3f} in all, mean over {self.n_prompts} prompts).")

    def to_frame(self):
        """One row per component: label, kind, layer (-1 for embeddings and final biases), head (-1
        when not a head), mean and std over prompts.

        Example:
            >>> dla = direct_logit_attribution(model, torch.tensor([[1, 2, 3, 1, 2]]), 3)
            >>> dla.to_frame().columns.tolist()
            ['component', 'kind', 'layer', 'head', 'mean', 'std']
        """
        import pandas as pd

        layers, heads = [], []
        for label, kind in zip(self.labels, self.kinds):
            if kind == "head":
                hid = HeadId.parse(label)
                layers.append(hid.layer)
                heads.append(hid.head)
            else:
                layers.append(int(label.split()[0][1:]) if kind in ("attn_bias", "mlp") else -1)
                heads.append(-1)
        x = self.attributions.float()
        std = x.std(1) if x.shape[1] > 1 else torch.zeros(x.shape[0])
        return pd.DataFrame({"component": list(self.labels), "kind": list(self.kinds), "layer": layers, "head": heads,
                             "mean": x.mean(1).tolist(), "std": std.tolist()})

    def figure(self):
        """Heads as a layer x head heatmap beside bars for the MLPs, embeddings and biases."""
        from lensworks.causal._dla_plots import dla_figure

        return dla_figure(self)


def _store_from_cache(model: Any, cache: Any, names: Sequence[str]) -> dict[str, Tensor]:
    missing = [n for n in names if n not in cache.keys()]
    if missing:
        raise LensworksError(f"the activation cache lacks {missing}; run the model with run_with_cache and no "
                             f"names_filter (or one that keeps these hooks)")
    out = {n: require_finite_activation(cache[n], n) for n in names}
    bad = [n for n, v in out.items() if v.ndim < 2]
    if bad:
        raise LensworksError(f"the activation cache must keep the batch axis ([batch, pos, ...]); {bad} do not")
    return out


@adaptive_threads
def direct_logit_attribution(
    model: Any,
    data: Any,
    answer_tokens: TokenIds,
    *,
    wrong_tokens: TokenIds = None,
    position: int = -1,
    batch_size: int = 32,
    prepend_bos: bool | None = None,
) -> DirectLogitAttribution:
    """Direct logit attribution of every head, MLP and embedding, with the final norm's scale frozen.

    For each prompt, the residual stream at ``position`` is split into its components and each is
    projected on ``W_U[:, answer] - W_U[:, wrong]`` (or ``W_U[:, answer]``) after the final norm
    with its scale taken from the run, as ``cache.logit_attrs(cache.stack_head_results(...))`` does
    in TransformerLens; here the norm's weight and biases are kept too, so the rows add up to the
    model's logit difference exactly (before an output soft-cap).

    Args:
        model: The model.
        data: Strings, a ``[batch, pos]`` token tensor, or an ``ActivationCache`` (or a
            ``{hook name: tensor}`` dict) of a run, which is reused instead of running the model.
        answer_tokens: The answer token: one id, or one per prompt.
        wrong_tokens: The wrong token (one id, or one per prompt): attribute the logit difference.
        position: The read position (negative: from each prompt's end, for strings of different lengths).
        batch_size: Prompts per forward pass.
        prepend_bos: Prepend BOS to string data (default: the model's setting).

    Returns:
        A :class:`DirectLogitAttribution`.

    Example:
        >>> dla = direct_logit_attribution(model, torch.tensor([[1, 2, 3, 1, 2]]), 3, wrong_tokens=4)
        >>> abs(float(dla.attributions.sum()) - float(dla.logit_diff[0])) < 1e-3
        True
    """
    from lensworks.geometry._common import is_activation_cache, iter_batches

    facts = model_facts(model)
    batch_size = check_int(batch_size, "batch_size", low=1)
    names = _hook_names(model)
    batches: list[tuple[dict[str, Tensor], Tensor]] = []
    as_dict = isinstance(data, dict) and bool(data) and all(isinstance(k, str) and isinstance(v, Tensor)
                                                            for k, v in data.items())
    if is_activation_cache(data) or as_dict:
        store = _store_from_cache(model, data, names)
        n_pos = store[names[0]].shape[1]
        pos = check_int(position, "position", low=-n_pos, high=n_pos)
        idx = torch.full((store[names[0]].shape[0],), pos % n_pos, dtype=torch.long)
        batches.append((store, idx))
    else:
        require_finite_parameters(model)
        check_int(position, "position", low=-facts.n_ctx, high=facts.n_ctx)
        for toks, idx in iter_batches(model, data, batch_size=batch_size, position=position,
                                      prepend_bos=prepend_bos, what="data"):
            store: dict[str, Tensor] = {}
            with torch.no_grad():
                model.run_with_hooks(toks, fwd_hooks=capture_hooks(names, lambda n, a: store.__setitem__(n, a.detach())))
            batches.append((store, idx.cpu()))
    n = sum(len(idx) for _, idx in batches)
    answer = _ids(model, answer_tokens, n, "answer_tokens")
    if answer is None:
        raise LensworksError("answer_tokens: expected one token id or one per prompt, got None")
    wrong = _ids(model, wrong_tokens, n, "wrong_tokens")
    parts, logits, worst = [], [], 0.0
    labels: list[str] = []
    kinds: list[str] = []
    start = 0
    for store, idx in batches:
        dev = store[names[0]].device
        rows = torch.arange(len(idx), device=dev)
        sl = slice(start, start + len(idx))
        attrs, labels, kinds, logit, err = _attribute(model, store, rows, idx.to(dev), answer[sl],
                                                      None if wrong is None else wrong[sl])
        parts.append(attrs.float().cpu())
        logits.append(logit.float().cpu())
        worst = max(worst, err)
        start += len(idx)
    tol = DECOMPOSITION_RTOL if facts.dtype in (torch.float32, torch.float64) else 2e-2
    if worst > tol:
        warnings.warn(f"direct_logit_attribution: the components do not add up to the final residual (relative "
                      f"error {worst:.2e}); this architecture changes its residual adds, so the attributions may "
                      "not mean what they say", stacklevel=2)
    return DirectLogitAttribution(
        attributions=torch.cat(parts, dim=1), labels=tuple(labels), kinds=tuple(kinds),
        logit_diff=torch.cat(logits), answer_tokens=tuple(answer.tolist()),
        wrong_tokens=None if wrong is None else tuple(wrong.tolist()), position=int(position),
        n_layers=facts.n_layers, n_heads=facts.n_heads, decomposition_error=worst, processing=processing_state(model),
    )
