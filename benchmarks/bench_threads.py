"""Threads on a busy machine: ``probe_inputs`` and ``lensworks report`` with 1 thread, 2 threads and
lensworks's own choice (``auto``), on an idle machine and while other processes keep every core busy.

Run:  .venv/bin/python benchmarks/bench_threads.py [--repeats 3] [--load N] [--quick]

The load is N busy-loop processes (default: one per core), started before and stopped after each
loaded measurement. Each measurement runs in a fresh process (torch's thread pool is set at start),
median of ``--repeats``. The target: a busy machine costs at most ~1.5x an idle one with ``auto``.
``--quick`` uses fewer windows (a dry run of the script, not numbers to quote).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = """
import time, sys, torch
from lensworks import zoo
from lensworks.model import text_windows
from lensworks.probes import probe_inputs
threads = sys.argv[1]
if threads != "auto":
    torch.set_num_threads(int(threads))
    import os; os.environ["LENSWORKS_THREADS"] = threads
char = zoo.load("char-mlp")
w = text_windows(char, zoo.corpus(200_000), max_tokens=int(sys.argv[2]))
t = time.perf_counter()
probe_inputs(char, w[:24], progress=False)
print(time.perf_counter() - t)
"""


def _spin() -> None:  # pragma: no cover - a load generator
    while True:
        pass


def run_probe(threads: str, tokens: int) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, threads, str(tokens)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_report(threads: str, out_dir: str) -> float:
    argv = [sys.executable, "-m", "lensworks.cli", "report", "--no-progress", "-o", os.path.join(out_dir, "r.html")]
    if threads != "auto":
        argv += ["--threads", threads]
    t = time.perf_counter()
    subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-report", action="store_true")
    args = ap.parse_args()
    tokens = 2_000 if args.quick else 20_000
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(f"load: {args.load} busy-loop processes; median of {args.repeats} fresh processes\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [("probe_inputs(char-mlp, 24 windows)", lambda th: run_probe(th, tokens))]
        if not args.skip_report:
            tasks.append(("lensworks report (defaults)", lambda th: run_report(th, tmp)))
        for name, fn in tasks:
            for threads in ("1", "2", "auto"):
                idle = statistics.median(fn(threads) for _ in range(args.repeats))
                spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.load)]
                for p in spinners:
                    p.start()
                time.sleep(1.0)
                try:
                    busy = statistics.median(fn(threads) for _ in range(args.repeats))
                finally:
                    for p in spinners:
                        p.terminate()
                    for p in spinners:
                        p.join()
                rows.append((name, threads, idle, busy))
                print(f"{name:38s} threads={threads:4s} idle {idle:7.2f} s   busy {busy:7.2f} s   ratio {busy / idle:5.2f}",
                      flush=True)
    best_idle = {n: min(r[2] for r in rows if r[0] == n) for n, _ in tasks}
    print("\n| step | threads | idle (s) | busy (s) | busy / best idle |")
    print("| --- | --- | --- | --- | --- |")
    for name, threads, idle, busy in rows:
        print(f"| {name} | {threads} | {idle:.2f} | {busy:.2f} | {busy / best_idle[name]:.2f} |")


if __name__ == "__main__":
    main()
