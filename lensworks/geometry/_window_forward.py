"""The forward passes behind :class:`~lensworks.geometry.NeighbourApproximation`'s index: each
unique window's block outputs at its last token, run in full or as prefix trees that run each
distinct prefix once through TransformerLens's key-value cache."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks.geometry._common import progress_bar
from lensworks.model import HookedTransformer, LensworksError

__all__ = ["embed_windows", "prefix_tree_forward", "prefix_sharing_supported"]


def embed_windows(model: HookedTransformer, windows: Int[Tensor, "n_windows window"], names: Sequence[str], *,
                  bos: bool, dtype: torch.dtype, batch_size: int, progress: bool | None,
                  shared_prefixes: bool | None = None) -> tuple[Tensor, int]:
    """Unit-normalised block outputs ``[block, n, d_model]`` at the last token of each window.

    ``windows`` are the sorted unique windows of :func:`window_counts`. With ``shared_prefixes``
    (default: on the CPU whenever the model supports it, see :func:`prefix_sharing_supported`;
    on a GPU, where each position costs one more round of kernel launches per batch, the full
    windows until that trade is measured), each batch
    is run as a prefix tree: position ``k`` is computed once per distinct prefix of ``k + 1``
    tokens, reading the keys and values of its parent prefix from a cache, since a causal model's
    activations at a position depend only on the tokens up to it. Sorted windows share most
    short prefixes, so a 10-character window index of 1.1 M characters of text runs about 2.4x
    fewer token positions; the outputs are those of the full pass up to float rounding.

    Under torch.distributed each rank runs only its contiguous range of the windows and keeps
    those outputs (returned with the range's first index); the search adds the ranks' counts.

    Example:
        >>> from lensworks.geometry._neighbour_index import corpus_tokens, window_counts
        >>> char = zoo.load("char-mlp")
        >>> windows = window_counts(corpus_tokens(char, "abcabd"), 3, char.cfg.d_vocab)[0]
        >>> outputs, offset = embed_windows(char, windows, ["blocks.0.hook_mlp_out"], bos=True,
        ...                                 dtype=torch.float32, batch_size=512, progress=False)
        >>> outputs.shape, offset  # [block, window, d_model], the first window held
        (torch.Size([1, 3, 128]), 0)
    """
    import torch.nn.functional as F

    from lensworks.model._compat import require_finite_parameters

    require_finite_parameters(model)

    from lensworks._dist import check_same_weights, world
    from lensworks.geometry._common import gather_at
    from lensworks.model import model_facts

    rank, size = world()
    check_same_weights(model, "corpus windows")
    n_windows = windows.shape[0]
    lo, hi = n_windows * rank // size, n_windows * (rank + 1) // size
    device = torch.device(model_facts(model).device)
    outputs = torch.empty(len(names), hi - lo, model.cfg.d_model, dtype=dtype, device=device)
    blocks = [int(n.split(".")[1]) for n in names]
    stop = max(blocks) + 1
    if shared_prefixes is None:  # measured faster on the CPU; a GPU's launch costs are not yet measured
        shared_prefixes = device.type == "cpu" and prefix_sharing_supported(model)
    elif shared_prefixes and not prefix_sharing_supported(model):
        raise LensworksError("shared_prefixes=True needs a TransformerLens HookedTransformer with a key-value "
                             f"cache and standard or rotary positions; this model ({type(model).__name__}, "
                             f"{model.cfg.positional_embedding_type} positions) runs full windows")
    stop = None if stop >= model.cfg.n_layers and not shared_prefixes else stop
    facts = model_facts(model)
    last = torch.full((1,), windows.shape[1] - 1 + int(bos), dtype=torch.long, device=device)
    for start in progress_bar(range(lo, hi, batch_size), total=math.ceil((hi - lo) / batch_size),
                              desc="NeighbourApproximation.fit", progress=progress):
        chunk = facts.add_bos(windows[start : min(hi, start + batch_size)].long(), bool(bos)).to(device)
        if shared_prefixes:
            acts = prefix_tree_forward(model, chunk, names, stop_at_layer=stop)
        else:
            acts, _ = gather_at(model, chunk, last.expand(chunk.shape[0]), names, stop_at_layer=stop)
        for i, n in enumerate(names):
            outputs[i, start - lo : start - lo + chunk.shape[0]] = F.normalize(acts[n].float(), dim=-1).to(dtype)
    return outputs, lo


def _kv_cache_class():
    """TransformerLens's key-value cache class (its 3.x module path, then the older one), or None."""
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache
    except ImportError:
        pass
    try:  # TransformerLens 2.x and early 3.x
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache

        return HookedTransformerKeyValueCache
    except ImportError:
        return None


def prefix_sharing_supported(model: HookedTransformer) -> bool:
    """Whether :func:`prefix_tree_forward` can run ``model``: a HookedTransformer (a TransformerLens 4
    bridge keeps its cache in Hugging Face's format) with standard or rotary positions, on one
    device, and a key-value cache class in this TransformerLens.

    Example:
        >>> prefix_sharing_supported(zoo.load("char-mlp"))  # a HookedTransformer (TransformerLens 3)
        True
    """
    from lensworks.model._compat import is_bridge

    cfg = model.cfg
    return (not is_bridge(model) and _kv_cache_class() is not None
            and cfg.positional_embedding_type in ("standard", "rotary")
            and int(getattr(cfg, "n_devices", 1) or 1) == 1)


def prefix_tree_forward(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], names: Sequence[str], *,
                        stop_at_layer: int | None) -> dict[str, Float[Tensor, "batch d_model"]]:
    """The activations ``names`` at the last position of each row, running every distinct prefix once.

    Rows sorted lexicographically (as :func:`window_counts` returns them) share the most work:
    a prefix is run once per run of adjacent rows that start with it; any order gives the same
    numbers. Position ``k`` is run for one representative row per distinct prefix
    ``tokens[:, :k + 1]``, one token per row, with the keys and values of its parent prefix
    gathered from TransformerLens's key-value cache; the last position gives the activations.

    Example:
        >>> sorted_tokens = torch.tensor([[0, 67, 68], [0, 67, 69]])  # BOS "ab", BOS "ac": BOS "a" runs once
        >>> acts = prefix_tree_forward(zoo.load("char-mlp"), sorted_tokens, ["blocks.0.hook_mlp_out"], stop_at_layer=1)
        >>> acts["blocks.0.hook_mlp_out"].shape
        torch.Size([2, 128])
    """
    from lensworks.model._compat import capture_hooks

    cache_cls = _kv_cache_class()
    n, T = tokens.shape
    device = tokens.device
    if n == 0:
        return {name: torch.zeros(0, model.cfg.d_model, device=device) for name in names}
    store: dict[str, Tensor] = {}

    def keep(name: str, act: Tensor) -> None:
        store[name] = act[:, -1].detach().clone()

    hooks = capture_hooks(names, keep)
    # new[i]: row i starts a new prefix at this depth (differs from row i - 1 somewhere up to it)
    new = torch.zeros(n, dtype=torch.bool, device=device)
    new[0] = True
    node_of_row = None  # [n]: each row's prefix (node) at the previous depth
    cache = None
    with torch.inference_mode():
        for k in range(T):
            new[1:] |= tokens[1:, k] != tokens[:-1, k]
            rep = new.nonzero()[:, 0]  # one row per node at depth k, in order
            if cache is None:
                cache = cache_cls.init_cache(model.cfg, device, batch_size=rep.numel())
            else:  # each node reads its parent's keys and values
                parent = node_of_row[rep]
                for entry in cache.entries:
                    entry.past_keys = entry.past_keys.index_select(0, parent)
                    entry.past_values = entry.past_values.index_select(0, parent)
                cache.previous_attention_mask = cache.previous_attention_mask.index_select(0, parent)
            node_of_row = torch.cumsum(new.long(), 0) - 1
            step = tokens[rep, k : k + 1]
            model.run_with_hooks(
                step,
                fwd_hooks=hooks if k == T - 1 else [],
                past_kv_cache=cache,
                attention_mask=torch.ones_like(step),
                return_type=None,
                stop_at_layer=stop_at_layer,
            )
    return {name: store[name][node_of_row] for name in names}
