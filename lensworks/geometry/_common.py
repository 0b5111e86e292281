"""Shared plumbing for the geometry analyses: batching prompts and reading activations at one
position per prompt, without keeping full caches."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._dist import is_main
from lensworks.model._compat import capture_hooks, logits_from_block, require_finite_activation, require_finite_parameters
from lensworks.model import (
    ALL_STREAMS,
    HookedTransformer,
    LensworksError,
    check_token_tensor,
    encode_batch,
    has_stream,
    hook_name,
    uses_bos, model_facts,
)

Data = Union[str, Sequence[str], Tensor, Iterable[Any]]


class CachedBatch:
    """Activations a user already cached, standing in for a batch of tokens.

    Wraps a TransformerLens ``ActivationCache`` (``model.run_with_cache(tokens)``) or a plain
    ``{hook name: [batch, pos, ...] tensor}`` dict, so the analyses that only read cached
    activations (``residual_stats``, ``logit_lens``) use them instead of running the model.

    Example:
        >>> tokens = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]])
        >>> _, cache = model.run_with_cache(tokens)
        >>> CachedBatch(cache).shape  # (batch, pos)
        (2, 4)
    """

    def __init__(self, cache: Any, rows: slice | None = None, start: int = 0):
        self.cache = cache
        self.rows = rows if rows is not None else slice(None)
        self.start = start
        keys = list(cache.keys())
        if not keys:
            raise LensworksError("the activation cache is empty; expected hook names such as blocks.0.hook_resid_pre")
        first = cache[keys[0]]
        if not isinstance(first, Tensor) or first.ndim < 2:
            raise LensworksError(
                f"the activation cache must hold [batch, pos, ...] tensors (with a batch dimension); "
                f"{keys[0]} has shape {tuple(getattr(first, 'shape', ()))}"
            )
        self.n_rows = first.shape[0] if rows is None else len(range(*self.rows.indices(first.shape[0])))
        self.n_pos = first.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, pos)`` as a token tensor of the same batch would have."""
        return (self.n_rows, self.n_pos)

    def get(self, name: str) -> Tensor:
        """The cached activation ``name`` for this batch's rows, or an error naming what is missing."""
        if name not in self.cache.keys():
            raise LensworksError(
                f"the activation cache has no {name}; cache it, e.g. model.run_with_cache(tokens) without a "
                "names_filter (or with one that keeps this hook)"
            )
        return self.cache[name][self.rows]

    def label(self, row: int) -> str:
        """A label for one cached row (the cache holds no token ids)."""
        return f"cached row {self.start + row}"


def is_activation_cache(data: Any) -> bool:
    """A TransformerLens ``ActivationCache`` or a ``{hook name: tensor}`` dict."""
    if type(data).__name__ == "ActivationCache" and hasattr(data, "keys"):
        return True
    return (isinstance(data, dict) and bool(data) and all(isinstance(k, str) and k.startswith(("blocks.", "hook_"))
                                                          for k in data)
            and all(isinstance(v, Tensor) for v in data.values()))

__all__ = [
    "Data",
    "CachedBatch",
    "is_activation_cache",
    "iter_batches",
    "gather_at",
    "cosine",
    "hellinger",
    "kl_divergence",
    "softcap",
    "std_or_zero",
    "has_hook",
    "progress_bar",
]


def progress_bar(iterable=None, *, total=None, desc: str = "", progress: bool | None = None):
    """A tqdm bar that shows only on a terminal (``progress=None``), always (True) or never (False)."""
    from tqdm.auto import tqdm

    disable = None if progress is None else (not progress)
    if not is_main():  # under torch.distributed only rank 0 shows progress
        disable = True
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False)


def has_hook(model: HookedTransformer, kind: str, layer: int | None = None) -> bool:
    """Whether the model exposes the hook point (e.g. attention-only models have no ``mlp_out``)."""
    if kind in ALL_STREAMS and not has_stream(model, kind):
        return False  # TransformerLens defines some of these hooks but never calls them
    if kind == "mlp_post" and model.cfg.attn_only:
        return False
    return hook_name(kind, layer) in model.hook_dict


def _positions(lengths: Tensor, position: int, what: str) -> Tensor:
    if not isinstance(position, int) or isinstance(position, bool):
        raise LensworksError(f"position must be an int, got {type(position).__name__}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if not -longest <= position < max(longest, 1):
        raise LensworksError(f"{what}: position {position} does not exist in sequences of at most {longest} tokens")
    idx = lengths + position if position < 0 else torch.full_like(lengths, position)
    bad = (idx < 0) | (idx >= lengths)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise LensworksError(
            f"{what}: position {position} does not exist in item {i}, which has {int(lengths[i])} tokens"
        )
    return idx


def iter_batches(
    model: HookedTransformer,
    data: Data,
    *,
    batch_size: int,
    position: int = -1,
    prepend_bos: bool | None = None,
    what: str = "data",
    shard: Any = None,
) -> Iterator[tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]]:
    """Yield ``(tokens, index)`` batches on the model's device; ``index`` is the position read per row.

    ``data`` may be a string, a list of strings (tokenized one by one and right-padded, so each
    prompt is read at its own last token: padding after it cannot change it in a causal model),
    a ``[batch, pos]`` token tensor, or any iterable whose items are lists of strings or token
    tensors (shards generated on the fly; they are never stored together). ``prepend_bos``
    (default: the model's setting) applies to strings only. Raises when nothing comes at all.

    ``shard`` (a :class:`lensworks._dist.Shard`): under torch.distributed, every rank reads all
    the data but yields only its contiguous share of each batch (recorded in the shard, whose
    checksum is compared across ranks when the data ends). Alone, it changes nothing.
    """
    if shard is not None and shard.size > 1:
        if is_activation_cache(data):
            raise LensworksError(f"{what}: under torch.distributed pass tokens or text, not an activation cache "
                                 "(a cache belongs to one process)")
        for toks, idx in iter_batches(model, data, batch_size=batch_size, position=position,
                                      prepend_bos=prepend_bos, what=what):
            mine, mine_idx = shard.take(toks, idx)
            if mine.shape[0]:
                yield mine, mine_idx
        shard.finish()
        return
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LensworksError(f"batch_size must be a positive int, got {batch_size!r}")
    require_finite_parameters(model)
    bos = uses_bos(model, prepend_bos) if model.tokenizer is not None else False
    device = model_facts(model).device
    n_seen = 0

    def from_strings(texts: Sequence[str]):
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            if not all(isinstance(t, str) for t in chunk):
                bad = next(t for t in chunk if not isinstance(t, str))
                raise LensworksError(f"{what}: expected strings, got an item of type {type(bad).__name__}")
            toks, lengths = encode_batch(model, chunk, prepend_bos=bos, what=what)
            yield toks.to(device), _positions(lengths, position, what).to(device)

    def from_tensor(toks: Tensor):
        toks = check_token_tensor(model, toks, what=what)
        lengths = torch.full((toks.shape[0],), toks.shape[1], dtype=torch.long)
        idx = _positions(lengths, position, what) if toks.shape[0] else lengths
        for start in range(0, toks.shape[0], batch_size):
            yield toks[start : start + batch_size].to(device), idx[start : start + batch_size].to(device)

    if is_activation_cache(data):
        whole = CachedBatch(data)
        lengths = torch.full((whole.n_rows,), whole.n_pos, dtype=torch.long)
        idx = _positions(lengths, position, what)
        for start in range(0, whole.n_rows, batch_size):
            n_seen += min(batch_size, whole.n_rows - start)
            yield CachedBatch(data, slice(start, start + batch_size), start), idx[start : start + batch_size]
        if n_seen == 0:
            raise LensworksError(f"{what}: the activation cache holds no rows")
        return
    if isinstance(data, str):
        sources: Iterable[Any] = [[data]]
    elif isinstance(data, Tensor):
        sources = [data]
    elif isinstance(data, (list, tuple)) and (len(data) == 0 or isinstance(data[0], str)):
        sources = [data]
    else:
        try:
            sources = iter(data)
        except TypeError:
            raise LensworksError(
                f"{what}: expected strings, a token tensor or an iterable of batches, got {type(data).__name__}"
            ) from None
    for item in sources:
        if isinstance(item, Tensor):
            gen = from_tensor(item)
        elif isinstance(item, str):
            gen = from_strings([item])
        elif isinstance(item, (list, tuple)):
            gen = from_strings(list(item))
        else:
            raise LensworksError(
                f"{what}: batches must be lists of strings or token tensors, got {type(item).__name__}"
            )
        for toks, idx in gen:
            n_seen += toks.shape[0]
            yield toks, idx
    if n_seen == 0:
        raise LensworksError(f"{what}: empty data set; expected at least one prompt")


def gather_at(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    index: Int[Tensor, " batch"],
    names: Sequence[str],
    *,
    logits: bool = False,
    stop_at_layer: int | None = None,
) -> tuple[dict[str, Float[Tensor, "batch d_model"]], Float[Tensor, "batch d_vocab"] | None]:
    """Run the model once and keep only the activations at ``index`` (one position per row).

    ``tokens`` may be a :class:`CachedBatch`: the activations are then read from the cache and
    the model is not run (``logits`` come from the cached final residual, through the model's
    own final normalisation and unembedding, or from a ``"logits"`` entry when the cache has one).
    """
    if isinstance(tokens, CachedBatch):
        return _gather_cached(model, tokens, index, names, logits=logits)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    store: dict[str, Tensor] = {}

    def keep(name: str, act: Tensor) -> None:
        store[name] = act[rows, index].detach().clone()

    hooks = capture_hooks(names, keep)
    with torch.inference_mode():
        out = model.run_with_hooks(
            tokens,
            fwd_hooks=hooks,
            return_type="logits" if logits and stop_at_layer is None else None,
            stop_at_layer=stop_at_layer,
        )
    last = out[rows, index].float() if (logits and stop_at_layer is None) else None
    return store, last


def _gather_cached(model: HookedTransformer, batch: CachedBatch, index: Tensor, names: Sequence[str], *,
                   logits: bool) -> tuple[dict[str, Tensor], Tensor | None]:
    rows = torch.arange(batch.n_rows)
    store = {}
    for name in names:
        act = batch.get(name)
        store[name] = require_finite_activation(act[rows.to(act.device), index.to(act.device)].detach().clone(), name)
    if not logits:
        return store, None
    if "logits" in batch.cache.keys():
        out = batch.get("logits")
        return store, out[rows.to(out.device), index.to(out.device)].float()
    final = hook_name("resid_post", model.cfg.n_layers - 1)
    resid = store[final] if final in store else batch.get(final)[rows, index]
    with torch.inference_mode():
        last = logits_from_block(model, resid.to(model_facts(model).device)[:, None, :], model.cfg.n_layers)[:, 0]
    return store, last.float()


def cosine(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Cosine similarity along ``dim``; 0 where either vector is zero (never NaN)."""
    a = a.double() if a.dtype == torch.float64 or b.dtype == torch.float64 else a.float()
    b = b.to(a.dtype)
    num = (a * b).sum(dim)
    den = a.norm(dim=dim) * b.norm(dim=dim)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(num))


def hellinger(p: Tensor, q: Tensor) -> Tensor:
    """Hellinger distance along the last axis; see :func:`lensworks.geometry.hellinger`."""
    if p.shape != q.shape:
        raise LensworksError(f"hellinger: p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.ndim == 0:
        raise LensworksError("hellinger: expected distributions along the last axis, got scalars")
    if bool((p < 0).any()) or bool((q < 0).any()):
        raise LensworksError("hellinger: probabilities must be non-negative")
    p = p.double() if p.dtype == torch.float64 else p.float()
    q = q.to(p.dtype)
    d = (p.sqrt() - q.sqrt()).pow(2).sum(-1).sqrt() / math.sqrt(2)
    return d.clamp(0.0, 1.0)


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(P || Q) along the last axis from log-probabilities (nats, >= 0)."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0)


def softcap(model: HookedTransformer, logits: Tensor) -> Tensor:
    """Apply the model's output-logit soft cap (if any), as its own forward pass does."""
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        return cap * torch.tanh(logits / cap)
    return logits


def std_or_zero(x: Tensor, dim: int = 0) -> Tensor:
    """Unbiased standard deviation along ``dim``, or 0 when there is a single sample."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.select(dim, 0))
    return x.std(dim=dim)
