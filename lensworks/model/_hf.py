"""Local Hugging Face checkpoints: config.json mapped to a HookedTransformerConfig, weights read
from the files (safetensors, or ``pytorch_model*.bin`` with ``weights_only=True``) and converted
with TransformerLens's own per-family converters. Nothing here touches the network.

TransformerLens 3.9's ``convert_hf_model_config`` picks the architecture from words in the path
and reads fields transformers 5 removed, so the mapping is done here, from config.json alone.
"""

from __future__ import annotations

import json
import re
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from lensworks.model._core import LensworksError
from lensworks.model._files import _weight_files, torch_load

#: ``architectures[0]`` in config.json -> family name used in lensworks' docs and errors.
SUPPORTED_ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "neox",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Qwen2ForCausalLM": "qwen2",
}

#: The module prefix every weight of a family's *ForCausalLM checkpoint starts with.
_BASE_PREFIX = {"gpt2": "transformer.", "neox": "gpt_neox."}
#: Name of the output head's weight, and of the embedding it may be tied to.
_HEAD = {"gpt2": ("lm_head.weight", "transformer.wte.weight"), "neox": ("embed_out.weight", "gpt_neox.embed_in.weight")}
_DEFAULT_HEAD = ("lm_head.weight", "model.embed_tokens.weight")
#: Families whose config ties the output head to the embedding unless it says otherwise.
_TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2"}

#: Longest context lensworks builds by default: TransformerLens 3.x allocates an n_ctx x n_ctx
#: mask per layer, so a 128k-token context would not fit in memory. Pass ``n_ctx`` for more.
MAX_DEFAULT_N_CTX = 4096


def is_hf_dir(path: Path) -> bool:
    """True when ``path`` holds a Hugging Face ``config.json`` (one with ``architectures`` or
    ``model_type``), as opposed to a lensworks/TransformerLens-format directory."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False  # the TransformerLens-format reader says what is wrong with the file
    return isinstance(raw, dict) and ("architectures" in raw or "model_type" in raw)


def read_config(path: Path) -> tuple[str, str, dict[str, Any]]:
    """Read ``config.json``: returns (architecture, family, raw dict), or raises naming the file."""
    from lensworks.model._vocabfile import read_json

    cfg_path = path / "config.json"
    raw = read_json(cfg_path, "config")
    if not isinstance(raw, dict):
        raise LensworksError(f"{cfg_path}: expected a JSON object of config fields, got {type(raw).__name__}")
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(f"{a} ({f})" for a, f in SUPPORTED_ARCHITECTURES.items())
        got = arch if arch else f"no 'architectures' entry (model_type {raw.get('model_type')!r})"
        raise LensworksError(f"{cfg_path}: unsupported architecture {got}; lensworks reads {supported}")
    return arch, SUPPORTED_ARCHITECTURES[arch], raw


# --------------------------------------------------------------------------- config mapping


def _need(raw: dict[str, Any], *names: str, where: str) -> Any:
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    raise LensworksError(f"{where}: config.json lacks {' / '.join(names)}")


def _rope(raw: dict[str, Any], key: str, default: Any) -> Any:
    """A rotary setting from the top level (transformers 4) or ``rope_parameters`` (5)."""
    params = raw.get("rope_parameters") or {}
    if isinstance(params, dict) and params.get(key) is not None:
        return params[key]
    scaling = raw.get("rope_scaling") or {}
    if isinstance(scaling, dict) and scaling.get(key) is not None:
        return scaling[key]
    return raw.get(key, default)


def _rope_scaling(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """TransformerLens fields for rotary scaling: llama3 NTK-by-parts, or none."""
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    kind = str(scaling.get("rope_type") or scaling.get("type") or "default").lower()
    if kind == "default":
        return {}
    if kind == "llama3":
        return {
            "use_NTK_by_parts_rope": True,
            "NTK_original_ctx_len": scaling.get("original_max_position_embeddings", raw.get("max_position_embeddings")),
            "NTK_by_parts_low_freq_factor": scaling.get("low_freq_factor", 1.0),
            "NTK_by_parts_high_freq_factor": scaling.get("high_freq_factor", 4.0),
            "NTK_by_parts_factor": scaling.get("factor", 1.0),
        }
    raise LensworksError(f"{where}: rotary scaling of type {kind!r} is not supported (only the default and 'llama3')")


def config_fields(arch: str, family: str, raw: dict[str, Any], *, where: str, n_ctx: int | None = None) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Hugging Face ``config.json`` of a supported family.

    Args:
        arch: ``architectures[0]``.
        family: Its family (see :data:`SUPPORTED_ARCHITECTURES`).
        raw: The parsed config.json.
        where: The file, for messages.
        n_ctx: Context length to build (default: the checkpoint's, capped at
            :data:`MAX_DEFAULT_N_CTX`).

    Returns:
        Keyword arguments for ``HookedTransformerConfig`` (without dtype and device).

    Example:
        >>> config_fields("GPT2LMHeadModel", "gpt2", {"n_embd": 64, ...}, where="config.json")["d_model"]
        64
    """
    need = lambda *names: _size(raw, *names, where=where)  # noqa: E731
    if family == "gpt2":
        d_model, n_heads = need("n_embd"), need("n_head")
        out = dict(
            d_model=d_model, n_heads=n_heads, d_head=_divide(d_model, n_heads, where), n_layers=need("n_layer"),
            d_mlp=need("n_inner") if raw.get("n_inner") is not None else 4 * d_model, n_ctx=need("n_positions", "n_ctx"),
            eps=raw.get("layer_norm_epsilon", 1e-5), act_fn=raw.get("activation_function", "gelu_new"),
            use_attn_scale=raw.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=raw.get("scale_attn_by_inverse_layer_idx", False),
            normalization_type="LN", positional_embedding_type="standard",
        )
    elif family == "neox":
        d_model, n_heads = need("hidden_size"), need("num_attention_heads")
        d_head = _divide(d_model, n_heads, where)
        pct = _rope(raw, "partial_rotary_factor", None)
        pct = raw.get("rotary_pct", 1.0) if pct is None else pct
        out = dict(
            d_model=d_model, n_heads=n_heads, d_head=d_head, n_layers=need("num_hidden_layers"),
            d_mlp=need("intermediate_size"), n_ctx=need("max_position_embeddings"),
            eps=raw.get("layer_norm_eps", 1e-5), act_fn=raw.get("hidden_act", "gelu"),
            parallel_attn_mlp=raw.get("use_parallel_residual", True), normalization_type="LN",
            positional_embedding_type="rotary", rotary_adjacent_pairs=False,
            rotary_dim=round(pct * d_head), rotary_base=_rope(raw, "rope_theta", raw.get("rotary_emb_base", 10000)),
            default_prepend_bos=False,
        )
        if raw.get("attention_bias") is False:
            raise LensworksError(f"{where}: GPT-NeoX checkpoints without attention biases are not supported")
    else:  # llama, mistral, gemma, gemma2, qwen2: RMSNorm, gated MLP, rotary, (grouped) query attention
        d_model, n_heads = need("hidden_size"), need("num_attention_heads")
        d_head = need("head_dim") if raw.get("head_dim") is not None else _divide(d_model, n_heads, where)
        n_kv = need("num_key_value_heads") if raw.get("num_key_value_heads") is not None else n_heads
        act = raw.get("hidden_activation") or raw.get("hidden_act") or "silu"
        out = dict(
            d_model=d_model, n_heads=n_heads, d_head=d_head, n_layers=need("num_hidden_layers"),
            d_mlp=need("intermediate_size"), n_ctx=need("max_position_embeddings"),
            eps=raw.get("rms_norm_eps", 1e-6), act_fn=act, normalization_type="RMS", final_rms=True,
            gated_mlp=True, positional_embedding_type="rotary", rotary_adjacent_pairs=False,
            rotary_dim=d_head, rotary_base=_rope(raw, "rope_theta", 10000.0), use_attn_scale=True,
        )
        # Llama with equal kv and query heads is plain multi-head attention in TransformerLens's
        # converter; the others always store separate kv heads.
        if family != "llama" or n_kv != n_heads:
            out["n_key_value_heads"] = n_kv
        if family in ("llama", "mistral"):
            out.update(_rope_scaling(raw, where))
            for flag in ("attention_bias", "mlp_bias"):
                if raw.get(flag):
                    raise LensworksError(f"{where}: {arch} with {flag}=true is not supported (TransformerLens's converter has no biases)")
        if family == "qwen2":
            out["default_prepend_bos"] = False
            if raw.get("use_sliding_window"):
                raise LensworksError(f"{where}: Qwen2 with use_sliding_window=true is not supported")
        if family == "mistral" and raw.get("sliding_window"):
            out.update(use_local_attn=True, window_size=raw["sliding_window"], attn_types=["local"] * out["n_layers"])
        if family == "gemma2":
            window = need("sliding_window")
            types = raw.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(out["n_layers"])]
            out.update(
                use_local_attn=True, window_size=window,
                attn_types=["local" if t == "sliding_attention" else "global" for t in types],
                attn_scale=math.sqrt(raw.get("query_pre_attn_scalar") or d_head),
                use_normalization_before_and_after=True,
            )
            if raw.get("attn_logit_softcapping"):
                out["attn_scores_soft_cap"] = float(raw["attn_logit_softcapping"])
            if raw.get("final_logit_softcapping"):
                out["output_logits_soft_cap"] = float(raw["final_logit_softcapping"])
    out["d_vocab"] = need("vocab_size")
    out["original_architecture"] = arch
    _check_sizes(raw, out, where)
    if n_ctx is not None:
        out["n_ctx"] = int(n_ctx)
    else:
        out["n_ctx"] = min(int(out["n_ctx"]), MAX_DEFAULT_N_CTX)
    return out


def _size(raw: dict[str, Any], *names: str, where: str) -> Any:
    """A size field of config.json: present, an integer (not "4", 2.0 or true) and positive."""
    from lensworks.model._foreign import check_size

    value = _need(raw, *names, where=where)
    name = next(n for n in names if raw.get(n) is not None)
    return check_size(value, name, where)


def _divide(d_model: int, n_heads: int, where: str) -> int:
    if d_model % n_heads:
        raise LensworksError(f"{where}: the model width {d_model} is not divisible by the {n_heads} attention heads")
    return d_model // n_heads


def _check_sizes(raw: dict[str, Any], out: dict[str, Any], where: str) -> None:
    """Grouped-query heads must divide the query heads; every size is a positive integer."""
    from lensworks.model._foreign import check_size

    for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "n_key_value_heads"):
        if out.get(key) is not None:
            check_size(out[key], key, where)
    kv = out.get("n_key_value_heads")
    if kv is not None and out["n_heads"] % kv:
        raise LensworksError(f"{where}: num_attention_heads={out['n_heads']} is not a multiple of num_key_value_heads={kv}")


_LAYER_KEY = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.")


def check_layer_count(keys: Any, n_layers: int, where: str) -> None:
    """Refuse a config whose layer count differs from the blocks the weight files hold (a
    1-layer config beside 2 stored blocks would silently drop one)."""
    found = sorted({int(m.group(1)) for k in keys if (m := _LAYER_KEY.search(k))})
    if found != list(range(n_layers)):
        shown = found[:8] + (["..."] if len(found) > 8 else [])
        raise LensworksError(f"{where}: config.json says {n_layers} layers (num_hidden_layers / n_layer) but the weight "
                             f"files hold blocks {shown} ({len(found)} layers)")


# --------------------------------------------------------------------------- weights


class _WeightTree:
    """Attribute-path view of a flat state dict (``model.layers[0].self_attn.q_proj.weight``),
    so that TransformerLens's converters, written for ``nn.Module`` trees, read tensors from the
    files without building the Hugging Face model."""

    def __init__(self, sd: dict[str, Tensor], prefix: str = "", prefixes: frozenset[str] | None = None):
        self._sd, self._prefix = sd, prefix
        if prefixes is None:
            prefixes = frozenset(k.rsplit(".", i)[0] + "." for k in sd for i in range(1, k.count(".") + 1))
        self._prefixes = prefixes

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = self._prefix + name
        if key in self._sd:
            return self._sd[key]
        if key + "." in self._prefixes:
            return _WeightTree(self._sd, key + ".", self._prefixes)
        raise AttributeError(f"no weight {key}")

    def __getitem__(self, index: int) -> Any:
        return self.__getattr__(str(index))


def _converter(family: str) -> Callable[[Any, Any], dict[str, Tensor]]:
    from transformer_lens.pretrained import weight_conversions as wc

    return {
        "gpt2": wc.convert_gpt2_weights,
        "neox": wc.convert_neox_weights,
        "llama": wc.convert_llama_weights,
        "mistral": wc.convert_mistral_weights,
        "gemma": wc.convert_gemma_weights,
        "gemma2": wc.convert_gemma_weights,
        "qwen2": wc.convert_qwen2_weights,
    }[family]


def convert_weights(family: str, raw_cfg: dict[str, Any], sd: dict[str, Tensor], cfg: Any, *, where: str) -> dict[str, Tensor]:
    """Hugging Face tensors -> a TransformerLens state dict, with TransformerLens's converter.

    Adds the ``*ForCausalLM`` prefix to checkpoints saved from the bare base model, and points
    a tied output head at the embedding. Shape disagreements with config.json raise naming both.
    """
    base = _BASE_PREFIX.get(family, "model.")
    if not any(k.startswith(base) for k in sd):
        sd = {k if k.startswith(("lm_head.", "embed_out.")) else base + k: v for k, v in sd.items()}
    head, emb = _HEAD.get(family, _DEFAULT_HEAD)
    if head not in sd:
        tied = raw_cfg.get("tie_word_embeddings", family in _TIED_BY_DEFAULT)
        if not tied:
            raise LensworksError(f"{where}: the weights lack the output head {head!r} and config.json does not tie it to the embedding")
        if emb not in sd:
            raise LensworksError(f"{where}: the weights lack the embedding {emb!r}")
        sd = {**sd, head: sd[emb]}
    try:
        out = _converter(family)(_WeightTree(sd), cfg)
    except AttributeError as exc:
        raise LensworksError(f"{where}: the weight files lack a tensor config.json implies: {exc}") from exc
    except (RuntimeError, ValueError) as exc:  # einops / view shape errors
        raise LensworksError(f"{where}: the weights do not fit config.json's shapes: {str(exc).splitlines()[0][:300]}") from exc
    return {k: v for k, v in out.items() if isinstance(v, Tensor)}


def check_shapes(converted: dict[str, Tensor], expected: dict[str, tuple[int, ...]], *, where: str) -> None:
    """Raise naming the first tensor whose shape differs from what the config implies."""
    for name, shape in expected.items():
        if name in converted and tuple(converted[name].shape) != tuple(shape):
            raise LensworksError(
                f"{where}: config.json implies {name} of shape {tuple(shape)}, the weight files hold {tuple(converted[name].shape)}"
            )


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    files, kind = _weight_files(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        if kind == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt") as handle:
                    for k in handle.keys():
                        shapes[k] = tuple(handle.get_slice(k).get_shape())
            except Exception as exc:
                raise LensworksError(f"{f}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc
        else:
            shapes.update({k: tuple(v.shape) for k, v in torch_load(f).items()})
    return shapes


def check_hf_shapes(path: Path, family: str, raw: dict[str, Any]) -> None:
    """Compare the stored tensors with the ones config.json implies, without reading weights:
    the Hugging Face model is built on the meta device and its parameter shapes compared."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception as exc:
        raise LensworksError(f"{path / 'config.json'}: transformers cannot build this config ({type(exc).__name__}: {str(exc)[:200]})") from exc
    stored = _stored_shapes(path)
    check_layer_count(stored, int(raw.get("num_hidden_layers") or raw.get("n_layer") or 0), str(path / "config.json"))
    base = _BASE_PREFIX.get(family, "model.")
    if not any(k.startswith(base) for k in stored):
        stored = {k if k.startswith(("lm_head.", "embed_out.")) else base + k: v for k, v in stored.items()}
    # transformers 5 renames some heads on load (GPT-NeoX's embed_out is lm_head in the module)
    alias = lambda k: "lm_head." + k[len("embed_out."):] if k.startswith("embed_out.") else k  # noqa: E731
    stored = {alias(k): v for k, v in stored.items()}
    expected = {alias(k): v for k, v in expected.items()}
    head = alias(_HEAD.get(family, _DEFAULT_HEAD)[0])
    for name, shape in expected.items():
        if name not in stored:
            if name == head and raw.get("tie_word_embeddings", family in _TIED_BY_DEFAULT):
                continue
            if name == head:
                raise LensworksError(f"{path}: the weights lack the output head {head!r} and config.json does not tie it to the embedding")
            raise LensworksError(f"{path}: the weight files lack a tensor config.json implies: {name}")
        if stored[name] != shape:
            raise LensworksError(f"{path}: config.json implies {name} of shape {shape}, the weight files hold {stored[name]}")
