"""NeighbourApproximation.fit's forward passes: each distinct window prefix once (the prefix tree)
against every window in full, in the same run, alternating.

For each model: the unique 10-character windows of ``--chars`` characters of the zoo corpus, how
many token positions each way runs, the seconds of ``embed_windows`` both ways (``--repeats``
times, alternating, the best of each), and the largest difference of the stored unit outputs.

Run:  python benchmarks/bench_neighbour_fit.py [--models char-mlp,d384] [--chars 100000]
          [--batch-size 2048] [--repeats 2] [--device cpu] [--threads N]

``d384`` is the 6-layer d_model-384 65-symbol model of ``bench_probes.py`` (trained on first
use, about 10 minutes on this CPU, then cached in /tmp).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lensworks import zoo  # noqa: E402
from lensworks.geometry._neighbour_index import corpus_tokens, window_counts  # noqa: E402
from lensworks.geometry._window_forward import embed_windows  # noqa: E402
from lensworks.model import bos_token_id, uses_bos  # noqa: E402


def load(name: str, device: str):
    """(model, corpus token ids) for a benchmark model name."""
    if name == "d384":
        from bench_probes import _d384_tokens, _d384_vocab, d384_model

        model = d384_model(600, "/tmp/lensworks-bench-d384-c65.pt").to(device)
        vocab = _d384_vocab(zoo.corpus(1_000_000))
        return model, lambda text: _d384_tokens(text, vocab)
    model = zoo.load(name).to(device)
    return model, lambda text: corpus_tokens(model, text)


def positions(windows: torch.Tensor, bos: bool, batch: int) -> tuple[int, int]:
    """(positions run in full, positions run as prefix trees of ``batch`` windows)."""
    n, w = windows.shape
    full = n * (w + int(bos))
    tree = 0
    for start in range(0, n, batch):
        chunk = windows[start : start + batch].long()
        new = torch.zeros(chunk.shape[0], dtype=torch.bool)
        new[0] = True
        tree += int(bos)  # one BOS node per tree
        for k in range(w):
            new[1:] |= chunk[1:, k] != chunk[:-1, k]
            tree += int(new.sum())
    return full, tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="char-mlp,d384")
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = zoo.corpus(args.chars)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model, encode = load(name, args.device)
        toks = encode(text)
        windows = window_counts(toks, args.window, model.cfg.d_vocab)[0]
        bos = uses_bos(model)
        names = [f"blocks.{b}.hook_mlp_out" for b in range(model.cfg.n_layers)]
        full_pos, tree_pos = positions(windows, bos, args.batch_size)
        times: dict[bool, list[float]] = {False: [], True: []}
        out = {}
        for _ in range(args.repeats):
            for shared in (False, True):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out[shared], _ = embed_windows(model, windows, names, bos=bos, dtype=torch.float32,
                                               batch_size=args.batch_size, progress=False, shared_prefixes=shared)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[shared].append(time.perf_counter() - t)
        diff = float((out[True] - out[False]).abs().max())
        row = (name, model.cfg.d_model, windows.shape[0], full_pos, tree_pos, min(times[False]), min(times[True]), diff)
        rows.append(row)
        print(f"{name}: {windows.shape[0]:,} windows, positions {full_pos:,} full / {tree_pos:,} tree "
              f"({full_pos / tree_pos:.2f}x), full {min(times[False]):.2f} s, tree {min(times[True]):.2f} s "
              f"({min(times[False]) / min(times[True]):.2f}x), max |diff| {diff:.1e}  (BOS {bos_token_id(model) if bos else '-'})",
              flush=True)
    print(f"\n{args.chars:,} characters, window {args.window}, batch {args.batch_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print("| model | d_model | windows | positions full | positions tree | full s | tree s | speed-up | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, d, n, fp, tp, tf, tt, diff in rows:
        print(f"| {name} | {d} | {n:,} | {fp:,} | {tp:,} ({fp / tp:.2f}x) | {tf:.2f} | {tt:.2f} | {tf / tt:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
