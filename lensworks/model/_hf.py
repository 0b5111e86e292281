"""Local Hugging Face checkpoints: config.json mapped to HookedTransformerConfig fields through the
family's :class:`~lensworks.model._families.FamilySpec`, weights converted with the family's
converter (TransformerLens's own), shapes checked against config.json. Nothing here touches the
network, and nothing here names a family: what differs between families is in its spec
(:mod:`._specs`); the weight files are read by :mod:`._files`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lensworks.model._core import LensworksError
from lensworks.model._families import SUPPORTED_ARCHITECTURES, FamilySpec, family_for
from lensworks.model._files import LazyWeights, check_floating, stored_shapes
from lensworks.model._specs import config_size

__all__ = ["SUPPORTED_ARCHITECTURES", "MAX_DEFAULT_N_CTX", "is_hf_dir", "read_config", "config_fields",
           "check_layer_count", "convert_weights", "read_converted", "check_shapes", "check_hf_shapes"]

#: Longest context lensworks builds by default: TransformerLens 3.x allocates an n_ctx x n_ctx
#: mask per layer, so a 128k-token context would not fit in memory. Pass ``n_ctx`` for more.
MAX_DEFAULT_N_CTX = 4096


def is_hf_dir(path: Path) -> bool:
    """True when ``path`` holds a Hugging Face ``config.json`` (one with ``architectures`` or
    ``model_type``), as opposed to a lensworks/TransformerLens-format directory.

    Example:
        >>> is_hf_dir(Path("/nonexistent"))
        False
    """
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False  # the TransformerLens-format reader says what is wrong with the file
    return isinstance(raw, dict) and ("architectures" in raw or "model_type" in raw)


def read_config(path: Path) -> tuple[FamilySpec, dict[str, Any]]:
    """Read ``config.json``: returns (the family's spec, the raw dict), or raises naming the file.

    Example:
        >>> spec, raw = read_config(zoo.path("bpe-llama"))
        >>> spec.family, raw["architectures"]
        ('llama', ['LlamaForCausalLM'])
    """
    from lensworks.model._vocabfile import read_json

    cfg_path = path / "config.json"
    raw = read_json(cfg_path, "config")
    if not isinstance(raw, dict):
        raise LensworksError(f"{cfg_path}: expected a JSON object of config fields, got {type(raw).__name__}")
    archs = raw.get("architectures") or []
    return family_for(archs[0] if archs else None, where=str(cfg_path), model_type=raw.get("model_type")), raw


# --------------------------------------------------------------------------- config mapping


def config_fields(spec: FamilySpec, raw: dict[str, Any], *, where: str, n_ctx: int | None = None) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Hugging Face ``config.json`` of a registered family.

    Args:
        spec: The family's spec (:func:`~lensworks.model._families.family_for`).
        raw: The parsed config.json.
        where: The file, for messages.
        n_ctx: Context length to build (default: the checkpoint's, capped at
            :data:`MAX_DEFAULT_N_CTX`).

    Returns:
        Keyword arguments for ``HookedTransformerConfig`` (without dtype and device).

    Example:
        >>> raw = {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 128, "vocab_size": 300}
        >>> config_fields(family_for("GPT2LMHeadModel"), raw, where="config.json")["d_head"]
        16
    """
    out = spec.config(raw, where)
    if not spec.default_prepend_bos:
        out["default_prepend_bos"] = False
    out["d_vocab"] = config_size(raw, "vocab_size", where=where)
    out["original_architecture"] = spec.architecture
    _check_sizes(out, where)
    out["n_ctx"] = int(n_ctx) if n_ctx is not None else min(int(out["n_ctx"]), MAX_DEFAULT_N_CTX)
    return out


def _check_sizes(out: dict[str, Any], where: str) -> None:
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
    1-layer config beside 2 stored blocks would silently drop one).

    Example:
        >>> check_layer_count(["model.layers.0.mlp.weight", "model.layers.1.mlp.weight"], 2, "config.json")
    """
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


def convert_weights(spec: FamilySpec, raw_cfg: dict[str, Any], sd: dict[str, Tensor] | LazyWeights, cfg: Any, *,
                    where: str) -> dict[str, Tensor]:
    """Hugging Face tensors -> a TransformerLens state dict, with the family's converter.

    Adds the ``*ForCausalLM`` prefix to checkpoints saved from the bare base model, and points
    a tied output head at the embedding. Shape disagreements with config.json raise naming both.
    ``sd`` may be a :class:`~lensworks.model._files.LazyWeights`: each tensor is then read when
    the converter asks for it (most converted tensors are views of the ones read).

    Example:
        >>> from lensworks.model._files import read_state_dict
        >>> from lensworks.model._tlconfig import make_cfg
        >>> path = zoo.path("bpe-llama")
        >>> spec, raw = read_config(path)
        >>> cfg = make_cfg({**config_fields(spec, raw, where="config.json"), "init_weights": False}, where=str(path))
        >>> converted = convert_weights(spec, raw, read_state_dict(path), cfg, where=str(path))
        >>> converted["embed.W_E"].shape
        torch.Size([2048, 128])
    """
    lazy = isinstance(sd, LazyWeights)
    sd = sd.renamed(spec.with_base_prefix) if lazy else spec.with_base_prefix(sd)
    if spec.head not in sd:
        if not spec.is_tied(raw_cfg):
            raise LensworksError(f"{where}: the weights lack the output head {spec.head!r} and config.json does not tie it to the embedding")
        if spec.embedding not in sd:
            raise LensworksError(f"{where}: the weights lack the embedding {spec.embedding!r}")
        sd = sd.with_alias(spec.head, spec.embedding) if lazy else {**sd, spec.head: sd[spec.embedding]}
    try:
        out = spec.converter(_WeightTree(sd), cfg)
    except AttributeError as exc:
        raise LensworksError(f"{where}: the weight files lack a tensor config.json implies: {exc}") from exc
    except (RuntimeError, ValueError) as exc:  # einops / view shape errors
        raise LensworksError(f"{where}: the weights do not fit config.json's shapes: {str(exc).splitlines()[0][:300]}") from exc
    return {k: v for k, v in out.items() if isinstance(v, Tensor)}


def read_converted(path: Path, spec: FamilySpec, raw: dict[str, Any], cfg: Any, *,
                   dtype: torch.dtype | None) -> dict[str, Tensor]:
    """A Hugging Face directory's weights in TransformerLens's layout, read tensor by tensor.

    The files are the ones the shard index names (:func:`~lensworks.model._files.weight_files`);
    each tensor is read with ``safe_open`` when the family's converter asks for it and cast to
    ``dtype`` on its own, so the peak is about one copy of the weights in ``dtype`` (plus one
    stored tensor), never the whole stored checkpoint beside its converted copy. Layer count and
    dtypes are checked from the headers before anything is read.

    Example:
        >>> from lensworks.model._tlconfig import make_cfg
        >>> path = zoo.path("bpe-llama")
        >>> spec, raw = read_config(path)
        >>> cfg = make_cfg({**config_fields(spec, raw, where="config.json"), "init_weights": False}, where=str(path))
        >>> read_converted(path, spec, raw, cfg, dtype=torch.bfloat16)["blocks.0.attn.W_Q"].dtype
        torch.bfloat16
    """
    where = str(path)
    with LazyWeights(path, dtype=dtype) as weights:
        check_layer_count(weights, int(cfg.n_layers), f"{path / 'config.json'}")
        check_floating(weights.dtypes(), where)
        return convert_weights(spec, raw, weights, cfg, where=where)


def check_shapes(converted: dict[str, Tensor], expected: dict[str, tuple[int, ...]], *, where: str) -> None:
    """Raise naming the first tensor whose shape differs from what the config implies.

    Example:
        >>> check_shapes({"embed.W_E": torch.zeros(3, 2)}, {"embed.W_E": (3, 4)}, where="ckpt")
        Traceback (most recent call last):
        lensworks.errors.LensworksError: ckpt: config.json implies embed.W_E of shape (3, 4), the weight files hold (3, 2)
    """
    for name, shape in expected.items():
        if name in converted and tuple(converted[name].shape) != tuple(shape):
            raise LensworksError(
                f"{where}: config.json implies {name} of shape {tuple(shape)}, the weight files hold {tuple(converted[name].shape)}"
            )


def check_hf_shapes(path: Path, spec: FamilySpec, raw: dict[str, Any]) -> None:
    """Compare the stored tensors with the ones config.json implies, without reading weights:
    the Hugging Face model is built on the meta device and its parameter shapes compared.

    Example:
        >>> path = zoo.path("bpe-llama")
        >>> check_hf_shapes(path, *read_config(path))  # the shapes agree: nothing raised
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception as exc:
        raise LensworksError(f"{path / 'config.json'}: transformers cannot build this config ({type(exc).__name__}: {str(exc)[:200]})") from exc
    stored = stored_shapes(path)
    check_layer_count(stored, int(raw.get("num_hidden_layers") or raw.get("n_layer") or 0), str(path / "config.json"))
    stored = spec.with_base_prefix(stored)
    # transformers 5 renames some heads on load (GPT-NeoX's embed_out is lm_head in the module)
    alias = lambda k: "lm_head." + k[len(spec.head_module):] if k.startswith(spec.head_module) else k  # noqa: E731
    stored = {alias(k): v for k, v in stored.items()}
    expected = {alias(k): v for k, v in expected.items()}
    head = alias(spec.head)
    for name, shape in expected.items():
        if name not in stored:
            if name == head and spec.is_tied(raw):
                continue
            if name == head:
                raise LensworksError(f"{path}: the weights lack the output head {head!r} and config.json does not tie it to the embedding")
            raise LensworksError(f"{path}: the weight files lack a tensor config.json implies: {name}")
        if stored[name] != shape:
            raise LensworksError(f"{path}: config.json implies {name} of shape {shape}, the weight files hold {stored[name]}")
