"""Loading a nanoGPT checkpoint of GPT-2-small shape from disk: lensworks.load_model beside the
way nanoGPT's own sample.py loads it (``torch.load`` + ``GPT.load_state_dict``), in the same run.

Run:  .venv/bin/python benchmarks/bench_load_nanogpt.py [--layers 12] [--width 768] [--repeats 3]

The checkpoint is written the way nanoGPT's train.py writes it: ``{"model": state_dict with
"_orig_mod." prefixes (torch.compile), "optimizer": AdamW state (two tensors per parameter),
"model_args", "config", "iter_num", "best_val_loss"}``, so the file is about three times the
weights. Each way of loading runs in a fresh Python process (imports done before the clock
starts); we report wall time and the process's peak resident memory (VmHWM), and the peak
right after the imports, so the growth due to loading is visible.

- reference: ``torch.load(path, map_location="cpu")`` (weights only, torch's default), strip
  the prefixes, ``GPT(config).load_state_dict(sd)`` with a GPT module written here (the same
  parameters as nanoGPT's model.py; it is only a container for the weights).
- lensworks: ``load_model(path)``: read (memory-mapped: the optimizer state is never read),
  convert to TransformerLens's layout, fold LayerNorm and centre (``from_pretrained``'s
  default), and with ``fold_ln=False, center_writing_weights=False, center_unembed=False``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import torch.nn as nn
mode, path = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(sys.argv[3]))


class Block(nn.Module):
    def __init__(self, d, bias):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)


class GPT(nn.Module):
    def __init__(self, a):
        super().__init__()
        d = a["n_embd"]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(a["vocab_size"], d), wpe=nn.Embedding(a["block_size"], d),
            h=nn.ModuleList([Block(d, a["bias"]) for _ in range(a["n_layer"])]), ln_f=nn.LayerNorm(d, bias=a["bias"])))
        self.lm_head = nn.Linear(d, a["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight


def vm(field):  # this process image's own memory (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


if mode != "reference":
    from lensworks import load_model
after_imports = vm("VmHWM")
t0 = time.perf_counter()
if mode == "reference":
    ckpt = torch.load(path, map_location="cpu")
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model = GPT(ckpt["model_args"])
    model.load_state_dict(sd)
    n = sum(p.numel() for p in model.parameters())
else:
    flags = {} if mode == "lensworks" else dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
    model = load_model(path, **flags)
    n = sum(p.numel() for p in model.parameters())
seconds = time.perf_counter() - t0
peak = vm("VmHWM")
print(json.dumps({"seconds": seconds, "peak_gib": peak, "after_imports_gib": after_imports, "params": n}))
"""


def write_checkpoint(path: Path, layers: int, width: int, heads: int, vocab: int, block: int) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    d = width
    sd = {"transformer.wte.weight": torch.randn(vocab, d, generator=g) * 0.02,
          "transformer.wpe.weight": torch.randn(block, d, generator=g) * 0.01,
          "transformer.ln_f.weight": torch.ones(d), "transformer.ln_f.bias": torch.zeros(d)}
    for l in range(layers):
        p = f"transformer.h.{l}."
        sd.update({p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d),
                   p + "ln_2.weight": torch.ones(d), p + "ln_2.bias": torch.zeros(d),
                   p + "attn.c_attn.weight": torch.randn(3 * d, d, generator=g) * 0.02,
                   p + "attn.c_attn.bias": torch.zeros(3 * d),
                   p + "attn.c_proj.weight": torch.randn(d, d, generator=g) * 0.02, p + "attn.c_proj.bias": torch.zeros(d),
                   p + "mlp.c_fc.weight": torch.randn(4 * d, d, generator=g) * 0.02, p + "mlp.c_fc.bias": torch.zeros(4 * d),
                   p + "mlp.c_proj.weight": torch.randn(d, 4 * d, generator=g) * 0.02, p + "mlp.c_proj.bias": torch.zeros(d)})
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    params = [v for k, v in sd.items() if k != "lm_head.weight"]
    optimizer = {"state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(v), "exp_avg_sq": torch.zeros_like(v)}
                           for i, v in enumerate(params)},
                 "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": list(range(len(params)))}]}
    args = dict(n_layer=layers, n_head=heads, n_embd=d, block_size=block, bias=True, vocab_size=vocab, dropout=0.0)
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}, "optimizer": optimizer, "model_args": args,
                "iter_num": 1000, "best_val_loss": torch.tensor(3.0), "config": {"dataset": "openwebtext"}}, path)


def run(mode: str, path: Path, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(threads)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        t0 = time.perf_counter()
        write_checkpoint(path, args.layers, args.width, args.heads, args.vocab, args.block)
        size = path.stat().st_size / 2**30
        print(f"checkpoint: {args.layers} layers, d_model {args.width}, {args.heads} heads, vocab {args.vocab}, "
              f"block {args.block}: {size:.2f} GiB on disk (weights + AdamW state), written in {time.perf_counter() - t0:.1f} s")
        rows = {}
        modes = ("reference", "lensworks", "lensworks-raw")
        for _ in range(args.repeats):  # alternate, so a busy moment hurts every mode alike
            for mode in modes:
                rows.setdefault(mode, []).append(run(mode, path, args.threads))
        print(f"\n{'way of loading':<58} {'median s':>9} {'peak RSS GiB':>13} {'after imports':>14}")
        names = {"reference": "torch.load + GPT.load_state_dict (nanoGPT's sample.py)",
                 "lensworks": "lensworks.load_model (fold LN + centre, the default)",
                 "lensworks-raw": "lensworks.load_model (no processing)"}
        for mode in modes:
            r = rows[mode]
            print(f"{names[mode]:<58} {statistics.median(x['seconds'] for x in r):>9.2f} "
                  f"{max(x['peak_gib'] for x in r):>13.2f} {statistics.median(x['after_imports_gib'] for x in r):>14.2f}")
        print(f"parameters: reference {rows['reference'][0]['params']:,}, lensworks {rows['lensworks'][0]['params']:,}")


if __name__ == "__main__":
    main()
