"""TransformerLens 4: loading checkpoints as ``TransformerBridge`` objects in compatibility mode.

Hugging Face directories boot through ``TransformerBridge.boot_transformers``; TransformerLens-format
checkpoints (``save_model`` directories, ``.pt`` files, the zoo) through ``boot_native`` plus
``convert_tl_checkpoint`` and a strict ``load_state_dict``, the path TransformerLens 4's own legacy
loader takes. :class:`BridgeBackend` is TransformerLens 4's side of the loaders' backend interface
(:mod:`._backend`). Only imported when TransformerLens 4 is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lensworks.model._compat import is_bridge, quiet
from lensworks.model._core import LensworksError
from lensworks.model._families import FamilySpec
from lensworks.model._placement import Placement


def compat(bridge: Any, *, fold_ln: bool, center_writing_weights: bool, center_unembed: bool,
            fold_value_biases: bool) -> Any:
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        center_unembed = False  # TL4 would do the same, with a root-logger warning
    with quiet():
        if not (fold_ln or center_writing_weights or center_unembed or fold_value_biases):
            bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
        else:
            bridge.enable_compatibility_mode(
                disable_warnings=True, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    # TL4 keeps no record of the flags (cfg.normalization_type stays "LN"/"RMS",
    # cfg.layer_norm_folding stays False); keep our own.
    bridge._lensworks_processing = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                        center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    bridge.eval()
    return bridge


def boot_hf_dir(path: Any, *, dtype: torch.dtype = torch.float32, device: Any = "cpu", fold_ln: bool = True,
                center_writing_weights: bool = True, center_unembed: bool = True, fold_value_biases: bool = True,
                n_ctx: int | None = None, placement: Placement = Placement()) -> Any:
    """A local Hugging Face checkpoint directory as a bridge in compatibility mode.

    ``fold_value_biases=True`` matches lensworks' TL3 loader (it always folds value biases, even
    with the other flags off); ``enable_compatibility_mode(no_processing=True)`` would NOT, and
    its ``hook_z`` / ``b_O`` then differ from lensworks' TL3 models.
    """
    from transformer_lens.model_bridge import TransformerBridge

    options = placement.bridge_options()
    with quiet():  # a device map places every layer itself: no device then
        bridge = TransformerBridge.boot_transformers(str(path), device=None if placement.device_map else device,
                                                     dtype=dtype, n_ctx=n_ctx, **options)
    return compat(bridge, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                   center_unembed=center_unembed, fold_value_biases=fold_value_biases)


#: HookedTransformerConfig fields whose non-default values the TL4 native model cannot honour.
#: It silently ignores them (parallel blocks, local attention, ...), so refuse instead.
_UNSUPPORTED_NATIVE = {
    "parallel_attn_mlp": False, "use_local_attn": False, "post_embedding_ln": False,
    "use_normalization_before_and_after": False, "use_qk_norm": False,
    "scale_attn_by_inverse_layer_idx": False, "use_NTK_by_parts_rope": False, "use_yarn_rope": False, "use_dynamic_ntk_rope": False,
    "use_attention_sinks": False, "use_logn_attn": False, "num_experts": None,
}


def _check_native_supported(raw: dict[str, Any], where: str) -> None:
    bad = [k for k, ok in _UNSUPPORTED_NATIVE.items() if raw.get(k, ok) not in (ok, None if ok is False else ok)]
    if "use_local_attn" in bad and (raw.get("window_size") or 0) >= raw["n_ctx"]:
        bad.remove("use_local_attn")  # a window as long as the context is full attention
    if raw.get("use_attn_scale", True) is False:
        bad.append("use_attn_scale=False")  # native always scales (by attn_scale or sqrt(d_head))
    pos = raw.get("positional_embedding_type", "standard")
    if pos not in ("standard", "rotary"):
        bad.append(f"positional_embedding_type={pos!r}")
    if raw.get("attention_dir", "causal") != "causal":
        bad.append("attention_dir")
    if bad:
        raise LensworksError(f"{where}: TransformerLens 4's native model cannot represent {sorted(bad)}")


def _rotate_half_to_adjacent(t: Tensor, rotary_dim: int) -> Tensor:
    """Permute the last (d_head) axis of W_Q/W_K/b_Q/b_K from TL3's rotate-half RoPE pairing
    (i, i + r/2) to the TL4 native model's adjacent pairing (2i, 2i+1). q.k is unchanged."""
    h = rotary_dim // 2
    perm = torch.arange(t.shape[-1])
    perm[:rotary_dim] = torch.stack([torch.arange(h), torch.arange(h) + h], dim=1).reshape(-1)
    return t.index_select(t.ndim - 1, perm)


def boot_tl_state_dict(cfg_dict: dict[str, Any], state_dict: dict[str, Tensor], *, tokenizer: Any = None,
                       dtype: torch.dtype | None = None, device: Any = "cpu", fold_ln: bool = False,
                       center_writing_weights: bool = False, center_unembed: bool = False,
                       fold_value_biases: bool = False, where: str = "checkpoint") -> Any:
    """A HookedTransformer-format checkpoint (HookedTransformerConfig fields + its state dict)
    as a TL4 native bridge in compatibility mode, the way TL4's own legacy loader does it
    (``sources/tl_legacy.py``: boot_native + convert_tl_checkpoint + strict load).

    Defaults (no processing, no value-bias folding) match lensworks' TL3 loader for
    TL-format checkpoints.
    """
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    raw = {k: v for k, v in cfg_dict.items() if k not in ("device", "n_devices", "tokenizer_prepends_bos")}
    _check_native_supported(raw, where)
    stored = raw.get("dtype", "float32")
    if isinstance(stored, str):
        stored = getattr(torch, stored.replace("torch.", ""))
    target = dtype or (torch.float32 if stored in (torch.float16,) else stored)
    raw["dtype"] = target
    # from_dict drops fields TransformerBridgeConfig does not know (yarn_*, rotary_base_local, ...)
    try:
        cfg = TransformerBridgeConfig.from_dict({**raw, "architecture": "TransformerLensNative"})
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise _config_error(where, exc) from exc
    gated = bool(raw.get("gated_mlp"))
    sd: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith((".rotary_sin", ".rotary_cos")):  # recomputed from cfg
            continue
        if gated and k.endswith((".mlp.b_in", ".mlp.b_out")):
            if v.abs().max().item() > 0:
                raise LensworksError(f"{where}: {k} is non-zero but TL4 native gated MLPs have no biases")
            continue
        sd[k] = v.to(target) if v.is_floating_point() else v
    if raw.get("positional_embedding_type") == "rotary" and not raw.get("rotary_adjacent_pairs", False):
        rd = raw.get("rotary_dim") or raw["d_head"]
        for k in list(sd):
            if k.endswith((".W_Q", ".W_K", "._W_K", ".b_Q", ".b_K", "._b_K")):
                sd[k] = _rotate_half_to_adjacent(sd[k], rd)
    with quiet():
        try:  # a missing size (d_vocab=None, n_heads=None) fails deep inside TransformerLens
            bridge = TransformerBridge.boot_native(cfg, device=device, dtype=target)
        except (ValueError, TypeError, KeyError, AssertionError, NotImplementedError, ZeroDivisionError) as exc:
            raise _config_error(where, exc) from exc
        try:
            converted = convert_tl_checkpoint(sd, bridge.cfg)
        except (ValueError, KeyError) as exc:  # a key of no TransformerLens layout
            raise LensworksError(f"{where}: state_dict does not match the config: {str(exc)[:300]}") from exc
        if "unembed.bias" not in converted:  # as tl_legacy.py does
            converted["unembed.bias"] = torch.zeros(bridge.cfg.d_vocab_out, dtype=target)
        try:
            bridge.load_state_dict(converted, strict=True)
        except RuntimeError as exc:
            raise LensworksError(f"{where}: state_dict does not match the config: {str(exc)[:300]}") from exc
    if tokenizer is not None:
        attach_tokenizer(bridge, tokenizer)
    if "default_prepend_bos" in raw:
        bridge.cfg.default_prepend_bos = bool(raw["default_prepend_bos"])
    return compat(bridge, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                   center_unembed=center_unembed, fold_value_biases=fold_value_biases)


def _config_error(where: str, exc: BaseException) -> LensworksError:
    """TransformerLens 4's own config checks as one LensworksError (what lensworks' TL3 loader says)."""
    from lensworks.model._files import plain_reason

    return LensworksError(f"{where}: TransformerLens cannot build a model from this config: "
                          f"{type(exc).__name__}: {plain_reason(exc)}")


def attach_tokenizer(bridge: Any, tokenizer: Any) -> None:
    """``bridge.tokenizer = tok`` / ``boot_native(tokenizer=tok)`` run TL4's BOS detection,
    which encodes the literal "a" and so crashes on a WordLevel vocabulary without "a"
    (lensworks' vocab tokenizers), and otherwise leaves ``tokenizer_prepends_bos`` at its
    default True even for a tokenizer that prepends nothing (GPT-2's), so that
    ``to_tokens(prepend_bos=False)`` drops a real first token. The flag is therefore always
    measured here, on the tokenizer the bridge ends up with, with a probe from its vocabulary."""
    from transformer_lens.model_bridge.sources._hf_format import setup_tokenizer

    try:
        with quiet():
            bridge.tokenizer = tokenizer
        tok = bridge.tokenizer
    except Exception:
        with quiet():
            tok = setup_tokenizer(tokenizer, default_padding_side=getattr(bridge.cfg, "default_padding_side", None))
        bridge._tokenizer = tok  # bypass the property setter (it would re-run the detection)
        if getattr(bridge, "_driver", None) is not None:
            bridge._driver.tokenizer = tok
    specials = set(tok.all_special_tokens)
    probe = next(s for s, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if s not in specials)
    ids = tok.encode(probe)
    lead = {i for i in (tok.bos_token_id, getattr(tok, "cls_token_id", None)) if i is not None}
    bridge.cfg.tokenizer_prepends_bos = len(ids) > 1 and ids[0] in lead
    bridge.cfg.tokenizer_appends_eos = len(ids) > 1 and tok.eos_token_id is not None and ids[-1] == tok.eos_token_id


def random_copy(model: Any, seed: int = 0) -> Any:
    """A freshly initialised model with the same architecture and the same processing flags,
    torch's global RNG untouched."""
    assert is_bridge(model)
    from transformer_lens.model_bridge import TransformerBridge

    rec = getattr(model, "_lensworks_processing", None) or dict(
        fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    from lensworks.model._modelfacts import model_facts

    facts = model_facts(model)
    device, dtype = facts.device, facts.dtype
    with facts.seeded(seed), quiet():
        if model.cfg.architecture == "TransformerLensNative":
            cfg = copy.deepcopy(model.cfg)
            object.__setattr__(cfg, "_bridge_ref", None)
            cfg.seed, cfg.init_weights = seed, True
            fresh = TransformerBridge.boot_native(cfg, device=device, dtype=dtype)
            if model.tokenizer is not None:
                attach_tokenizer(fresh, model.tokenizer)
        else:
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_config(model.original_model.config, attn_implementation="eager",
                                                  dtype=dtype).to(device).eval()
            fresh = TransformerBridge.boot_transformers(model.cfg.model_name, hf_model=hf, tokenizer=model.tokenizer,
                                                        device=device, dtype=dtype)
        fresh.cfg.default_prepend_bos = model.cfg.default_prepend_bos
    return compat(fresh, **rec)


class BridgeBackend:
    """:class:`~lensworks.model._backend.Backend` of TransformerLens 4 (``TransformerBridge`` in
    compatibility mode). Hugging Face directories and pretrained names boot through
    ``boot_transformers`` (the directory's shapes checked against config.json first);
    TransformerLens-format state dicts through :func:`boot_tl_state_dict`.

    Example:
        >>> from lensworks.model._backend import backend
        >>> backend().line in (3, 4)
        True
    """

    line = 4
    reads_unregistered = True

    def build_from_hf(self, path: Path, spec: FamilySpec | None, raw: dict[str, Any], fields: dict[str, Any], *,
                      tokenizer: Any, dtype: torch.dtype, device: Any, processing: dict[str, bool],
                      placement: Placement = Placement()) -> Any:
        """See :meth:`lensworks.model._backend.Backend.build_from_hf` (the bridge reads the
        directory's tokenizer itself; ``placement`` goes to ``boot_transformers``)."""
        from lensworks.model import _hf

        if spec is not None:
            _hf.check_hf_shapes(path, spec, raw)
        try:
            return boot_hf_dir(path, dtype=dtype, device=device or "cpu", n_ctx=fields["n_ctx"], placement=placement,
                               **processing)
        except Exception as exc:
            from lensworks.model._families import supported_text

            what = "" if spec is not None else (
                f" ({path / 'config.json'}: architecture {(raw.get('architectures') or [raw.get('model_type')])[0]} "
                f"is not one lensworks registers ({supported_text()}), and TransformerLens 4's bridge could not "
                "boot it either)")
            raise LensworksError(f"{path}: TransformerBridge.boot_transformers failed{what}: {type(exc).__name__}: "
                                 f"{str(exc)[:300]}") from exc

    def build_from_tl(self, cfg: dict[str, Any], state_dict: dict[str, Tensor], *, tokenizer: Any, dtype: torch.dtype,
                      device: Any, processing: dict[str, bool], process: bool, where: str) -> Any:
        """See :meth:`lensworks.model._backend.Backend.build_from_tl` (``processing`` is all
        False when ``process`` is)."""
        return boot_tl_state_dict(cfg, state_dict, tokenizer=tokenizer, dtype=dtype, device=device or "cpu",
                                  where=where, **processing)

    def pretrained(self, name: str, *, dtype: torch.dtype | None, device: Any, processing: dict[str, bool],
                   placement: Placement = Placement()) -> Any:
        """See :meth:`lensworks.model._backend.Backend.pretrained`."""
        try:
            return boot_hf_dir(name, dtype=dtype or torch.float32, device=device or "cpu", placement=placement,
                               **processing)
        except Exception as exc:
            from lensworks._zoo_index import ZOO_NAMES, name_hint

            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise LensworksError(f"could not load {name!r}: not a local checkpoint, and booting it by name failed "
                                 f"({type(exc).__name__}: {first}){name_hint(name)} (bundled demo models: "
                                 f"{', '.join(ZOO_NAMES)})") from exc
