"""Start-up time of the ``lensworks`` command: ``--version``, ``--help`` and argument errors
must answer without importing torch or TransformerLens (they are imported when a command runs).

Run:  .venv/bin/python benchmarks/bench_cli_startup.py [--repeats 5]

Each command runs ``--repeats`` times in a fresh process; we print the median wall time beside
``python -c "import torch"`` and ``python -c "import transformer_lens"`` measured in the same
run, and whether torch was imported (``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "lensworks --version": ["-m", "lensworks.cli", "--version"],
    "lensworks --help": ["-m", "lensworks.cli", "--help"],
    "lensworks report --help": ["-m", "lensworks.cli", "report", "--help"],
    "lensworks heads --top x (argument error)": ["-m", "lensworks.cli", "heads", "--top", "x"],
    "lensworks probes --max-tokens -10 (argument error)": ["-m", "lensworks.cli", "probes", "--max-tokens", "-10"],
    'python -c "import torch"': ["-c", "import torch"],
    'python -c "import transformer_lens"': ["-c", "import transformer_lens"],
}


def timed(args: list[str]) -> tuple[float, bool]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    imported_torch = any(line.split("|")[-1].strip() == "torch" for line in out.stderr.splitlines() if "|" in line)
    return seconds, imported_torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved, so a busy moment hurts every row alike
        for name, argv in COMMANDS.items():
            rows[name].append(timed(argv))
    print(f"\n{'command':<52} {'median s':>9} {'imports torch':>14}")
    for name, runs in rows.items():
        print(f"{name:<52} {statistics.median(s for s, _ in runs):>9.3f} {'yes' if any(t for _, t in runs) else 'no':>14}")


if __name__ == "__main__":
    main()
