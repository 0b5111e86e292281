"""The built-in Hugging Face families, one :class:`FamilySpec` each, and their config mappings.

Each ``_<family>_config(raw, where)`` maps a parsed ``config.json`` to HookedTransformerConfig
fields from config.json alone (TransformerLens 3.9's ``convert_hf_model_config`` picks the
architecture from words in the path and reads fields transformers 5 removed). Fields common to
every family (``d_vocab``, ``original_architecture``, the BOS default, the context cap) and the
size checks are added by :func:`lensworks.model._hf.config_fields`.
"""

from __future__ import annotations

import math
from typing import Any

from lensworks.model._core import LensworksError
from lensworks.model._families import FamilySpec, register_family, tl_converter

__all__ = ["config_size", "divide", "rope"]


# --------------------------------------------------------------------------- config.json readers


def _need(raw: dict[str, Any], *names: str, where: str) -> Any:
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    raise LensworksError(f"{where}: config.json lacks {' / '.join(names)}")


def config_size(raw: dict[str, Any], *names: str, where: str) -> int:
    """A size field of config.json (the first of ``names`` present): an integer (not "4", 2.0 or
    true) and positive, else an error naming the field and the file.

    Example:
        >>> config_size({"n_embd": 64}, "hidden_size", "n_embd", where="config.json")
        64
    """
    from lensworks.model._foreign import check_size

    value = _need(raw, *names, where=where)
    name = next(n for n in names if raw.get(n) is not None)
    return check_size(value, name, where)


def divide(d_model: int, n_heads: int, where: str) -> int:
    """``d_model // n_heads``, refusing a width the heads do not divide.

    Example:
        >>> divide(64, 4, "config.json")
        16
    """
    if d_model % n_heads:
        raise LensworksError(f"{where}: the model width {d_model} is not divisible by the {n_heads} attention heads")
    return d_model // n_heads


def rope(raw: dict[str, Any], key: str, default: Any) -> Any:
    """A rotary setting from ``rope_parameters`` (transformers 5), ``rope_scaling`` or the top level.

    Example:
        >>> rope({"rope_parameters": {"rope_theta": 5e5}, "rope_theta": 1e4}, "rope_theta", 1e4)
        500000.0
    """
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


# --------------------------------------------------------------------------- config mappings


def _gpt2_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    need = lambda *names: config_size(raw, *names, where=where)  # noqa: E731
    d_model, n_heads = need("n_embd"), need("n_head")
    return dict(
        d_model=d_model, n_heads=n_heads, d_head=divide(d_model, n_heads, where), n_layers=need("n_layer"),
        d_mlp=need("n_inner") if raw.get("n_inner") is not None else 4 * d_model, n_ctx=need("n_positions", "n_ctx"),
        eps=raw.get("layer_norm_epsilon", 1e-5), act_fn=raw.get("activation_function", "gelu_new"),
        use_attn_scale=raw.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=raw.get("scale_attn_by_inverse_layer_idx", False),
        normalization_type="LN", positional_embedding_type="standard",
    )


def _neox_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    need = lambda *names: config_size(raw, *names, where=where)  # noqa: E731
    d_model, n_heads = need("hidden_size"), need("num_attention_heads")
    d_head = divide(d_model, n_heads, where)
    pct = rope(raw, "partial_rotary_factor", None)
    pct = raw.get("rotary_pct", 1.0) if pct is None else pct
    out = dict(
        d_model=d_model, n_heads=n_heads, d_head=d_head, n_layers=need("num_hidden_layers"),
        d_mlp=need("intermediate_size"), n_ctx=need("max_position_embeddings"),
        eps=raw.get("layer_norm_eps", 1e-5), act_fn=raw.get("hidden_act", "gelu"),
        parallel_attn_mlp=raw.get("use_parallel_residual", True), normalization_type="LN",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=round(pct * d_head), rotary_base=rope(raw, "rope_theta", raw.get("rotary_emb_base", 10000)),
    )
    if raw.get("attention_bias") is False:
        raise LensworksError(f"{where}: GPT-NeoX checkpoints without attention biases are not supported")
    return out


def _rms_rotary_config(raw: dict[str, Any], where: str, *, kv_always: bool = True) -> dict[str, Any]:
    """The Llama layout (RMSNorm, gated MLP, rotary, grouped-query attention) the later families
    share. ``kv_always=False`` (Llama): equal kv and query heads are plain multi-head attention in
    TransformerLens's converter; the others always store separate kv heads."""
    need = lambda *names: config_size(raw, *names, where=where)  # noqa: E731
    d_model, n_heads = need("hidden_size"), need("num_attention_heads")
    d_head = need("head_dim") if raw.get("head_dim") is not None else divide(d_model, n_heads, where)
    n_kv = need("num_key_value_heads") if raw.get("num_key_value_heads") is not None else n_heads
    act = raw.get("hidden_activation") or raw.get("hidden_act") or "silu"
    out = dict(
        d_model=d_model, n_heads=n_heads, d_head=d_head, n_layers=need("num_hidden_layers"),
        d_mlp=need("intermediate_size"), n_ctx=need("max_position_embeddings"),
        eps=raw.get("rms_norm_eps", 1e-6), act_fn=act, normalization_type="RMS", final_rms=True,
        gated_mlp=True, positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=d_head, rotary_base=rope(raw, "rope_theta", 10000.0), use_attn_scale=True,
    )
    if kv_always or n_kv != n_heads:
        out["n_key_value_heads"] = n_kv
    return out


def _no_biases(raw: dict[str, Any], where: str, arch: str) -> None:
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise LensworksError(f"{where}: {arch} with {flag}=true is not supported (TransformerLens's converter has no biases)")


def _llama_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = _rms_rotary_config(raw, where, kv_always=False)
    out.update(_rope_scaling(raw, where))
    _no_biases(raw, where, "LlamaForCausalLM")
    return out


def _mistral_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = _rms_rotary_config(raw, where)
    out.update(_rope_scaling(raw, where))
    _no_biases(raw, where, "MistralForCausalLM")
    if raw.get("sliding_window"):
        out.update(use_local_attn=True, window_size=raw["sliding_window"], attn_types=["local"] * out["n_layers"])
    return out


def _gemma_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    return _rms_rotary_config(raw, where)


def _gemma2_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = _rms_rotary_config(raw, where)
    window = config_size(raw, "sliding_window", where=where)
    types = raw.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(out["n_layers"])]
    out.update(
        use_local_attn=True, window_size=window,
        attn_types=["local" if t == "sliding_attention" else "global" for t in types],
        attn_scale=math.sqrt(raw.get("query_pre_attn_scalar") or out["d_head"]),
        use_normalization_before_and_after=True,
    )
    if raw.get("attn_logit_softcapping"):
        out["attn_scores_soft_cap"] = float(raw["attn_logit_softcapping"])
    if raw.get("final_logit_softcapping"):
        out["output_logits_soft_cap"] = float(raw["final_logit_softcapping"])
    return out


def _qwen2_config(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = _rms_rotary_config(raw, where)
    if raw.get("use_sliding_window"):
        raise LensworksError(f"{where}: Qwen2 with use_sliding_window=true is not supported")
    return out


# --------------------------------------------------------------------------- the registry

register_family(FamilySpec(
    architecture="GPT2LMHeadModel", family="gpt2", config=_gpt2_config, converter=tl_converter("convert_gpt2_weights"),
    base_prefix="transformer.", embedding="transformer.wte.weight", tied_by_default=True,
))
register_family(FamilySpec(
    architecture="GPTNeoXForCausalLM", family="neox", config=_neox_config, converter=tl_converter("convert_neox_weights"),
    base_prefix="gpt_neox.", head="embed_out.weight", embedding="gpt_neox.embed_in.weight", default_prepend_bos=False,
))
register_family(FamilySpec(
    architecture="LlamaForCausalLM", family="llama", config=_llama_config, converter=tl_converter("convert_llama_weights"),
))
register_family(FamilySpec(
    architecture="MistralForCausalLM", family="mistral", config=_mistral_config,
    converter=tl_converter("convert_mistral_weights"),
))
register_family(FamilySpec(
    architecture="GemmaForCausalLM", family="gemma", config=_gemma_config, converter=tl_converter("convert_gemma_weights"),
    tied_by_default=True,
))
register_family(FamilySpec(
    architecture="Gemma2ForCausalLM", family="gemma2", config=_gemma2_config,
    converter=tl_converter("convert_gemma_weights"), tied_by_default=True,
))
register_family(FamilySpec(
    architecture="Qwen2ForCausalLM", family="qwen2", config=_qwen2_config, converter=tl_converter("convert_qwen2_weights"),
    default_prepend_bos=False,
))
