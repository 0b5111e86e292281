"""Tiny model builders for tests: small defaults, any config field overridable, both TransformerLens lines.

Every builder first makes a TransformerLens-format checkpoint, a config dict of
``HookedTransformerConfig`` fields and a state dict (:func:`tiny_checkpoint`), with weights drawn
exactly as ``HookedTransformer(cfg)`` draws them (``torch.manual_seed(seed)``, then
``N(0, initializer_range)`` for every ``W_`` parameter in the model's parameter order, LayerNorm
weights one, biases zero). Under TransformerLens 3 the model is that ``HookedTransformer``, as
before; under TransformerLens 4 (no ``HookedTransformer``) the checkpoint is written as a ``.pt``
file and read by ``lensworks.load_model``, which boots a ``TransformerBridge``. Both lines
therefore hold the same numbers (tests/test_helpers.py checks it under TransformerLens 3).

Write weights by hand through ``edit=``: a function that changes the TransformerLens-format state
dict in place before the model is built. A bridge's ``W_Q`` / ``W_O`` / ... are rearranged copies of
its Hugging Face-style parameters, so assigning into them after loading changes nothing.
"""

from __future__ import annotations

import itertools
import random
import string
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from lensworks.model import TL_MAJOR, load_model, vocab_tokenizer

if TL_MAJOR < 4:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformer, HookedTransformerConfig

#: A character vocabulary with a BOS token, for models that need strings.
CHAR_VOCAB = ["<bos>"] + list(string.ascii_lowercase + " .,\n") + list("0123456789")

#: A function that edits a TransformerLens-format state dict in place (``sd["blocks.0.attn.W_O"][0] = ...``).
Edit = Callable[[dict[str, Tensor]], None]

_BASE = dict(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu", attn_only=True,
             normalization_type="LN")
_ROOT = Path(tempfile.mkdtemp(prefix="lensworks-helpers-"))
_COUNTER = itertools.count()
#: model -> the TransformerLens-format config and state dict it was loaded from (TransformerLens 4 models).
_LOADED_FROM: "weakref.WeakKeyDictionary[Any, tuple[dict[str, Any], dict[str, Tensor]]]" = weakref.WeakKeyDictionary()
_VOCABS: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def tiny_cfg(**overrides) -> "HookedTransformerConfig":
    """A HookedTransformerConfig with tiny defaults; keyword arguments override fields (TransformerLens 3 only)."""
    base = dict(_BASE, seed=0, device="cpu")
    base.update(overrides)
    return HookedTransformerConfig(**base)


def tiny_cfg_dict(**overrides: Any) -> dict[str, Any]:
    """The config fields of :func:`tiny_cfg` as a plain dict, with the sizes ``HookedTransformerConfig``
    derives filled in (``d_mlp``, ``d_vocab_out``, ``initializer_range``); needs no TransformerLens."""
    cfg: dict[str, Any] = dict(_BASE, positional_embedding_type="standard")
    cfg.update(overrides)
    cfg.pop("seed", None)
    cfg.pop("device", None)
    if cfg.get("d_mlp") is None and not cfg["attn_only"]:
        cfg["d_mlp"] = 4 * cfg["d_model"]
    if cfg.get("d_vocab_out", -1) == -1:
        cfg["d_vocab_out"] = cfg["d_vocab"]
    cfg.setdefault("initializer_range", 0.8 / cfg["d_model"] ** 0.5)
    if cfg.get("gated_mlp") or cfg.get("parallel_attn_mlp"):
        raise NotImplementedError("tiny_cfg_dict: gated or parallel blocks are not laid out here")
    return cfg


def _norm(prefix: str, kind: str | None, d: int) -> list[tuple[str, tuple[int, ...]]]:
    if kind == "LN":
        return [(prefix + ".w", (d,)), (prefix + ".b", (d,))]
    if kind == "RMS":
        return [(prefix + ".w", (d,))]
    return []  # None, "LNPre", "RMSPre": no parameters


def tl_parameters(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """``HookedTransformer(cfg).named_parameters()`` as (name, shape), in the same order."""
    d, H, dh, V = cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_vocab"]
    kv, norm = cfg.get("n_key_value_heads"), cfg["normalization_type"]
    out: list[tuple[str, tuple[int, ...]]] = [("embed.W_E", (V, d))]
    if cfg["positional_embedding_type"] in ("standard", "shortformer"):
        out.append(("pos_embed.W_pos", (cfg["n_ctx"], d)))
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        out += _norm(p + "ln1", norm, d)
        if not cfg["attn_only"]:
            out += _norm(p + "ln2", norm, d)
        out += [(p + "attn.W_Q", (H, d, dh)), (p + "attn.W_O", (H, dh, d)), (p + "attn.b_Q", (H, dh)),
                (p + "attn.b_O", (d,))]
        k, u = (kv, "_") if kv else (H, "")
        out += [(p + f"attn.{u}W_K", (k, d, dh)), (p + f"attn.{u}W_V", (k, d, dh)), (p + f"attn.{u}b_K", (k, dh)),
                (p + f"attn.{u}b_V", (k, dh))]
        if not cfg["attn_only"]:
            m = cfg["d_mlp"]
            out += [(p + "mlp.W_in", (d, m)), (p + "mlp.b_in", (m,)), (p + "mlp.W_out", (m, d)), (p + "mlp.b_out", (d,))]
            if cfg["act_fn"].endswith("_ln"):
                out += _norm(p + "mlp.ln", "LN", m)
    out += _norm("ln_final", norm, d)
    out += [("unembed.W_U", (d, cfg["d_vocab_out"])), ("unembed.b_U", (cfg["d_vocab_out"],))]
    return out


def _seed_everywhere(seed: int) -> None:
    """What ``HookedTransformerConfig(seed=...)`` does on creation (tests see the same global RNG state)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def tiny_state_dict(cfg: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    """Weights drawn as ``HookedTransformer(cfg)`` with ``cfg.seed = seed`` draws them (global RNG included)."""
    _seed_everywhere(seed)
    torch.manual_seed(seed)  # HookedTransformer.init_weights
    sd = {}
    for name, shape in tl_parameters(cfg):
        leaf = name.rsplit(".", 1)[1]
        if "W_" in name:
            sd[name] = torch.empty(shape).normal_(0.0, cfg["initializer_range"])
        else:
            sd[name] = torch.ones(shape) if leaf == "w" else torch.zeros(shape)
    return sd


def tiny_checkpoint(*, seed: int = 0, vocab=None, init_scale: float = 1.0, edit: Edit | None = None,
                    **overrides) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The TransformerLens-format config and state dict :func:`tiny_model` loads."""
    if vocab is not None:
        overrides.setdefault("d_vocab", len(vocab))
    cfg = tiny_cfg_dict(**overrides)
    sd = tiny_state_dict(cfg, seed)
    with torch.no_grad():
        if init_scale != 1.0:
            for v in sd.values():
                v.mul_(init_scale)
        if edit is not None:
            edit(sd)
    return cfg, sd


def write_checkpoint(cfg: dict[str, Any], sd: dict[str, Tensor], vocab=None, path: str | Path | None = None) -> Path:
    """A ``.pt`` file ``load_model`` reads: ``{"cfg", "state_dict", "vocab"}`` (a fresh temporary name by default)."""
    path = Path(path) if path is not None else _ROOT / f"tiny{next(_COUNTER)}.pt"
    obj: dict[str, Any] = {"cfg": cfg, "state_dict": sd}
    if vocab is not None:
        obj["vocab"] = list(vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def _tl3_params(model) -> dict[str, Tensor]:
    return dict(model.named_parameters())


def _load(cfg: dict[str, Any], sd: dict[str, Tensor], vocab):
    model = load_model(write_checkpoint(cfg, sd, vocab))
    _LOADED_FROM[model] = (cfg, sd)
    if vocab is not None:
        _VOCABS[model] = list(vocab)
    return model


def _loaded_from(model) -> tuple[dict[str, Any], dict[str, Tensor]]:
    try:
        return _LOADED_FROM[model]
    except KeyError:
        raise ValueError("this model was not built by tests/helpers.py") from None


def tl_state_dict(model) -> dict[str, Tensor]:
    """A helper-built model's weights in TransformerLens's layout (``blocks.0.attn.W_Q``, ``_W_K`` for
    grouped-query attention, ...): ``model.state_dict()`` under TransformerLens 3, the state dict the
    bridge was loaded from under TransformerLens 4 (so weight edits made after loading are not in it)."""
    return model.state_dict() if TL_MAJOR < 4 else _loaded_from(model)[1]


def tl_config(model) -> dict[str, Any]:
    """A helper-built model's ``HookedTransformerConfig`` fields: ``model.cfg.to_dict()`` under
    TransformerLens 3, the config dict the bridge was loaded from under TransformerLens 4."""
    return model.cfg.to_dict() if TL_MAJOR < 4 else dict(_loaded_from(model)[0])


def tiny_model(*, seed: int = 0, vocab=None, init_scale: float = 1.0, edit: Edit | None = None, **overrides):
    """A randomly initialised model on either TransformerLens line; ``vocab`` attaches a vocabulary
    tokenizer (with BOS when the vocabulary holds ``<bos>``), ``edit`` changes the weights first."""
    if TL_MAJOR >= 4:
        cfg, sd = tiny_checkpoint(seed=seed, vocab=vocab, init_scale=init_scale, edit=edit, **overrides)
        return _load(cfg, sd, vocab)
    if vocab is not None:
        overrides.setdefault("d_vocab", len(vocab))
    cfg = tiny_cfg(seed=seed, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    with torch.no_grad():
        if init_scale != 1.0:
            for p in model.parameters():
                p.mul_(init_scale)
        if edit is not None:
            edit(_tl3_params(model))
    if vocab is not None:
        model.set_tokenizer(vocab_tokenizer(vocab))
        model.cfg.default_prepend_bos = "<bos>" in vocab
    model.eval()
    return model


def planted_induction_checkpoint(d_vocab: int = 16, n_ctx: int = 40, scale: float = 200.0, noise: float = 1e-3,
                                 edit: Edit | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config and state dict of :func:`planted_induction_model`."""
    V, P = d_vocab, n_ctx
    d_model = 3 * V + P
    cfg = tiny_cfg_dict(n_layers=2, n_heads=2, d_model=d_model, d_head=P, n_ctx=P, d_vocab=V,
                        normalization_type=None, attn_only=True, positional_embedding_type="standard")
    _seed_everywhere(0)  # as HookedTransformerConfig(seed=0) does
    tok, pos, prev, out = 0, V, V + P, 2 * V + P
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.zeros(shape) for k, shape in tl_parameters(cfg)}
    for k in sd:
        if k.startswith("blocks.") and k.endswith(("W_Q", "W_K", "W_V", "W_O")):
            sd[k] = noise * torch.randn(sd[k].shape, generator=gen)
            sd[k][0] = 0.0  # head 0 of each layer is planted below
    eye = torch.eye(V)
    sd["embed.W_E"][:, tok : tok + V] = eye
    sd["pos_embed.W_pos"][:, pos : pos + P] = torch.eye(P)
    sd["unembed.W_U"][out : out + V, :] = eye
    # L0H0: previous-token head
    for p in range(P):
        sd["blocks.0.attn.W_Q"][0, pos + p, p] = scale  # query at p -> head dim p
        if p + 1 < P:
            sd["blocks.0.attn.W_K"][0, pos + p, p + 1] = 1.0  # key at p -> head dim p+1
    sd["blocks.0.attn.W_V"][0, tok : tok + V, :V] = eye
    sd["blocks.0.attn.W_O"][0, :V, prev : prev + V] = eye
    # L1H0: induction head
    sd["blocks.1.attn.W_Q"][0, tok : tok + V, :V] = scale * eye
    sd["blocks.1.attn.W_K"][0, prev : prev + V, :V] = eye
    sd["blocks.1.attn.W_V"][0, tok : tok + V, :V] = eye
    sd["blocks.1.attn.W_O"][0, :V, out : out + V] = eye
    if edit is not None:
        edit(sd)
    return cfg, sd


def planted_induction_model(d_vocab: int = 16, n_ctx: int = 40, scale: float = 200.0, noise: float = 1e-3,
                            edit: Edit | None = None):
    """A 2-layer attention-only model whose weights are set by hand so the answers are known.

    Residual layout (no LayerNorm, no biases): token one-hot ``[0, V)``, position one-hot
    ``[V, V+n_ctx)``, "previous token" slot ``[V+n_ctx, 2V+n_ctx)``, output slot
    ``[2V+n_ctx, 3V+n_ctx)`` read by W_U.

    - L0H0 is a previous-token head: queries at position p match keys at p-1 (positional QK);
      its OV copies the token one-hot into the previous-token slot.
    - L1H0 is an induction head: its query is the current token, its key the previous-token slot
      (K-composition with L0H0), and its OV copies the attended token into the output slot, which
      W_U reads as that token's logit (copying score 1).
    - Every other head (L0H1, L1H1) has small random weights (``noise``).
    """
    cfg, sd = planted_induction_checkpoint(d_vocab, n_ctx, scale, noise, edit)
    if TL_MAJOR >= 4:
        return _load(cfg, sd, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(tiny_cfg(**{k: v for k, v in cfg.items() if k != "initializer_range"}))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", ".mask")) for k in missing), (missing, unexpected)
    model.eval()
    return model


def save_checkpoint(model, path: str | Path, *, vocab=None) -> Path:
    """Write a helper-built model as a ``save_model`` directory (``config.json``, ``model.safetensors``,
    ``vocab.json`` for a vocabulary model): ``save_model`` itself under TransformerLens 3; under
    TransformerLens 4, where ``save_model`` refuses bridges, the same files from the checkpoint the
    bridge was loaded from (weight edits made after loading are not in it). ``vocab`` as in ``save_model``."""
    if TL_MAJOR < 4:
        from lensworks import save_model

        return save_model(model, path, vocab=vocab)
    import json

    from safetensors.torch import save_file

    cfg, sd = _loaded_from(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    vocab = _VOCABS.get(model) if vocab is None else vocab
    if vocab is not None:
        (path / "vocab.json").write_text(json.dumps(list(vocab)))
    return path
