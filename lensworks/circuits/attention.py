"""Attention patterns of chosen heads on a few prompts: what the attention explorer shows.

:func:`attention_patterns` runs the model once (or reads an activation cache the user already
has) and keeps, for every prompt and every chosen head, the attention weights from each
destination token to each earlier source token. The
result, :class:`AttentionPatterns`, only holds numbers and token strings; its ``figure()``
draws the explorer (one heatmap and a dropdown over every (prompt, head), in
``circuits/_plots.py``) and its ``grid_figure()`` every head of a layer at once (small multiples,
as CircuitsVis's ``attention_heads``), so the model runs once however often a figure is drawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._results import Result
from lensworks.model import HookedTransformer, LensworksError

__all__ = ["attention_patterns", "AttentionPatterns"]

#: Most (prompt, head) views one result holds: each is a heatmap in the explorer's menu.
MAX_VIEWS = 2048


@dataclass(frozen=True)
class AttentionPatterns(Result):
    """Attention weights of some heads on a few prompts.

    Attributes:
        tokens: Per prompt, its token strings (the first ``max_tokens``; no padding).
        heads: The ``(layer, head)`` pairs, in menu order.
        patterns: ``[prompt, view, destination, source]`` weights of ``heads[view]``; NaN above the
            diagonal (the future) and beyond each prompt's length.
        processing: The state of the weights (``processing_state(model)``).
        note: What the reader should know about the prompts shown (which ones, how many were left
            out); the report shows it under the caption.

    Example:
        >>> res = attention_patterns(zoo.load("char-mlp"), ["the cat sat", "a dog ran"], heads=[(0, 0)])
        >>> res.labels
        ('prompt 0 · L0H0', 'prompt 1 · L0H0')
    """

    tokens: tuple[tuple[str, ...], ...]
    heads: tuple[tuple[int, int], ...]
    patterns: Float[Tensor, "prompt view dest src"]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        p, v = len(self.tokens), len(self.heads)
        if p == 0 or v == 0:
            raise LensworksError(f"AttentionPatterns needs at least one prompt and one head, got {p} and {v}")
        t = max(len(x) for x in self.tokens)
        if self.patterns.ndim != 4 or tuple(self.patterns.shape[:2]) != (p, v) or self.patterns.shape[2] < t \
                or self.patterns.shape[2] != self.patterns.shape[3]:
            raise LensworksError(f"patterns must have shape [{p} prompts, {v} heads, >= {t}, same], "
                                 f"got {list(self.patterns.shape)}")

    @property
    def labels(self) -> tuple[str, ...]:
        """One label per (prompt, head) view, prompt-major: ``"prompt 0 · L1H2"``."""
        return tuple(f"prompt {p} · {HeadId(layer, head).label}" for p in range(len(self.tokens))
                     for layer, head in self.heads)

    def pattern(self, prompt: int, layer: int, head: int) -> Float[Tensor, "dest src"]:
        """The ``[n, n]`` pattern of one head on one prompt (``n`` its token count; NaN above the diagonal).

        Example:
            >>> res = attention_patterns(zoo.load("char-mlp"), ["the cat sat", "a dog ran"], heads=[(0, 0)])
            >>> res.pattern(0, 0, 0).shape  # BOS and 11 characters
            torch.Size([12, 12])
        """
        if (layer, head) not in self.heads:
            raise LensworksError(f"head {HeadId(layer, head).label} is not among the heads shown ({len(self.heads)} heads)")
        if not 0 <= prompt < len(self.tokens):
            raise LensworksError(f"prompt must be in 0..{len(self.tokens) - 1}, got {prompt}")
        n = len(self.tokens[prompt])
        return self.patterns[prompt, self.heads.index((layer, head)), :n, :n]

    def figure(self) -> Any:
        """The explorer: one heatmap and a dropdown over every (prompt, head)."""
        from lensworks.circuits._plots import attention_figure

        return attention_figure(self)

    def grid_figure(self, prompt: int = 0, layer: int | None = None) -> Any:
        """Every head of a layer at once on one prompt: small multiples, one heatmap per head (as
        CircuitsVis's ``attention_heads``), hover naming the query and key tokens and the weight.

        Args:
            prompt: Which prompt (an index into :attr:`tokens`).
            layer: Which layer (one of the layers of :attr:`heads`); None: every layer, the first
                shown and a menu to switch. Either way the figure holds one trace per head drawn.

        Example:
            >>> res = attention_patterns(model, torch.tensor([[0, 5, 6, 7, 5, 6]]))
            >>> fig = res.grid_figure(layer=1)
            >>> len(fig.data), fig.data[0].name  # the 4 heads of layer 1
            (4, 'L1H0')
            >>> len(res.grid_figure().data)  # every head, a menu over the layers
            8
        """
        from lensworks.circuits._plots import attention_grid_figure
        from lensworks.model import check_int

        prompt = check_int(prompt, "prompt", low=0, high=len(self.tokens))
        if layer is not None:
            have = sorted({l for l, _ in self.heads})
            layer = check_int(layer, "layer", low=0)
            if layer not in have:
                raise LensworksError(f"layer {layer} has no head among the heads shown; expected one of {have}")
        return attention_grid_figure(self, prompt, layer)

    def to_frame(self) -> Any:
        """One row per (prompt, head, destination, source) with source <= destination."""
        import pandas as pd

        rows = []
        for p, toks in enumerate(self.tokens):
            n = len(toks)
            dst, src = torch.tril_indices(n, n)
            for v, (layer, head) in enumerate(self.heads):
                w = self.patterns[p, v, dst, src].tolist()
                rows.append(pd.DataFrame({"prompt": p, "layer": layer, "head": head, "destination": dst.tolist(),
                                          "source": src.tolist(), "destination_token": [toks[i] for i in dst.tolist()],
                                          "source_token": [toks[i] for i in src.tolist()], "weight": w}))
        return pd.concat(rows, ignore_index=True)

    def caption(self) -> str:
        """What the explorer shows and how to use it."""
        n_tok = max(len(t) for t in self.tokens)
        return (f"Attention explorer: the attention pattern of any of {len(self.heads)} heads on {len(self.tokens)} "
                f"prompts (at most {n_tok} tokens each); pick a (prompt, head) in the menu at the top right. "
                "Rows are destination tokens, columns source tokens.")


def attention_patterns(
    model: HookedTransformer,
    data: Any,
    *,
    max_tokens: int = 48,
    max_prompts: int = 4,
    heads: Sequence[tuple[int, int]] | None = None,
    prepend_bos: bool | None = None,
    cache: Any = None,
) -> AttentionPatterns:
    """The attention pattern of every chosen head on each prompt (one forward pass, or none with ``cache``).

    Args:
        model: The model (not modified).
        data: Strings or a ``[batch, pos]`` token tensor.
        max_tokens: Tokens kept per prompt (the first ones; at most ``n_ctx``).
        max_prompts: Prompts kept (the first ones).
        heads: ``(layer, head)`` pairs to keep (default: every head).
        prepend_bos: Prepend BOS to strings (default: the model's setting).
        cache: The attention patterns of ``data``, already computed (an ``ActivationCache`` from
            ``model.run_with_cache(tokens)`` on either TransformerLens line, or a ``{hook name:
            pattern}`` dict): they are read from it and the model does not run. It must cover every
            prompt of ``data`` at the length ``data`` encodes to (for strings: all of them, padded
            to the longest, as ``model.to_tokens(strings)`` gives them).

    Returns:
        An :class:`AttentionPatterns`; its ``figure()`` is the attention explorer.

    Raises:
        LensworksError: No prompt, no head, a head out of range, more than 2048 (prompt, head)
            views, or a cache without a chosen layer's pattern or of other tokens.

    Example:
        >>> res = attention_patterns(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> fig = res.figure()
        >>> toks = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])
        >>> _, cache = model.run_with_cache(toks)
        >>> torch.allclose(attention_patterns(model, toks, cache=cache).patterns, attention_patterns(model, toks).patterns,
        ...                equal_nan=True)  # no forward pass with cache=; NaN marks the future
        True
    """
    from lensworks.model import (check_head, check_int, check_token_tensor, encode_batch, hook_name, processing_state,
                                 token_strings, uses_bos)
    from lensworks.model._compat import capture_hooks, require_finite_parameters

    max_tokens = min(check_int(max_tokens, "max_tokens", low=1), model.cfg.n_ctx)
    max_prompts = min(check_int(max_prompts, "max_prompts", low=1), MAX_VIEWS)
    if isinstance(data, torch.Tensor):
        toks = check_token_tensor(model, data, what="data")
        lengths = torch.full((toks.shape[0],), toks.shape[1])
    else:
        texts = [data] if isinstance(data, str) else list(data)
        kept = texts if cache is not None else texts[:max_prompts]  # a cache covers every prompt, padded to the longest
        toks, lengths = encode_batch(model, kept, prepend_bos=uses_bos(model, prepend_bos), what="data")
    full_shape = tuple(toks.shape)
    toks, lengths = toks[:max_prompts, :max_tokens], lengths[:max_prompts].clamp(max=max_tokens)
    if toks.shape[0] == 0:
        raise LensworksError("data: no prompts given; expected at least one string or a non-empty token tensor")
    if heads is not None and len(list(heads)) == 0:
        raise LensworksError("heads is empty; pass None for every head or at least one (layer, head) pair")
    require_finite_parameters(model)
    pairs = [check_head(model, l, h) for l, h in heads] if heads is not None else [
        (l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    if len(pairs) * toks.shape[0] > MAX_VIEWS:
        raise LensworksError(f"{len(pairs) * toks.shape[0]} (prompt, head) views are too many for one page (at most "
                             f"{MAX_VIEWS}); pass fewer prompts (max_prompts=) or heads=[(layer, head), ...]")
    layers = sorted({l for l, _ in pairs})
    captured: dict[int, torch.Tensor] = {}

    if cache is not None:
        from lensworks.circuits._cache import cached_patterns

        found = cached_patterns(model, cache, layers, batch=full_shape[0], positions=full_shape[1])
        n_p, n_t = toks.shape
        captured.update({l: p[:n_p, :, :n_t, :n_t].detach().float().cpu() for l, p in found.items()})
    else:
        def keep(name: str, act: torch.Tensor) -> None:
            captured[int(name.split(".")[1])] = act.detach().float().cpu()

        with torch.inference_mode():
            model.run_with_hooks(toks.to(model.cfg.device), return_type=None,
                                 fwd_hooks=capture_hooks([hook_name("pattern", l) for l in layers], keep))
    n_pos = toks.shape[1]
    out = torch.full((toks.shape[0], len(pairs), n_pos, n_pos), float("nan"))
    future = torch.ones(n_pos, n_pos).triu(1).bool()
    tokens = []
    for p in range(toks.shape[0]):
        n = int(lengths[p])
        tokens.append(tuple(token_strings(model, toks[p, :n])))
        for v, (layer, head) in enumerate(pairs):
            out[p, v, :n, :n] = captured[layer][p, head, :n, :n].masked_fill(future[:n, :n], float("nan"))
    return AttentionPatterns(tokens=tuple(tokens), heads=tuple((int(l), int(h)) for l, h in pairs), patterns=out,
                             processing=processing_state(model))
