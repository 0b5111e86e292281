"""A model split over several devices: load it with ``device_map`` and run the analyses on it.

Run on a machine with two (or more) GPUs, under TransformerLens 4 (``.venv-tl4``):

    .venv-tl4/bin/python benchmarks/bench_device_map.py --shape 8b --gpus 2

The checkpoint is a random bf16 Llama of the chosen shape ("8b": d_model 4096, 32 layers, 32
heads, d_mlp 14336, vocabulary 128,256: 8.8 B parameters, 17.6 GB; written once into ``--cache``
from random tensors, shard by shard, without building the model). It is loaded with
``lensworks.load_model(dir, dtype=torch.bfloat16, device_map="auto", max_memory=...)`` with a
budget per GPU small enough that no GPU holds it all, so the layers are spread over ``--gpus``
devices. Printed, ours beside the reference in the same run:

- load time and the memory each device holds after loading (lensworks vs Hugging Face's own
  ``AutoModelForCausalLM.from_pretrained`` with the same device map);
- one forward pass of a [4, 256] batch (the bridge vs Hugging Face's model);
- the analyses on the split model (residual statistics, logit lens, head scores, activation
  patching of the residual stream, direct logit attribution): seconds each, or the error. An
  error here is a lensworks bug: every analysis must work when layers sit on different devices.

Dry run without a GPU (what CI-less machines can check; the numbers mean nothing):

    .venv-tl4/bin/python benchmarks/bench_device_map.py --shape tiny --gpus 0
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    "8b": dict(d_model=4096, n_heads=32, d_mlp=14336, vocab=128256, layers=32),
    "1b": dict(d_model=2048, n_heads=16, d_mlp=8192, vocab=128256, layers=16),
    "tiny": dict(d_model=256, n_heads=4, d_mlp=512, vocab=4096, layers=4),
}


def write(path: Path, shape: dict) -> None:
    import bench_load_memory as blm

    blm.SHAPE.update({k: shape[k] for k in ("d_model", "n_heads", "d_mlp", "vocab")})
    if not (path / "config.json").is_file():
        blm.write_checkpoint(path, shape["layers"], shard_bytes=2 * 1024**3)


def memory_by_device() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": round(torch.cuda.memory_allocated(i) / 2**30, 2) for i in range(torch.cuda.device_count())}


def timed(fn):
    import torch

    t0 = time.perf_counter()
    try:
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return round(time.perf_counter() - t0, 3), None, out
    except Exception as exc:  # recorded: the point of the run is to see which analyses fail
        return round(time.perf_counter() - t0, 3), f"{type(exc).__name__}: {str(exc)[:300]}", None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--gpus", type=int, default=2, help="GPUs to spread over (0: the CPU dry run)")
    ap.add_argument("--cache", default="/tmp/lensworks-bench-device-map")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import torch
    from lensworks import load_model
    from lensworks.model import TL_MAJOR, model_facts

    if TL_MAJOR < 4:
        raise SystemExit("device_map needs TransformerLens 4: run with .venv-tl4/bin/python")
    shape = SHAPES[args.shape]
    path = Path(args.cache) / args.shape
    t0 = time.perf_counter()
    write(path, shape)
    files_gb = sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e9
    print(f"checkpoint {path} ({files_gb:.1f} GB, written or found in {time.perf_counter() - t0:.0f} s)")
    if args.gpus > 0:
        have = torch.cuda.device_count()
        if have < args.gpus:
            raise SystemExit(f"--gpus {args.gpus}: this machine has {have} CUDA devices")
        per_gpu = f"{int(files_gb / args.gpus * 1.15 + 2)}GB"  # a share each, so that no GPU takes it all
        max_memory = {i: per_gpu for i in range(args.gpus)}
    else:
        max_memory = {"cpu": f"{int(files_gb * 2 + 2)}GB"}
    out: dict = {"machine": platform.platform(), "shape": args.shape, "files_gb": round(files_gb, 2),
                 "max_memory": {str(k): v for k, v in max_memory.items()}}

    secs, err, model = timed(lambda: load_model(path, dtype=torch.bfloat16, device_map="auto", max_memory=max_memory))
    out["lensworks_load_s"], out["lensworks_load_error"] = secs, err
    if model is None:
        print(json.dumps(out, indent=1))
        raise SystemExit(f"load failed: {err}")
    facts = model_facts(model)
    out["devices"], out["lensworks_memory_gib"] = list(facts.devices), memory_by_device()
    toks = torch.randint(10, 30, (4, 256), generator=torch.Generator().manual_seed(0)).to(facts.device)
    with torch.no_grad():
        model(toks)  # warm-up
        out["lensworks_forward_s"] = timed(lambda: model(toks))[0]

    from lensworks.causal import activation_patching, direct_logit_attribution
    from lensworks.circuits import head_scores
    from lensworks.geometry import logit_lens, residual_stats

    texts = ["a b c d e f g h", "h g f e d c b a", "a a b b c c d d", "e f g h e f g h"]
    clean, corrupted = toks[:2, :32], toks[2:, :32]
    analyses = {
        "residual_stats": lambda: residual_stats(model, {"x": texts[:2], "y": texts[2:]}, progress=False),
        "logit_lens": lambda: logit_lens(model, texts),
        "head_scores(induction)": lambda: head_scores(model, "induction", seq_len=32, n_seqs=8),
        "activation_patching(resid_pre)": lambda: activation_patching(model, clean, corrupted, "logit_diff",
                                                                      answer_tokens=11, wrong_tokens=12,
                                                                      what="resid_pre"),
        "direct_logit_attribution": lambda: direct_logit_attribution(model, clean, torch.tensor([11, 11])),
    }
    out["analyses"] = {}
    for name, fn in analyses.items():
        secs, err, _ = timed(fn)
        out["analyses"][name] = {"seconds": secs, "error": err}
        print(f"{name:34s} {secs:8.2f} s  {err or 'ok'}")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    from transformers import AutoModelForCausalLM  # the reference: Hugging Face's own split

    secs, err, hf = timed(lambda: AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, device_map="auto", max_memory=max_memory, local_files_only=True))
    out["hf_load_s"], out["hf_load_error"], out["hf_memory_gib"] = secs, err, memory_by_device()
    if hf is not None:
        with torch.no_grad():
            hf(toks)
            out["hf_forward_s"] = timed(lambda: hf(toks))[0]
    print(f"load    lensworks {out['lensworks_load_s']:.1f} s   Hugging Face {out['hf_load_s']:.1f} s")
    print(f"forward lensworks {out['lensworks_forward_s']:.3f} s   Hugging Face {out.get('hf_forward_s', float('nan')):.3f} s")
    print(f"memory  lensworks {out['lensworks_memory_gib']}   Hugging Face {out['hf_memory_gib']}")
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
