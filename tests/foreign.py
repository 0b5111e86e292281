"""Checkpoints in the layouts other tools' training scripts write, built by hand, and forward
passes written here from the raw tensors, independent of lensworks and TransformerLens.

- nanoGPT: ``train.py`` saves ``{"model": state_dict, "model_args": {...}, "optimizer": ...,
  "iter_num": ..., "best_val_loss": ..., "config": {...}}`` as ``out_dir/ckpt.pt``; the char
  data scripts write ``data/<dataset>/meta.pkl`` = ``{"vocab_size", "itos", "stoi"}`` with the
  vocabulary ``sorted(set(text))`` (so ``"\\n"`` is id 0 for Shakespeare).
- "Let's build GPT": ``torch.save(model.state_dict(), path)`` of the lecture's model.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

#: Text for character models: newlines, spaces and punctuation, like Shakespeare's.
SHAKESPEARE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n")
#: The vocabulary nanoGPT's shakespeare_char/prepare.py builds: sorted characters, '\n' first.
CHARS = sorted(set(SHAKESPEARE))


def _rnd(g: torch.Generator, *shape: int, s: float = 0.2) -> torch.Tensor:
    return s * torch.randn(*shape, generator=g)


def nanogpt_state_dict(*, n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=len(CHARS), bias=True,
                       seed=0) -> dict[str, torch.Tensor]:
    """Random weights with nanoGPT's names and ``nn.Linear`` layouts; ``lm_head`` tied to ``wte``."""
    g = torch.Generator().manual_seed(seed)
    d = n_embd
    sd = {"transformer.wte.weight": _rnd(g, vocab_size, d, s=0.5), "transformer.wpe.weight": _rnd(g, block_size, d),
          "transformer.ln_f.weight": 1 + _rnd(g, d, s=0.1)}
    if bias:
        sd["transformer.ln_f.bias"] = _rnd(g, d, s=0.1)
    for l in range(n_layer):
        p = f"transformer.h.{l}."
        sd.update({p + "ln_1.weight": 1 + _rnd(g, d, s=0.1), p + "ln_2.weight": 1 + _rnd(g, d, s=0.1),
                   p + "attn.c_attn.weight": _rnd(g, 3 * d, d), p + "attn.c_proj.weight": _rnd(g, d, d),
                   p + "mlp.c_fc.weight": _rnd(g, 4 * d, d), p + "mlp.c_proj.weight": _rnd(g, d, 4 * d),
                   # flash-less nanoGPT keeps its causal mask as a buffer named "bias"
                   p + "attn.bias": torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)})
        if bias:
            sd.update({p + "ln_1.bias": _rnd(g, d, s=0.1), p + "ln_2.bias": _rnd(g, d, s=0.1),
                       p + "attn.c_attn.bias": _rnd(g, 3 * d, s=0.1), p + "attn.c_proj.bias": _rnd(g, d, s=0.1),
                       p + "mlp.c_fc.bias": _rnd(g, 4 * d, s=0.1), p + "mlp.c_proj.bias": _rnd(g, d, s=0.1)})
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied, as nanoGPT's GPT.__init__ does
    return sd


def write_nanogpt(out_dir: Path, *, chars=CHARS, meta: bool = True, compiled: bool = False, dataset="shakespeare_char",
                  meta_beside: bool = False, **kwargs) -> Path:
    """``out_dir/ckpt.pt`` as nanoGPT's train.py writes it, and ``data/<dataset>/meta.pkl`` in
    nanoGPT's repository layout (``out_dir``'s parent) unless ``meta_beside``."""
    args = dict(n_layer=kwargs.get("n_layer", 2), n_head=kwargs.get("n_head", 4), n_embd=kwargs.get("n_embd", 32),
                block_size=kwargs.get("block_size", 64), bias=kwargs.get("bias", True),
                vocab_size=kwargs.get("vocab_size", len(chars)), dropout=0.0)
    sd = nanogpt_state_dict(**{k: v for k, v in args.items() if k != "dropout"}, seed=kwargs.get("seed", 0))
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    opt = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
           "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": [0]}]}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "optimizer": opt, "model_args": args, "iter_num": 10,
                "best_val_loss": torch.tensor(1.5), "config": {"dataset": dataset, "batch_size": 12, "bias": args["bias"]}},
               out_dir / "ckpt.pt")
    if meta:
        where = out_dir if meta_beside else out_dir.parent / "data" / dataset
        where.mkdir(parents=True, exist_ok=True)
        with open(where / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                         "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return out_dir / "ckpt.pt"


def _layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def nanogpt_log_probs(sd: dict[str, torch.Tensor], n_head: int, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of nanoGPT's forward, written from its definition (float64)."""
    sd = {k.removeprefix("_orig_mod."): v.double() for k, v in sd.items()}
    B, T = tokens.shape
    x = sd["transformer.wte.weight"][tokens] + sd["transformer.wpe.weight"][:T]
    d = x.shape[-1]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd.get(p + ".bias", 0)  # noqa: E731
    ln = lambda x, p: _layer_norm(x, sd[p + ".weight"], sd.get(p + ".bias"))  # noqa: E731
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    for l in range(n_layer):
        p = f"transformer.h.{l}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(d, dim=-1)
        q, k, v = (t.view(B, T, n_head, d // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // n_head)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        x = x + lin(y, p + "attn.c_proj")
        x = x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    logits = ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T
    return logits.log_softmax(-1)


def lbg_state_dict(*, n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=len(CHARS), seed=0) -> dict[str, torch.Tensor]:
    """Random weights with the "Let's build GPT" lecture model's names (gpt.py)."""
    g = torch.Generator().manual_seed(seed)
    d, hs = n_embd, n_embd // n_head
    sd = {"token_embedding_table.weight": _rnd(g, vocab_size, d, s=0.5),
          "position_embedding_table.weight": _rnd(g, block_size, d),
          "ln_f.weight": 1 + _rnd(g, d, s=0.1), "ln_f.bias": _rnd(g, d, s=0.1),
          "lm_head.weight": _rnd(g, vocab_size, d), "lm_head.bias": _rnd(g, vocab_size, s=0.1)}
    for l in range(n_layer):
        p = f"blocks.{l}."
        for h in range(n_head):
            for name in ("key", "query", "value"):
                sd[p + f"sa.heads.{h}.{name}.weight"] = _rnd(g, hs, d, s=0.4)
            sd[p + f"sa.heads.{h}.tril"] = torch.tril(torch.ones(block_size, block_size))
        sd.update({p + "sa.proj.weight": _rnd(g, d, n_head * hs), p + "sa.proj.bias": _rnd(g, d, s=0.1),
                   p + "ffwd.net.0.weight": _rnd(g, 4 * d, d), p + "ffwd.net.0.bias": _rnd(g, 4 * d, s=0.1),
                   p + "ffwd.net.2.weight": _rnd(g, d, 4 * d), p + "ffwd.net.2.bias": _rnd(g, d, s=0.1),
                   p + "ln1.weight": 1 + _rnd(g, d, s=0.1), p + "ln1.bias": _rnd(g, d, s=0.1),
                   p + "ln2.weight": 1 + _rnd(g, d, s=0.1), p + "ln2.bias": _rnd(g, d, s=0.1)})
    return sd


def lbg_log_probs(sd: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the lecture model's forward, written from its definition (float64):
    each head ``softmax(q k^T * head_size**-0.5)`` masked causally, heads concatenated, then
    ``proj``; ReLU MLP; pre-norm residual blocks."""
    sd = {k.removeprefix("_orig_mod."): v.double() for k, v in sd.items()}
    T = tokens.shape[1]
    x = sd["token_embedding_table.weight"][tokens] + sd["position_embedding_table.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    lin = lambda x, p: x @ sd[p + ".weight"].T + sd.get(p + ".bias", 0)  # noqa: E731
    ln = lambda x, p: _layer_norm(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    heads = sorted({int(k.split(".")[4]) for k in sd if k.startswith("blocks.0.sa.heads.")})
    for l in layers:
        p = f"blocks.{l}."
        h_in = ln(x, p + "ln1")
        outs = []
        for h in heads:
            k, q, v = (lin(h_in, p + f"sa.heads.{h}.{n}") for n in ("key", "query", "value"))
            wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
            wei = wei.masked_fill(~mask, float("-inf")).softmax(-1)
            outs.append(wei @ v)
        x = x + lin(torch.cat(outs, dim=-1), p + "sa.proj")
        x = x + lin(torch.relu(lin(ln(x, p + "ln2"), p + "ffwd.net.0")), p + "ffwd.net.2")
    return lin(ln(x, "ln_f"), "lm_head").log_softmax(-1)
