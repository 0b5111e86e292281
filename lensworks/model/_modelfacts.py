"""One home for the facts every analysis must decide the same way about a model.

:func:`model_facts` returns a frozen :class:`ModelFacts` per model, cached by weak reference (a
model that is no longer used is not kept alive) and recomputed when what it was read from
changes (the model moved to another device or dtype, got another tokenizer, or its
``default_prepend_bos`` was set). The helpers that analyses call (``has_resid_mid``,
``has_stream``, ``model_streams``, ``uses_bos``, ``bos_token_id``) answer from it, so a fact is
decided in one place.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from lensworks.model._core import LensworksError, hook_name

__all__ = ["ModelFacts", "model_facts", "ALL_STREAMS"]

#: Every stream lensworks reads by short name, in depth order within a block.
ALL_STREAMS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What lensworks needs to know about a model, decided once.

    Attributes:
        backend: ``"TransformerLens 3"`` (HookedTransformer) or ``"TransformerLens 4"`` (bridge).
        architecture: The checkpoint's architecture name, when known.
        n_layers, n_heads, n_key_value_heads, d_model, d_head, d_vocab, d_vocab_out, n_ctx: Sizes
            (``n_key_value_heads`` equals ``n_heads`` without grouped-query attention).
        streams: The streams that exist, in depth order (a subset of :data:`ALL_STREAMS`):
            attention-only models have no ``mlp_out`` / ``resid_mid``, parallel blocks (GPT-NeoX,
            Pythia, GPT-J) no ``resid_mid``.
        attn_only, parallel_attn_mlp: Block layout.
        positional_embedding: TransformerLens's ``positional_embedding_type``.
        pos_embed_in_residual: Whether a positional embedding is added to the residual stream
            (learned absolute positions), as opposed to inside attention (rotary, ALiBi, shortformer).
        bos_id: The BOS token id the model can read, or None (no tokenizer, no BOS token, or a
            tokenizer BOS past the embedding).
        prepend_bos: Whether strings get BOS by default.
        device: Where the weights are.
        dtype: The weights' dtype.
        working_dtype: The dtype analyses accumulate in: float64 for a float64 model, else float32.
        attn_scores_soft_cap, output_logits_soft_cap: Gemma-2-style soft-caps (None when absent).
        identity: A short fingerprint of the weights, recorded in every result's ``processing``.
        devices: Every device the weights sit on (several for a split model).
        pattern_editable: Whether editing ``hook_pattern`` changes the output (False where
            TransformerLens 4's bridge runs attention whole in the Hugging Face module, as for
            GPT-J): analyses that edit patterns refuse otherwise.

    Example:
        >>> facts = model_facts(zoo.load("char-mlp"))
        >>> facts.streams, facts.bos_id, facts.prepend_bos
        (('resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post'), 0, True)
    """

    backend: str
    architecture: str | None
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    streams: tuple[str, ...]
    attn_only: bool
    parallel_attn_mlp: bool
    positional_embedding: str
    pos_embed_in_residual: bool
    bos_id: int | None
    prepend_bos: bool
    device: torch.device
    dtype: torch.dtype
    working_dtype: torch.dtype
    attn_scores_soft_cap: float | None
    output_logits_soft_cap: float | None
    #: A short identity of the weights (sizes plus a strided sample of W_E and W_U, 4 significant
    #: digits): two results whose records carry different identities come from different models.
    identity: str = ""
    #: Whether an edit of ``hook_pattern`` changes the output (see
    #: :func:`lensworks.model._compat.pattern_edits_apply`); analyses that edit patterns refuse otherwise.
    pattern_editable: bool = True
    #: Every device the weights sit on, in module order (more than one when the model is split
    #: with ``device_map`` / ``n_devices``); :attr:`device` is the first, where tokens go.
    devices: tuple[str, ...] = ()

    @property
    def has_resid_mid(self) -> bool:
        """Whether blocks have a residual stream between attention and MLP."""
        return "resid_mid" in self.streams

    def has_stream(self, stream: str) -> bool:
        """Whether ``stream`` exists (raises for a name lensworks does not know).

        Example:
            >>> model_facts(zoo.load("induction-2l")).has_stream("mlp_out")  # attention only
            False
        """
        if stream not in ALL_STREAMS:
            raise LensworksError(f"unknown stream {stream!r}; expected one of {list(ALL_STREAMS)}")
        return stream in self.streams

    def hook(self, stream: str, layer: int | None = None) -> str:
        """The hook name of ``stream`` (any short name :func:`hook_name` knows) in ``layer``.

        Example:
            >>> model_facts(model).hook("resid_post", 1)
            'blocks.1.hook_resid_post'
        """
        return hook_name(stream, layer)

    def uses_bos(self, prepend_bos: bool | None = None) -> bool:
        """Whether strings get BOS: the caller's choice, else the model's default; asking for BOS
        on a model without one raises.

        Example:
            >>> model_facts(model).uses_bos(False)
            False
        """
        if prepend_bos is None:
            return self.prepend_bos
        if prepend_bos and self.bos_id is None:
            raise LensworksError("prepend_bos=True but the model has no tokenizer with a BOS token")
        return bool(prepend_bos)

    def bos_offset(self, prepend_bos: bool | None = None) -> int:
        """Positions taken by BOS at the start of a sequence (0 or 1): the first one an analysis
        of text reads."""
        return int(self.uses_bos(prepend_bos))

    def leading_bos(self, tokens: Int[Tensor, "batch pos"], prepend_bos: bool | None = None) -> int:
        """How many positions of ``tokens`` (given, not encoded here) hold BOS: the caller's
        ``prepend_bos`` when given, else 1 exactly when every row starts with the model's BOS id.

        Example:
            >>> model_facts(zoo.load("char-mlp")).leading_bos(torch.tensor([[0, 5, 6]]))
            1
        """
        if prepend_bos is not None:
            return int(self.uses_bos(prepend_bos))
        rows = tokens[None] if tokens.ndim == 1 else tokens
        return int(self.bos_id is not None and rows.shape[-1] > 0 and bool((rows[:, 0] == self.bos_id).all()))

    def seeded(self, seed: int) -> Any:
        """A context manager seeding torch's RNG on the CPU and on the model's device, restoring
        both afterwards (:func:`lensworks._rng.seeded_rng`).

        Example:
            >>> with model_facts(model).seeded(0):
            ...     first = torch.randn(3)
            >>> with model_facts(model).seeded(0):
            ...     again = torch.randn(3)
            >>> torch.equal(first, again)
            True
        """
        from lensworks._rng import seeded_rng

        return seeded_rng(seed, self.device)

    @property
    def precise_dtype(self) -> torch.dtype:
        """The dtype for small exact factorisations (eigenvalues, SVDs of d_head-sized factors):
        float64 on the CPU or for a float64 model, else the working dtype (float64 is slow on GPUs)."""
        return torch.float64 if self.device.type == "cpu" or self.dtype == torch.float64 else self.working_dtype

    def add_bos(self, tokens: Int[Tensor, "batch pos"], prepend_bos: bool | None = None) -> Int[Tensor, "batch pos"]:
        """``tokens`` (``[pos]`` or ``[batch, pos]``) with BOS in front when :meth:`uses_bos` says
        so; unchanged otherwise. Same device and dtype as ``tokens``.

        Example:
            >>> model_facts(zoo.load("char-mlp")).add_bos(torch.tensor([[5, 6]])).tolist()
            [[0, 5, 6]]
        """
        if not self.uses_bos(prepend_bos):
            return tokens
        one = tokens.ndim == 1
        rows = tokens[None] if one else tokens
        col = torch.full((rows.shape[0], 1), int(self.bos_id), dtype=rows.dtype, device=rows.device)
        out = torch.cat([col, rows], dim=1)
        return out[0] if one else out

    def stream_hooks(self, streams: Sequence[str]) -> list[str]:
        """Hook names of ``streams`` in every layer, layer by layer (raises naming missing streams)."""
        bad = [s for s in streams if not self.has_stream(s)]
        if bad:
            why = "attention-only" if self.attn_only else "parallel attention/MLP"
            raise LensworksError(f"streams {bad} do not exist in this {why} model; it has {list(self.streams)}")
        return [hook_name(s, layer) for layer in range(self.n_layers) for s in streams]


@dataclasses.dataclass
class _Entry:
    signature: tuple[Any, ...]
    tokenizer: Any  # weak reference to the tokenizer the facts were read with, or None
    facts: ModelFacts


_CACHE: "weakref.WeakKeyDictionary[Any, _Entry]" = weakref.WeakKeyDictionary()


def _signature(model: Any) -> tuple[Any, ...]:
    """What the facts depend on and a user may change on a live model."""
    cfg = model.cfg
    try:
        p = next(model.parameters())
        where = (p.device, p.dtype)
    except StopIteration:  # pragma: no cover - a model without parameters
        where = (torch.device(str(cfg.device)), cfg.dtype)
    return (*where, bool(cfg.default_prepend_bos), int(cfg.n_ctx), int(cfg.d_vocab))


def _tokenizer_ref(tok: Any) -> Any:
    if tok is None:
        return None
    try:
        return weakref.ref(tok)
    except TypeError:  # pragma: no cover - a tokenizer that cannot be weakly referenced
        return lambda: tok


def model_facts(model: Any) -> ModelFacts:
    """The :class:`ModelFacts` of ``model`` (cached; recomputed when the model moved, changed
    dtype, got another tokenizer or another BOS default).

    Example:
        >>> model_facts(zoo.load("induction-2l")).n_layers
        2
    """
    from lensworks.model._compat import check_model

    check_model(model)
    sig = _signature(model)
    entry = _CACHE.get(model)
    tok = model.tokenizer
    if entry is not None and entry.signature == sig and (entry.tokenizer() if entry.tokenizer else None) is tok:
        return entry.facts
    facts = _read_facts(model, sig)
    _CACHE[model] = _Entry(sig, _tokenizer_ref(tok), facts)
    return facts


def _devices(model: Any) -> tuple[str, ...]:
    """The distinct devices of the model's parameters, in module order."""
    seen: dict[str, None] = {}
    for p in model.parameters():
        seen.setdefault(str(p.device), None)
    return tuple(seen)


def _read_facts(model: Any, sig: tuple[Any, ...]) -> ModelFacts:
    from lensworks.model import _compat
    from lensworks.model._compat import TL_MAJOR, architecture

    cfg = model.cfg
    attn_only = bool(cfg.attn_only)
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    streams = tuple(s for s in ALL_STREAMS if not (
        (s == "mlp_out" and attn_only) or (s == "resid_mid" and (attn_only or parallel))))
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None) if tok is not None else None
    bos = int(bos) if bos is not None and 0 <= int(bos) < cfg.d_vocab else None
    device, dtype = sig[0], sig[1]
    caps = {k: float(getattr(cfg, k, 0) or 0) for k in ("attn_scores_soft_cap", "output_logits_soft_cap")}
    pos = str(cfg.positional_embedding_type)
    return ModelFacts(
        backend=f"TransformerLens {TL_MAJOR}",
        architecture=architecture(model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        n_key_value_heads=int(cfg.n_key_value_heads or cfg.n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        d_vocab_out=int(cfg.d_vocab_out),
        n_ctx=int(cfg.n_ctx),
        streams=streams,
        attn_only=attn_only,
        parallel_attn_mlp=parallel,
        positional_embedding=pos,
        pos_embed_in_residual=pos == "standard",
        bos_id=bos,
        prepend_bos=bool(cfg.default_prepend_bos) and bos is not None,
        device=device,
        dtype=dtype,
        working_dtype=torch.float64 if dtype == torch.float64 else torch.float32,
        attn_scores_soft_cap=caps["attn_scores_soft_cap"] if caps["attn_scores_soft_cap"] > 0 else None,
        output_logits_soft_cap=caps["output_logits_soft_cap"] if caps["output_logits_soft_cap"] > 0 else None,
        identity=_identity(model),
        pattern_editable=_compat.pattern_edits_apply(model),
        devices=_devices(model),
    )


def _identity(model: Any) -> str:
    """Sizes and a strided sample of the embedding and unembedding (at most 512 values each),
    rounded so that the same weights read the same on both TransformerLens lines."""
    import hashlib

    cfg = model.cfg
    parts = [f"L{cfg.n_layers}d{cfg.d_model}h{cfg.n_heads}v{cfg.d_vocab}"]
    for name in ("W_E", "W_U"):
        try:
            w = getattr(model, name).detach().reshape(-1)
        except (AttributeError, RuntimeError):  # pragma: no cover - a model without the matrix
            continue
        step = max(1, w.numel() // 512)
        sample = w[::step][:512].double().cpu()
        parts.append(",".join(f"{v:.4g}" for v in sample.tolist()))
    return parts[0] + "-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
