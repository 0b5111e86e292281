"""Checkpoints written by the training scripts small-model researchers use, converted to
TransformerLens-format configs and state dicts.

- nanoGPT's ``ckpt.pt``: ``{"model_args": {n_layer, n_head, n_embd, block_size, bias,
  vocab_size, ...}, "model": state_dict, ...}``; ``transformer.wte/wpe/h.N.{ln_1, attn.c_attn,
  attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}/ln_f`` and ``lm_head`` (tied to ``wte``), weights
  in ``nn.Linear``'s ``[out, in]`` layout, exact GELU, LayerNorm eps 1e-5, biases optional.
  ``torch.compile`` prefixes every key with ``_orig_mod.``.
- "Let's build GPT" (the lecture's ``gpt.py``) state dicts: ``token_embedding_table``,
  ``position_embedding_table``, ``blocks.N.sa.heads.H.{key,query,value}`` (no biases; each head
  its own ``[head_size, n_embd]`` matrix), ``blocks.N.sa.proj``, ``blocks.N.ffwd.net.{0,2}``
  (ReLU between), ``ln1``, ``ln2``, ``ln_f``, ``lm_head`` (with a bias). Attention logits are
  scaled by ``head_size ** -0.5``, TransformerLens's default.

Both layouts are read from the tensors alone (no module is unpickled). Every size is checked
against the stored shapes before anything is allocated.

The conversion, with ``nn.Linear`` computing ``x @ W.T + b``: a query head ``h`` reads columns
``h*d_head:(h+1)*d_head`` of ``W.T``, so ``W_Q[h] = W.T[:, h*d_head:(h+1)*d_head]``; the output
projection reads the concatenated heads, so ``W_O[h] = W.T[h*d_head:(h+1)*d_head, :]``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from lensworks.model._core import LensworksError
from lensworks.model._files import check_floating

__all__ = ["layout_of", "nanogpt_checkpoint", "lbg_state_dict", "check_size"]

_COMPILED = "_orig_mod."


def check_size(value: Any, field: str, where: str, *, minimum: int = 1) -> int:
    """A config size that must be an integer of at least ``minimum``: ``"4"``, ``2.0``, ``2.7``,
    ``True`` and ``0`` are refused, naming the field and the value.

    Example:
        >>> check_size(4, "n_layer", "ckpt.pt")
        4
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise LensworksError(f"{where}: config field {field!r} must be {kind}, got {value!r} ({type(value).__name__})")
    return int(value)


def _strip_compiled(sd: dict[str, Any]) -> dict[str, Any]:
    return {k[len(_COMPILED):] if k.startswith(_COMPILED) else k: v for k, v in sd.items()}


def layout_of(obj: Any) -> str | None:
    """``"nanogpt"``, ``"lbg"`` ("Let's build GPT") or None for an object read from a ``.pt`` file.

    Example:
        >>> layout_of({"model_args": {}, "model": {}})
        'nanogpt'
    """
    if not isinstance(obj, dict):
        return None
    if "model_args" in obj and "model" in obj:
        return "nanogpt"
    keys = [k[len(_COMPILED):] if isinstance(k, str) and k.startswith(_COMPILED) else k for k in obj]
    if "token_embedding_table.weight" in keys:
        return "lbg"
    if "transformer.wte.weight" in keys:
        return "nanogpt-bare"
    return None


def _tensors(sd: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise LensworksError(f"{where}: expected a state dict mapping parameter names to tensors")
    sd = _strip_compiled(sd)
    check_floating(sd, where)  # before conversion, so the message names the file's own keys
    return sd


def _blocks(sd: dict[str, Tensor], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _shape(sd: dict[str, Tensor], key: str, shape: tuple[int, ...], where: str, why: str) -> Tensor:
    if key not in sd:
        raise LensworksError(f"{where}: the weights lack {key!r}")
    t = sd[key]
    if tuple(t.shape) != shape:
        raise LensworksError(f"{where}: {key} has shape {tuple(t.shape)} but {why} implies {shape}")
    return t


def _layers_agree(found: list[int], n_layers: int, where: str, field: str) -> None:
    if found != list(range(n_layers)):
        shown = found[:8] + (["..."] if len(found) > 8 else [])
        raise LensworksError(f"{where}: config field {field!r} says {n_layers} layers but the weights hold blocks "
                             f"{shown} ({len(found)} layers)")


def nanogpt_checkpoint(obj: dict[str, Any], *, where: str) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """A nanoGPT ``ckpt.pt`` dict -> (TransformerLens config, state dict, the run's ``config``).

    Example:
        >>> # a nanoGPT run's out/ckpt.pt (none ships with lensworks, so this cannot run here)
        >>> cfg, sd, run = nanogpt_checkpoint(torch.load("out/ckpt.pt", weights_only=True), where="ckpt.pt")  # doctest: +SKIP
        >>> cfg["n_layers"], sorted(sd)[0]  # doctest: +SKIP
        (6, 'blocks.0.attn.W_K')
    """
    args = obj["model_args"]
    if not isinstance(args, dict):
        raise LensworksError(f"{where}: 'model_args' must be a dict, got {type(args).__name__}")
    fwhere = f"{where} (model_args)"
    sizes = {f: check_size(args.get(f), f, fwhere) for f in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    L, H, d, T, V = (sizes[f] for f in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    if d % H:
        raise LensworksError(f"{fwhere}: n_embd={d} is not divisible by n_head={H}")
    sd = _tensors(obj["model"], where)
    _layers_agree(_blocks(sd, "transformer.h."), L, fwhere, "n_layer")
    bias = "transformer.h.0.attn.c_attn.bias" in sd
    if "bias" in args and isinstance(args["bias"], bool) and args["bias"] != bias:
        raise LensworksError(f"{fwhere}: bias={args['bias']} but the weights {'hold' if bias else 'lack'} biases")
    dh = d // H
    get = lambda key, shape, why="model_args": _shape(sd, key, shape, fwhere, why)  # noqa: E731
    zeros = lambda *shape: torch.zeros(*shape, dtype=sd["transformer.wte.weight"].dtype)  # noqa: E731
    b = lambda key, shape: get(key, shape) if bias else zeros(*shape)  # noqa: E731
    out: dict[str, Tensor] = {
        "embed.W_E": get("transformer.wte.weight", (V, d), "vocab_size x n_embd"),
        "pos_embed.W_pos": get("transformer.wpe.weight", (T, d), "block_size x n_embd"),
        "ln_final.w": get("transformer.ln_f.weight", (d,)),
        "ln_final.b": b("transformer.ln_f.bias", (d,)),
    }
    head = sd.get("lm_head.weight", out["embed.W_E"])  # tied to wte in nanoGPT
    out["unembed.W_U"] = _shape({"lm_head.weight": head}, "lm_head.weight", (V, d), fwhere, "vocab_size x n_embd").T
    out["unembed.b_U"] = zeros(V)
    for l in range(L):
        p, q = f"transformer.h.{l}.", f"blocks.{l}."
        w_qkv = get(p + "attn.c_attn.weight", (3 * d, d)).T  # [d, 3d]: x @ w_qkv = (q | k | v)
        b_qkv = b(p + "attn.c_attn.bias", (3 * d,))
        for i, name in enumerate("QKV"):
            out[q + f"attn.W_{name}"] = w_qkv[:, i * d:(i + 1) * d].reshape(d, H, dh).permute(1, 0, 2)
            out[q + f"attn.b_{name}"] = b_qkv[i * d:(i + 1) * d].reshape(H, dh)
        out[q + "attn.W_O"] = get(p + "attn.c_proj.weight", (d, d)).T.reshape(H, dh, d)
        out[q + "attn.b_O"] = b(p + "attn.c_proj.bias", (d,))
        d_mlp = sd.get(p + "mlp.c_fc.weight", torch.empty(4 * d, d)).shape[0]
        out[q + "mlp.W_in"] = get(p + "mlp.c_fc.weight", (d_mlp, d)).T
        out[q + "mlp.b_in"] = b(p + "mlp.c_fc.bias", (d_mlp,))
        out[q + "mlp.W_out"] = get(p + "mlp.c_proj.weight", (d, d_mlp)).T
        out[q + "mlp.b_out"] = b(p + "mlp.c_proj.bias", (d,))
        for ln, tl in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[q + f"{tl}.w"] = get(p + f"{ln}.weight", (d,))
            out[q + f"{tl}.b"] = b(p + f"{ln}.bias", (d,))
    cfg = dict(n_layers=L, d_model=d, n_ctx=T, d_head=dh, n_heads=H, d_vocab=V, d_mlp=int(d_mlp), act_fn="gelu",
               normalization_type="LN", eps=1e-5, positional_embedding_type="standard",
               default_prepend_bos=False, original_architecture="nanoGPT")
    run = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    return cfg, out, run


def lbg_state_dict(sd: dict[str, Any], *, where: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A "Let's build GPT" state dict -> (TransformerLens config, state dict). Every size comes
    from the stored shapes (the layout stores no config), checked for consistency.

    Example:
        >>> # a "Let's build GPT" torch.save(model.state_dict(), "model.pt") (none ships with lensworks)
        >>> cfg, sd = lbg_state_dict(torch.load("model.pt", weights_only=True), where="model.pt")  # doctest: +SKIP
        >>> cfg["d_head"]  # doctest: +SKIP
        64
    """
    sd = _tensors(sd, where)
    emb = sd["token_embedding_table.weight"]
    if emb.ndim != 2:
        raise LensworksError(f"{where}: token_embedding_table.weight has shape {tuple(emb.shape)}; expected [vocab, n_embd]")
    V, d = emb.shape
    pos = sd.get("position_embedding_table.weight")
    if pos is None or pos.ndim != 2 or pos.shape[1] != d:
        got = None if pos is None else tuple(pos.shape)
        raise LensworksError(f"{where}: position_embedding_table.weight has shape {got}; expected [block_size, {d}]")
    T = pos.shape[0]
    layers = _blocks(sd, "blocks.")
    if not layers:
        raise LensworksError(f"{where}: no blocks.N.* weights found")
    _layers_agree(layers, len(layers), where, "blocks")
    heads = _blocks(sd, "blocks.0.sa.heads.")
    if not heads or heads != list(range(len(heads))):
        raise LensworksError(f"{where}: expected heads blocks.0.sa.heads.0..H-1, found {heads[:8]}")
    H = len(heads)
    dh = sd["blocks.0.sa.heads.0.key.weight"].shape[0] if "blocks.0.sa.heads.0.key.weight" in sd else 0
    if dh < 1:
        raise LensworksError(f"{where}: the weights lack 'blocks.0.sa.heads.0.key.weight'")
    d_mlp = sd.get("blocks.0.ffwd.net.0.weight", torch.empty(4 * d, d)).shape[0]
    get = lambda key, shape, why="the embedding's width and the first block": _shape(sd, key, shape, where, why)  # noqa: E731
    out: dict[str, Tensor] = {"embed.W_E": emb, "pos_embed.W_pos": pos,
                              "ln_final.w": get("ln_f.weight", (d,)), "ln_final.b": get("ln_f.bias", (d,)),
                              "unembed.W_U": get("lm_head.weight", (V, d)).T, "unembed.b_U": get("lm_head.bias", (V,))}
    for l in layers:
        p, q = f"blocks.{l}.", f"blocks.{l}."
        found = _blocks(sd, p + "sa.heads.")
        if found != heads:
            raise LensworksError(f"{where}: block {l} has heads {found[:8]} but block 0 has {H}")
        for name, key in (("Q", "query"), ("K", "key"), ("V", "value")):
            out[q + f"attn.W_{name}"] = torch.stack([get(p + f"sa.heads.{h}.{key}.weight", (dh, d)).T for h in heads])
            out[q + f"attn.b_{name}"] = torch.zeros(H, dh, dtype=emb.dtype)
        out[q + "attn.W_O"] = get(p + "sa.proj.weight", (d, H * dh)).T.reshape(H, dh, d)
        out[q + "attn.b_O"] = get(p + "sa.proj.bias", (d,))
        out[q + "mlp.W_in"] = get(p + "ffwd.net.0.weight", (d_mlp, d)).T
        out[q + "mlp.b_in"] = get(p + "ffwd.net.0.bias", (d_mlp,))
        out[q + "mlp.W_out"] = get(p + "ffwd.net.2.weight", (d, d_mlp)).T
        out[q + "mlp.b_out"] = get(p + "ffwd.net.2.bias", (d,))
        for ln in ("ln1", "ln2"):
            out[q + f"{ln}.w"] = get(p + f"{ln}.weight", (d,))
            out[q + f"{ln}.b"] = get(p + f"{ln}.bias", (d,))
    cfg = dict(n_layers=len(layers), d_model=int(d), n_ctx=int(T), d_head=int(dh), n_heads=H, d_vocab=int(V),
               d_mlp=int(d_mlp), act_fn="relu", normalization_type="LN", eps=1e-5,
               positional_embedding_type="standard", default_prepend_bos=False,
               original_architecture="LetsBuildGPT")
    return cfg, out
