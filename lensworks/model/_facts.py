"""Facts about a model that every analysis needs decided the same way: which residual streams
exist, whether BOS is prepended, default sequence lengths, a random control copy, and the
record of the weight processing the model has had."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch

from lensworks.model._core import HookedTransformer, LensworksError
from lensworks.model._modelfacts import ALL_STREAMS, model_facts

__all__ = ["ALL_STREAMS", "RESIDUAL_STREAMS", "has_resid_mid", "has_stream", "model_streams", "missing_stream_error",
           "uses_bos", "default_seq_len", "random_copy", "processing_state", "stream_hooks"]
#: The residual streams analyses read by default (``resid_mid`` where the model has one).
RESIDUAL_STREAMS = ("resid_pre", "resid_mid", "resid_post")


def has_resid_mid(model: HookedTransformer) -> bool:
    """True when blocks have a residual stream between attention and MLP.

    Attention-only models have no MLP, and parallel blocks (GPT-NeoX, Pythia, GPT-J) add
    attention and MLP outputs to the same input, so neither has ``resid_mid``.

    Example:
        >>> has_resid_mid(zoo.load("char-mlp"))
        True
    """
    return model_facts(model).has_resid_mid


def has_stream(model: HookedTransformer, stream: str) -> bool:
    """Whether ``stream`` (one of :data:`ALL_STREAMS`) exists in this model.

    Example:
        >>> has_stream(zoo.load("induction-2l"), "mlp_out")  # attention only
        False
    """
    return model_facts(model).has_stream(stream)


def model_streams(model: HookedTransformer, wanted: Sequence[str] = RESIDUAL_STREAMS) -> tuple[str, ...]:
    """The streams of ``wanted`` that exist in ``model``, in the order given.

    Example:
        >>> model_streams(zoo.load("char-mlp"))
        ('resid_pre', 'resid_mid', 'resid_post')
        >>> model_streams(zoo.load("induction-2l"))  # attention only, as in parallel blocks (NeoX)
        ('resid_pre', 'resid_post')
    """
    return tuple(s for s in wanted if has_stream(model, s))


def missing_stream_error(model: HookedTransformer, streams: Sequence[str]) -> None:
    """Raise naming the streams of ``streams`` the model lacks, and why, if any (one stream name
    may be given as a string)."""
    if isinstance(streams, str):
        streams = (streams,)
    model_facts(model).stream_hooks(streams)


def uses_bos(model: HookedTransformer, prepend_bos: bool | None = None) -> bool:
    """Whether string input gets a BOS token: the caller's choice, else the model's default.

    The default is TransformerLens's ``cfg.default_prepend_bos`` (False for GPT-NeoX and Qwen2
    checkpoints, as in ``from_pretrained``), and False whenever the model has no tokenizer
    with a BOS token. Asking for BOS on such a model raises.

    Example:
        >>> uses_bos(zoo.load("char-mlp"))
        True
    """
    return model_facts(model).uses_bos(prepend_bos)


def default_seq_len(model: HookedTransformer, *, preferred: int = 50, copies: int = 2, bos: bool = True) -> int:
    """A sequence length that fits ``copies`` repeats (plus BOS) in ``n_ctx``: ``preferred``
    when it fits, else the longest that does.

    Example:
        >>> default_seq_len(zoo.load("induction-2l"))  # n_ctx 64
        31
    """
    room = (model.cfg.n_ctx - int(bos)) // copies
    if room < 2:
        raise LensworksError(f"n_ctx={model.cfg.n_ctx} is too short for {copies} repeats of at least 2 tokens")
    return max(2, min(int(preferred), room))


def random_copy(model: HookedTransformer, seed: int = 0) -> HookedTransformer:
    """A freshly initialised model with the same config (a control), on the same device and in
    the same dtype; torch's global random state is left untouched.

    Example:
        >>> random_copy(model, seed=1).cfg.d_model == model.cfg.d_model
        True
    """
    from lensworks.model._compat import is_bridge

    if is_bridge(model):
        from lensworks.model import _bridge

        return _bridge.random_copy(model, seed)
    cfg = copy.deepcopy(model.cfg)
    cfg.seed = None
    cfg.tokenizer_name = None
    cfg.init_weights = True
    from lensworks.model._modelfacts import model_facts
    from lensworks.model._compat import quiet as _quiet

    device = model_facts(model).device
    cfg.device = str(device)
    with model_facts(model).seeded(seed), _quiet():
        fresh = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    if next(fresh.parameters()).device != device:
        with _quiet():
            fresh.to(device, print_details=False)
    fresh.eval()
    return fresh


def _centred(mats: Sequence[torch.Tensor], dim: int, *, chunk_elements: int = 1 << 24) -> bool:
    """Whether every matrix has (numerically) zero mean along ``dim``.

    Read in slices of about ``chunk_elements`` entries with float32 reductions, so a 128k-token
    embedding in bf16 costs no float32 copy (2 GB for a Llama-3 shape).
    """
    for m in mats:
        m = m.detach()
        if m.numel() == 0:
            continue
        rows = m.movedim(dim, -1).reshape(-1, m.shape[dim])  # a view where possible
        step = max(1, chunk_elements // max(1, rows.shape[1]))
        sq = torch.zeros((), dtype=torch.float64, device=m.device)
        worst = torch.zeros((), dtype=torch.float32, device=m.device)
        for start in range(0, rows.shape[0], step):
            part = rows[start : start + step]  # reductions upcast inside the kernel: no float32 copy
            sq += torch.linalg.vector_norm(part, dtype=torch.float32).double() ** 2
            worst = torch.maximum(worst, part.sum(-1, dtype=torch.float32).abs().max() / rows.shape[1])
        scale, worst = math.sqrt(float(sq) / m.numel()), float(worst)
        if scale == 0.0:
            continue
        # centred fp32 weights give ~1e-7, bf16 ~1e-3 / sqrt(d); uncentred ~1 / sqrt(d)
        if worst > 2e-3 * scale:
            return False
    return True


def processing_state(model: HookedTransformer) -> dict[str, Any]:
    """What weight processing the model has had, read from its config and its weights.

    TransformerLens keeps no flag for centring, so it is detected: writing weights count as
    centred when every matrix that writes to the residual stream (``W_E``, ``W_pos``, ``W_O``,
    ``W_out`` and their biases) has zero mean over ``d_model``; the unembedding when ``W_U`` has
    zero mean over the vocabulary. Two results are comparable only when these records agree.
    The record reads the same for a HookedTransformer and a TransformerBridge.

    Example:
        >>> processing_state(zoo.load("char-mlp"))["fold_ln"]  # stored unfolded
        False
    """
    from lensworks.model import _compat

    _compat.check_model(model)
    cfg = model.cfg
    return {
        "normalization_type": _compat.normalization_type(model),
        "fold_ln": _compat.folded(model),
        "center_writing_weights": _centred(_compat.writing_weights(model), -1),
        "center_unembed": _centred([model.W_U], -1),
        "attn_only": bool(cfg.attn_only),
        "parallel_attn_mlp": bool(getattr(cfg, "parallel_attn_mlp", False)),
        "n_key_value_heads": cfg.n_key_value_heads,
        "dtype": str(cfg.dtype).replace("torch.", ""),
        "architecture": _compat.architecture(model),
        "model": model_facts(model).identity,
    }


def stream_hooks(model: HookedTransformer, streams: Sequence[str]) -> list[str]:
    """Hook names of ``streams`` in every layer (raises for streams the model lacks)."""
    return model_facts(model).stream_hooks(streams)
