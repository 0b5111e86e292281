"""Data-parallel speed-up: one process against N processes under torchrun, same data, same numbers.

Run:  .venv/bin/python benchmarks/bench_distributed.py [--nproc 2] [--windows 256] [--threads 1]

The parent times each analysis in one process (``--threads`` torch threads), then launches
``torchrun --nproc-per-node N`` on this same file (``--worker``); every rank times the same
calls and rank 0 reports. Both runs use the bundled ``char-mlp`` and the held-out corpus, and
the script checks that the distributed numbers equal the single-process ones. On the CPU,
give each process its own cores (``--threads 1`` with N processes on N cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch


def workload(n_windows: int):
    """Name -> callable, on char-mlp and ``n_windows`` windows of 128 characters."""
    from lensworks import geometry, zoo
    from lensworks.model import text_windows

    warnings.simplefilter("ignore")
    model = zoo.load("char-mlp")
    held = zoo.corpus(None)[1_000_000:]
    w = text_windows(model, held, width=128)[:n_windows]
    half = n_windows // 2
    return {
        "residual_stats": lambda: geometry.residual_stats(model, {"a": w[:half], "b": w[half:]}, progress=False).var["a"],
        "block_ablation": lambda: geometry.block_ablation(model, w, progress=False).drop_mlp_hellinger,
        "logit_lens": lambda: geometry.logit_lens(model, w, progress=False).kl,
    }


def timed(fns, repeats: int = 2):
    out = {}
    for name, fn in fns.items():
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = (best, value)
    return out


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.distributed.init_process_group("gloo")
    res = timed(workload(args.windows))
    if torch.distributed.get_rank() == 0:
        torch.save({k: (t, v) for k, (t, v) in res.items()}, args.out)
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--windows", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="out/bench_distributed.pt", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    alone = timed(workload(args.windows))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc), "--master-port", "29633",
           __file__, "--worker", "--windows", str(args.windows), "--threads", str(args.threads), "--out", args.out]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    launch = time.perf_counter() - t0
    dist = torch.load(args.out, weights_only=False)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"char-mlp, {args.windows} windows x 128 tokens; {args.threads} torch thread(s) per process; "
          f"{os.cpu_count()} CPUs; load average {load:.1f}; torchrun wall time {launch:.1f} s (incl. start-up)")
    print(f"{'analysis':16s} {'1 process':>10s} {str(args.nproc) + ' processes':>12s} {'speed-up':>9s}  same numbers")
    rows = {}
    for name, (t1, v1) in alone.items():
        tn, vn = dist[name]
        same = bool(torch.allclose(v1.float(), vn.float(), rtol=1e-5, atol=1e-6))
        rows[name] = {"one": t1, "many": tn, "speedup": t1 / tn, "same": same}
        print(f"{name:16s} {t1:9.2f}s {tn:11.2f}s {t1 / tn:8.2f}x  {same}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
