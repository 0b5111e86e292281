"""The one module that knows TransformerLens: loading, saving, hook names and weight access.

Everything else in lensworks asks this module for weights (``W_Q``, ``W_K``, ``W_V``,
``W_O``, ``W_E``, ``W_U``, with grouped-query heads already mapped to query heads), hook
names and tokenization, so that a future TransformerLens (4.x ``TransformerBridge``) needs
changes here only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = [
    "HookedTransformer",
    "load_model",
    "save_model",
    "vocab_tokenizer",
    "hook_name",
    "attention_weights",
    "embedding",
    "unembedding",
    "head_labels",
    "processing_state",
    "check_layer",
    "check_head",
    "as_tokens",
    "check_token_tensor",
    "bos_token_id",
    "LensworksError",
    "model_vocab",
]

ModelSource = Union[HookedTransformer, str, Path]

#: Names of the BOS token that a bundled vocabulary may carry, in order of preference.
BOS_NAMES = ("<bos>", "<|bos|>", "<s>", "<|endoftext|>")

#: Hook points lensworks reads, by short name. The only place hook strings are spelled out.
_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "z": "blocks.{layer}.attn.hook_z",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
}


class LensworksError(ValueError):
    """Raised for input lensworks cannot use; the message names what was expected and given."""


# --------------------------------------------------------------------------- hooks, checks


def hook_name(kind: str, layer: int | None = None) -> str:
    """The TransformerLens hook name for a short stream name.

    Args:
        kind: One of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``,
            ``pattern``, ``attn_scores``, ``z``, ``mlp_post``, ``embed``, ``pos_embed``,
            ``ln_final``.
        layer: Block index, for per-block hooks.

    Returns:
        The hook point's full name.

    Example:
        >>> hook_name("resid_mid", 3)
        'blocks.3.hook_resid_mid'
    """
    if kind not in _HOOKS:
        raise LensworksError(f"unknown stream or hook {kind!r}; expected one of {sorted(_HOOKS)}")
    template = _HOOKS[kind]
    if "{layer}" in template:
        if layer is None:
            raise LensworksError(f"hook {kind!r} needs a layer index")
        return template.format(layer=layer)
    return template


def check_layer(model: HookedTransformer, layer: int) -> int:
    """Return ``layer`` as a non-negative index, or raise naming the valid range.

    Example:
        >>> check_layer(model, -1) == model.cfg.n_layers - 1
        True
    """
    n = model.cfg.n_layers
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LensworksError(f"layer must be an int, got {type(layer).__name__}")
    if not -n <= layer < n:
        raise LensworksError(f"layer {layer} is out of range for a model with {n} layers (0..{n - 1})")
    return layer % n


def check_head(model: HookedTransformer, layer: int, head: int) -> tuple[int, int]:
    """Validate a (layer, head) pair and return it with non-negative indices.

    Example:
        >>> check_head(model, 0, 1)
        (0, 1)
    """
    layer = check_layer(model, layer)
    n = model.cfg.n_heads
    if not isinstance(head, int) or isinstance(head, bool) or not -n <= head < n:
        raise LensworksError(f"head {head} is out of range for a model with {n} heads per layer (0..{n - 1})")
    return layer, head % n


def head_labels(model_or_cfg: Any) -> list[str]:
    """Labels ``L{layer}H{head}`` for every head, layer-major (TransformerLens's order).

    Example:
        >>> head_labels(model)[:2]
        ['L0H0', 'L0H1']
    """
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    return [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def processing_state(model: HookedTransformer) -> dict[str, Any]:
    """What weight processing the model has had; recorded in every result.

    Scores read from weights change when LayerNorm is folded or weights are centred, so two
    results are only comparable when their processing states agree.

    Example:
        >>> sorted(processing_state(model))[:2]
        ['attn_only', 'center_unembed']
    """
    cfg = model.cfg
    return {
        "normalization_type": cfg.normalization_type,
        "fold_ln": cfg.normalization_type in ("LNPre", "RMSPre"),
        "center_writing_weights": bool(getattr(cfg, "center_writing_weights", False)),
        "center_unembed": bool(getattr(cfg, "center_unembed", False)),
        "attn_only": bool(cfg.attn_only),
        "n_key_value_heads": cfg.n_key_value_heads,
        "dtype": str(cfg.dtype).replace("torch.", ""),
    }


# --------------------------------------------------------------------------- weights


def _stack_heads(blocks: Iterable[Any], name: str) -> Tensor:
    return torch.stack([getattr(b.attn, name) for b in blocks], dim=0)


def attention_weights(
    model: HookedTransformer, layers: Sequence[int] | None = None
) -> dict[str, Float[Tensor, "n_layers n_heads d_model d_head"]]:
    """Per-query-head attention weights, detached, for the given layers.

    Grouped-query attention stores ``n_key_value_heads`` key/value heads; here they are mapped
    to query heads (query head ``h`` reads kv head ``h // (n_heads // n_key_value_heads)``), so
    every returned tensor has ``n_heads`` along its second axis.

    Args:
        model: The model.
        layers: Which layers (default all), in order.

    Returns:
        Dict with ``W_Q``, ``W_K``, ``W_V`` of shape ``[layers, n_heads, d_model, d_head]``
        and ``W_O`` of shape ``[layers, n_heads, d_head, d_model]``.

    Example:
        >>> w = attention_weights(model)
        >>> w["W_O"].shape[1] == model.cfg.n_heads
        True
    """
    idx = list(range(model.cfg.n_layers)) if layers is None else [check_layer(model, l) for l in layers]
    blocks = [model.blocks[i] for i in idx]
    out = {}
    n_heads = model.cfg.n_heads
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        w = _stack_heads(blocks, name).detach()
        if w.shape[1] != n_heads:  # un-expanded GQA storage
            w = torch.repeat_interleave(w, n_heads // w.shape[1], dim=1)
        out[name] = w
    return out


def embedding(model: HookedTransformer) -> Float[Tensor, "d_vocab d_model"]:
    """The token embedding ``W_E`` (detached).

    Example:
        >>> embedding(model).shape == (model.cfg.d_vocab, model.cfg.d_model)
        True
    """
    return model.W_E.detach()


def unembedding(model: HookedTransformer) -> Float[Tensor, "d_model d_vocab_out"]:
    """The unembedding ``W_U`` (detached).

    Example:
        >>> unembedding(model).shape == (model.cfg.d_model, model.cfg.d_vocab_out)
        True
    """
    return model.W_U.detach()


# --------------------------------------------------------------------------- tokenization


def vocab_tokenizer(vocab: Sequence[str]):
    """A HuggingFace fast tokenizer over exactly the strings in ``vocab`` (id = position).

    Text is split greedily into the longest vocabulary entries; decoding concatenates the
    strings. If the vocabulary holds a BOS token (one of ``<bos>``, ``<|bos|>``, ``<s>``,
    ``<|endoftext|>``) it is used as BOS, EOS and padding; otherwise the model should not
    prepend BOS (``load_model`` sets ``default_prepend_bos=False`` then).

    Args:
        vocab: Token strings, unique.

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Example:
        >>> tok = vocab_tokenizer(["<bos>", "a", "b", "ab"])
        >>> tok("abb")["input_ids"]
        [0, 3, 2]
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = list(vocab)
    if not vocab or not all(isinstance(s, str) and s for s in vocab):
        raise LensworksError("vocab must be a non-empty list of non-empty strings")
    if len(set(vocab)) != len(vocab):
        dupes = sorted({s for s in vocab if vocab.count(s) > 1})[:5]
        raise LensworksError(f"vocab has repeated entries, e.g. {dupes}")
    bos = next((b for b in BOS_NAMES if b in vocab), None)
    normal = [s for s in vocab if s != bos]
    pattern = "|".join(re.escape(s) for s in sorted(normal, key=len, reverse=True))
    tok = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(vocab)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    special = bos if bos is not None else vocab[0]
    if bos is not None:
        tok.add_special_tokens([bos])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=bos,
            eos_token=special,
            pad_token=special,
            add_bos_token=bos is not None,
            clean_up_tokenization_spaces=False,
            name_or_path="lensworks-vocab",
        )
    return hf


def bos_token_id(model: HookedTransformer) -> int | None:
    """The id of the model's BOS token, or None when it has no tokenizer or no BOS token.

    Example:
        >>> bos_token_id(zoo.load("char-mlp"))  # doctest: +SKIP
        0
    """
    tok = model.tokenizer
    if tok is None or getattr(tok, "bos_token_id", None) is None:
        return None
    return int(tok.bos_token_id)


def check_token_tensor(model: HookedTransformer, toks: Tensor, *, what: str = "tokens") -> Int[Tensor, "batch pos"]:
    """Validate a token-id tensor for ``model`` and return it as ``[batch, pos]`` int64.

    A 1-D tensor is taken as one sequence. Raises naming the problem when the tensor is not
    1-D/2-D, not integer, has no positions, is longer than ``n_ctx``, or holds ids outside the
    vocabulary. An empty batch passes (callers that need data check that themselves).

    Example:
        >>> check_token_tensor(model, torch.tensor([1, 2, 3])).shape
        torch.Size([1, 3])
    """
    if toks.ndim == 1:
        toks = toks[None]
    if toks.ndim != 2:
        raise LensworksError(f"{what}: expected a [batch, pos] token tensor, got shape {tuple(toks.shape)}")
    if toks.dtype.is_floating_point or toks.dtype.is_complex or toks.dtype == torch.bool:
        raise LensworksError(f"{what}: expected integer token ids, got dtype {toks.dtype}")
    if toks.shape[1] == 0:
        raise LensworksError(f"{what}: token tensor of shape {tuple(toks.shape)} has no positions")
    if toks.shape[1] > model.cfg.n_ctx:
        raise LensworksError(
            f"{what}: sequences of {toks.shape[1]} tokens are longer than the model's n_ctx={model.cfg.n_ctx}"
        )
    if toks.numel():
        lo, hi = int(toks.min()), int(toks.max())
        if lo < 0 or hi >= model.cfg.d_vocab:
            raise LensworksError(f"{what}: token ids must lie in [0, {model.cfg.d_vocab}), got range [{lo}, {hi}]")
    return toks.long()


def as_tokens(
    model: HookedTransformer,
    data: Union[str, Sequence[str], Tensor],
    *,
    prepend_bos: bool | None = None,
    what: str = "data",
) -> Int[Tensor, "batch pos"]:
    """Turn strings or token ids into a ``[batch, pos]`` token tensor on the model's device.

    Strings are tokenized with the model's tokenizer (right-padded when their lengths differ).
    Raises when the data is empty, when ids are out of the vocabulary, or when a sequence is
    longer than ``n_ctx`` (see :func:`check_token_tensor`).

    Example:
        >>> as_tokens(model, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3])
    """
    if isinstance(data, Tensor):
        toks = data
    else:
        if isinstance(data, str):
            data = [data]
        data = list(data)
        if not all(isinstance(s, str) for s in data):
            raise LensworksError(f"{what}: expected strings or a token tensor, got {type(data[0]).__name__ if data else 'nothing'}")
        if model.tokenizer is None:
            raise LensworksError(f"{what}: the model has no tokenizer, so pass token ids instead of strings")
        if len(data) == 0:
            raise LensworksError(f"{what}: empty data set; expected at least one non-empty sequence")
        toks = model.to_tokens(data, prepend_bos=prepend_bos, truncate=False)
    if toks.ndim >= 1 and toks.shape[0] == 0:
        raise LensworksError(f"{what}: empty data set (got token shape {tuple(toks.shape)}); expected at least one sequence")
    return check_token_tensor(model, toks, what=what).to(model.cfg.device)


# --------------------------------------------------------------------------- load / save

_CFG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_VOCAB_FILE = "vocab.json"


def _cfg_to_dict(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """Config fields that round-trip through JSON and the constructor."""
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    out = {}
    for name in fields:
        value = getattr(cfg, name, None)
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        if isinstance(value, (torch.device,)):
            continue
        if name in ("device", "tokenizer_name", "model_name", "checkpoint_index", "checkpoint_value", "n_devices"):
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[name] = value
    return out


def _cfg_from_dict(raw: dict[str, Any], *, where: str) -> HookedTransformerConfig:
    if not isinstance(raw, dict):
        raise LensworksError(f"{where}: 'cfg' must be a dict of HookedTransformerConfig fields, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise LensworksError(f"{where}: unknown HookedTransformerConfig fields {unknown}")
    raw = dict(raw)
    if isinstance(raw.get("dtype"), str):
        raw["dtype"] = getattr(torch, raw["dtype"])
    raw.pop("device", None)
    try:
        return HookedTransformerConfig(**raw)
    except Exception as exc:  # config validation inside TransformerLens
        raise LensworksError(f"{where}: the config could not build a HookedTransformerConfig: {exc}") from exc


def _build(
    cfg: HookedTransformerConfig,
    state_dict: dict[str, Tensor],
    vocab: Sequence[str] | None,
    *,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
    where: str,
) -> HookedTransformer:
    target = dtype or (cfg.dtype if cfg.dtype != torch.float16 else torch.float32)
    cfg.dtype = target
    if vocab is not None:
        vocab = list(vocab)
        if len(vocab) != cfg.d_vocab:
            raise LensworksError(f"{where}: vocab has {len(vocab)} entries but the config says d_vocab={cfg.d_vocab}")
        bos_present = any(b in vocab for b in BOS_NAMES)
        cfg.default_prepend_bos = bos_present
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("IGNORE", ".mask"))]
    if missing or unexpected:
        raise LensworksError(
            f"{where}: state_dict does not match the config: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    if vocab is not None:
        model.set_tokenizer(vocab_tokenizer(vocab))
        model.cfg.default_prepend_bos = cfg.default_prepend_bos
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def load_model(
    source: ModelSource,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """Load a model for analysis, offline unless a pretrained name is asked for.

    Args:
        source: One of
            - a ``HookedTransformer`` (returned as is);
            - a directory written by :func:`save_model` (``config.json``,
              ``model.safetensors`` and, for models without a HF tokenizer, ``vocab.json``);
            - a ``.pt``/``.pth`` file holding ``{"cfg": {...}, "state_dict": {...},
              "vocab": [...]}`` (``vocab`` optional), read with ``weights_only=True``;
            - a TransformerLens pretrained name such as ``"gpt2"`` (needs a network).
        device: Where to put the weights (default: CPU for files, TransformerLens's default
            for pretrained names).
        dtype: Floating dtype of the weights; fp16 checkpoints are upcast to float32 unless
            a dtype is given.

    Returns:
        The model, in eval mode. When a vocabulary is stored it has a tokenizer over exactly
        those strings, so ``to_tokens`` and ``to_str_tokens`` work.

    Example:
        >>> model = load_model("path/to/checkpoint_dir")
        >>> model.cfg.n_layers
        2
    """
    if isinstance(source, HookedTransformer):
        return source
    if not isinstance(source, (str, Path)):
        raise LensworksError(
            f"load_model expects a HookedTransformer, a checkpoint path or a pretrained name, got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_dir(path, device=device, dtype=dtype)
    if path.is_file():
        return _load_file(path, device=device, dtype=dtype)
    text = str(source)
    looks_like_path = path.suffix in (".pt", ".pth", ".safetensors", ".json") or "/" in text or text.startswith(".")
    if looks_like_path:
        raise LensworksError(f"no checkpoint at {text!r}: expected a directory from save_model or a .pt/.pth file")
    return _load_pretrained(text, device=device, dtype=dtype)


def _load_pretrained(name: str, *, device: Any, dtype: Any) -> HookedTransformer:
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedTransformer.from_pretrained(name, **kwargs)
    except Exception as exc:
        raise LensworksError(
            f"could not load {name!r}: it is not a local checkpoint (directory or .pt/.pth file), "
            f"and loading it as a TransformerLens pretrained name failed: {type(exc).__name__}: {exc}"
        ) from exc


def _load_dir(path: Path, *, device: Any, dtype: Any) -> HookedTransformer:
    from safetensors.torch import load_file

    cfg_path, w_path = path / _CFG_FILE, path / _WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise LensworksError(
            f"{path}: expected a directory written by lensworks.save_model with {_CFG_FILE} and {_WEIGHTS_FILE}; "
            f"found {sorted(p.name for p in path.iterdir())[:10]}"
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise LensworksError(f"{cfg_path}: not valid JSON ({exc})") from exc
    cfg = _cfg_from_dict(raw, where=str(cfg_path))
    try:
        state_dict = load_file(str(w_path))
    except Exception as exc:
        raise LensworksError(f"{w_path}: not a readable safetensors file ({exc})") from exc
    vocab = None
    v_path = path / _VOCAB_FILE
    if v_path.is_file():
        vocab = json.loads(v_path.read_text())
    return _build(cfg, state_dict, vocab, device=device, dtype=dtype, where=str(path))


def _load_file(path: Path, *, device: Any, dtype: Any) -> HookedTransformer:
    if path.suffix not in (".pt", ".pth"):
        raise LensworksError(f"{path}: expected a .pt/.pth checkpoint file or a save_model directory, got a {path.suffix or 'suffix-less'} file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LensworksError(
            f"{path}: could not be read as a weights-only torch checkpoint "
            f"(lensworks never unpickles arbitrary objects): {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from exc
    if not isinstance(obj, dict) or "cfg" not in obj or "state_dict" not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise LensworksError(f"{path}: expected a dict with keys 'cfg', 'state_dict' and optional 'vocab', got {keys}")
    sd = obj["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise LensworksError(f"{path}: 'state_dict' must map parameter names to tensors")
    vocab = obj.get("vocab")
    if vocab is not None and not (isinstance(vocab, (list, tuple)) and all(isinstance(s, str) for s in vocab)):
        raise LensworksError(f"{path}: 'vocab' must be a list of token strings")
    cfg = _cfg_from_dict(obj["cfg"], where=str(path))
    return _build(cfg, sd, vocab, device=device, dtype=dtype, where=str(path))


def model_vocab(model: HookedTransformer) -> list[str] | None:
    """The vocabulary strings of a model's tokenizer, in id order, or None without one.

    Example:
        >>> model_vocab(model)[:3]
        ['<bos>', '\\n', ' ']
    """
    tok = model.tokenizer
    if tok is None:
        return None
    inv = {i: s for s, i in tok.get_vocab().items()}
    return [inv.get(i, f"<{i}>") for i in range(model.cfg.d_vocab)]


def save_model(model: HookedTransformer, path: str | Path, *, vocab: Sequence[str] | None = None) -> Path:
    """Write a model as a directory: ``config.json``, ``model.safetensors``, ``vocab.json``.

    The vocabulary is written when given, or when the model's tokenizer is one lensworks built
    from a vocabulary (so a bundled character model round-trips). Models with a HuggingFace
    tokenizer of their own keep only ``tokenizer_name`` in the config.

    Args:
        model: The model to save.
        path: Target directory (created).
        vocab: Token strings, one per id, to store alongside.

    Returns:
        The directory.

    Example:
        >>> save_model(model, "ckpt")  # doctest: +SKIP
        >>> load_model("ckpt").cfg.d_model == model.cfg.d_model
        True
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = _cfg_to_dict(model.cfg)
    (path / _CFG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True))
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.endswith(("IGNORE", ".mask"))}
    save_file(sd, str(path / _WEIGHTS_FILE))
    if vocab is None and model.tokenizer is not None and getattr(model.tokenizer, "name_or_path", "") == "lensworks-vocab":
        vocab = model_vocab(model)
    if vocab is not None:
        (path / _VOCAB_FILE).write_text(json.dumps(list(vocab)))
    return path
