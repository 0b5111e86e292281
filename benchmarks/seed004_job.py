"""Seed 004's whole job, timed (issue 12): index every unique 10-character window of about 1.1 M
characters with a trained 6-layer, d_model-384 character model, then the weighted approximation
for 20,000 prompts, warm, and how far each faster variant moves the per-prompt Hellinger distances.

The model is ``d384-c65`` from ``benchmarks/bench_probes.py`` (6 layers, d_model 384, 6 heads of
64, d_mlp 1536, n_ctx 256, LayerNorm, GELU, 65 symbols: the 64 most frequent characters of the
text and "other"), trained here for ``--train-steps`` steps on the zoo corpus (random weights
would give unrealistic similarity counts), or loaded from ``--cache`` when trained before. The
text is ``zoo.corpus`` (Python standard-library source; TinyShakespeare is not on this machine).

Variants (after one untimed run of ``exact``, so kernels and allocator are warm, each is timed once):

  exact      fp32 forward passes, fp32 search (``search_dtype=None``), lensworks's default
             forward (full windows on a GPU, the prefix tree on the CPU): the reference
  prefix-tree   as ``exact`` with ``fit(shared_prefixes=True)``: each distinct window prefix run
             once, keys and values from the cache
  full-windows  as ``exact`` with ``fit(shared_prefixes=False)``: every window run in full
  auto       fp32 forward passes, ``search_dtype="auto"``: bf16 cosines on a GPU with an exact
             fp32 re-check of every cosine within 2^-6 of its threshold (exact fp32 on the CPU)
  tf32       as ``auto``, with TF32 matmuls in the forward passes (a global flag this script sets
             and restores; lensworks itself never changes it)
  bf16-fwd   as ``auto``, with the model's weights in bf16 for the forward passes

For every variant: fit (index) seconds, evaluate seconds, total, the largest per-prompt
|Hellinger - exact| and how many prompts moved by more than 1e-4 (the issue's tolerance).

Run:  python benchmarks/seed004_job.py [--device cuda] [--train-steps 600] [--tiny]
      [--variants exact,auto,tf32,bf16-fwd] [--json out/seed004.json]
--tiny: 5,000 characters, 100 prompts, 20 training steps (a CPU dry run of the script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_probes import _d384_tokens, _d384_vocab, d384_model  # noqa: E402

from lensworks import zoo  # noqa: E402
from lensworks.geometry import NeighbourApproximation  # noqa: E402

VARIANTS = ("exact", "auto", "tf32", "bf16-fwd", "prefix-tree", "full-windows")  # the forward variants last: a slow one cannot cut the others
#: Per-block thresholds and weights: the later blocks carry the prediction (seed 004's finding).
THRESHOLDS = [0.6, 0.7, 0.8, 0.85, 0.9, 0.93]
WEIGHTS = [0.01, 0.01, 0.1, 1.0, 10.0, 10.0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_job(model, corpus, prompts, *, search_dtype, device,
            shared_prefixes: bool | None = None) -> tuple[float, float, torch.Tensor, int]:
    """Fit and evaluate once; return (fit seconds, evaluate seconds, per-prompt Hellinger, windows)."""
    sync(device)
    t0 = time.perf_counter()
    approx = NeighbourApproximation(window=10, thresholds=THRESHOLDS, weights=WEIGHTS, search_dtype=search_dtype)
    approx.fit(model, corpus, batch_size=4096, progress=False, shared_prefixes=shared_prefixes)
    sync(device)
    t1 = time.perf_counter()
    ev = approx.evaluate(prompts, batch_size=4096, progress=False)
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, ev.hellinger.detach().cpu().double(), approx.n_windows


def job_meta(args: argparse.Namespace) -> dict:
    return {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "torch": torch.__version__, "characters": args.bytes, "train_steps": args.train_steps, "tiny": args.tiny}


def write_json(path: str | None, args: argparse.Namespace, rows: list[dict]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"meta": job_meta(args), "rows": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bytes", type=int, default=1_100_000, help="characters indexed (default 1.1 M)")
    ap.add_argument("--prompts", type=int, default=20_000)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--cache", default="/tmp/lensworks-bench-d384-c65.pt")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tiny", action="store_true", help="5,000 characters, 100 prompts, 20 training steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.bytes, args.prompts, args.train_steps = 5_000, 100, 20
        args.cache = args.cache.replace(".pt", "-tiny.pt")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or "exact" not in variants:
        raise SystemExit(f"--variants: choose from {','.join(VARIANTS)}, including exact (the reference); got {bad}")

    t = time.perf_counter()
    model = d384_model(args.train_steps, args.cache, device=args.device).to(args.device)
    print(f"model ready in {time.perf_counter() - t:.1f} s ({args.train_steps} training steps)", flush=True)
    text = zoo.corpus(args.bytes + 200_000)
    vocab = _d384_vocab(zoo.corpus(1_000_000))  # the vocabulary the model was trained with
    corpus = _d384_tokens(text[: args.bytes], vocab)
    held_out = _d384_tokens(text[args.bytes:], vocab)
    gen = torch.Generator().manual_seed(0)
    starts = torch.randint(0, held_out.numel() - 10, (args.prompts,), generator=gen)
    prompts = torch.stack([held_out[s : s + 10] for s in starts.tolist()])

    t = time.perf_counter()
    run_job(model, corpus, prompts, search_dtype=None, device=args.device)  # warm-up, untimed
    print(f"warm-up run: {time.perf_counter() - t:.1f} s", flush=True)
    rows, reference = [], None
    for variant in ["exact"] + [v for v in variants if v != "exact"]:
        search = None if variant in ("exact", "prefix-tree", "full-windows") else "auto"
        job_model = model
        tf32_before = torch.backends.cuda.matmul.allow_tf32
        if variant == "bf16-fwd":
            job_model = d384_model(args.train_steps, args.cache).to(args.device).to(torch.bfloat16)
        try:
            torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
            fit_s, eval_s, hell, n_windows = run_job(job_model, corpus, prompts, search_dtype=search, device=args.device,
                                                     shared_prefixes={"prefix-tree": True, "full-windows": False}.get(variant))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32_before
        if variant == "exact":
            reference = hell
        moved = (hell - reference).abs()
        row = {"variant": variant, "fit_s": round(fit_s, 3), "evaluate_s": round(eval_s, 3),
               "total_s": round(fit_s + eval_s, 3), "windows": n_windows, "prompts": int(hell.numel()),
               "mean_hellinger": round(float(hell.mean()), 4), "max_abs_diff": float(moved.max()),
               "moved_over_1e-4": int((moved > 1e-4).sum())}
        rows.append(row)
        write_json(args.json, args, rows)  # after every variant: a timeout keeps the rows done
        print(f"{variant:12s} fit {fit_s:7.2f} s  evaluate {eval_s:7.2f} s  total {fit_s + eval_s:7.2f} s  "
              f"mean H {row['mean_hellinger']:.4f}  max |dH| {row['max_abs_diff']:.2e}  "
              f"moved > 1e-4: {row['moved_over_1e-4']}", flush=True)
    meta = job_meta(args)
    print(f"\nseed 004 job: {rows[0]['windows']:,} unique windows of {args.bytes:,} characters, "
          f"{args.prompts:,} prompts, device {meta['gpu'] or args.device}")
    print(f"{'variant':12s} | {'fit s':>7s} | {'evaluate s':>10s} | {'total s':>7s} | {'max |dH|':>9s} | moved > 1e-4")
    for r in rows:
        print(f"{r['variant']:12s} | {r['fit_s']:7.2f} | {r['evaluate_s']:10.2f} | {r['total_s']:7.2f} | "
              f"{r['max_abs_diff']:9.2e} | {r['moved_over_1e-4']}")
    write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
