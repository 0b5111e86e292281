"""Reproduce the seed experiments on the bundled demo models and print every number quoted in
docs/seed-experiments.md (as Markdown tables). Offline; a few minutes on 2 CPU cores.

Run from the repository root:  .venv/bin/python docs/examples/seed_experiments.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from lensworks import zoo
from lensworks.circuits import find_induction_heads
from lensworks.geometry import NeighbourApproximation, block_ablation, block_decomposition, residual_stats
from lensworks.probes import compare_to_embedding, probe_inputs
from lensworks.model import text_windows
from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller data (for a smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    scale = 4 if args.quick else 1
    char = zoo.load("char-mlp")
    held_out = zoo.corpus(1_200_000)[1_000_000:]
    windows = text_windows(char, held_out, max_tokens=400 * 127)
    print(f"char-mlp: {char.cfg.n_layers} layers, d_model {char.cfg.d_model}; held-out windows {tuple(windows.shape)}\n")

    # Seed 000: cosine of the class means and variance growth, at the last token.
    t = time.perf_counter()
    stats = residual_stats(char, {"python": list(BUILTIN_POSITIVE), "english": list(BUILTIN_NEGATIVE)})
    print(f"## seed 000: residual statistics ({time.perf_counter() - t:.1f} s)\n")
    cos = stats.cosine("python", "english")
    rows = []
    for layer in range(stats.n_layers):
        row = [layer]
        for s in stats.streams:
            row.append(float(cos[s][layer]))
        for d in ("python", "english"):
            vm, vx = stats.var_mean(d), stats.var_max(d)
            for si, _ in enumerate(stats.streams):
                row.append(float(vm[si][layer]))
            row.append(float(vx[-1][layer]))
        rows.append(row)
    head = ["layer"] + [f"cos {s}" for s in stats.streams]
    for d in ("python", "english"):
        head += [f"{d} mean var {s}" for s in stats.streams] + [f"{d} max var {stats.streams[-1]}"]
    table(head, rows)

    # Seed 004: attention vs FFN ablation, Hellinger distance of the final next-token distribution.
    prompts = windows[: 128 // scale]
    t = time.perf_counter()
    ab = block_ablation(char, prompts)
    print(f"## seed 004: block ablation on {len(prompts)} held-out windows, last position ({time.perf_counter() - t:.1f} s)\n")
    frame = ab.to_frame()
    print(frame.round(3).to_string(index=False))
    print()
    dec = block_decomposition(char, prompts)
    c = dec.ffn_only_cosine
    print(f"cos(final residual, embed + MLP outputs only): mean {float(c.mean()):.3f}, std {float(c.std()):.3f}\n")

    # Seed 004: the FFN-neighbour approximation.
    n_chars = 200_000 // scale
    corpus = zoo.corpus(n_chars)
    t = time.perf_counter()
    approx = NeighbourApproximation(window=10).fit(char, corpus)
    fit_s = time.perf_counter() - t
    rng = random.Random(0)
    starts = [rng.randrange(0, len(held_out) - 10) for _ in range(400 // scale)]
    queries = [held_out[s : s + 10] for s in starts]
    half = len(queries) // 2
    t = time.perf_counter()
    tuned = approx.tune(queries[:half])
    ev = approx.evaluate(queries[half:], tuned.thresholds, tuned.weights)
    base = approx.evaluate(queries[half:], 0.9)
    print(f"## seed 004: FFN neighbours: {approx.n_windows:,} unique 10-char windows of the first {n_chars:,} corpus "
          f"characters (fit {fit_s:.1f} s, tune+evaluate {time.perf_counter() - t:.1f} s)\n")
    table(["setting", "prompts", "mean Hellinger", "std", "unmatched"],
          [["threshold 0.9, equal weights", len(queries) - half, base.mean, base.std, base.n_unmatched],
           ["tuned on the other half", len(queries) - half, ev.mean, ev.std, ev.n_unmatched]])
    table(["block", "threshold", "weight"], [[b, th, w] for b, th, w in zip(tuned.blocks, tuned.thresholds, tuned.weights)])

    # Seed 002: input reconstruction by depth.
    t = time.perf_counter()
    pr = probe_inputs(char, windows[: 240 // scale], offsets=(0, -1, -2))
    print(f"## seed 002: input-token probes, ridge, held-out accuracy ({time.perf_counter() - t:.1f} s)\n")
    df = pr.to_frame()
    print(df[["layer", "stream", "offset", "accuracy", "chance", "control_random_model", "control_shuffled"]]
          .round(3).to_string(index=False))
    print()
    rows = []
    for layer, stream, offset in ((pr.layers[0], "resid_pre", 0), (pr.layers[-1], "resid_post", 0),
                                  (pr.layers[-1], "resid_post", -1)):
        cmp = compare_to_embedding(char, pr.weights(layer, stream, offset), tokens=pr.classes, seed=0)
        for stat, v in cmp.summary().items():
            rows.append([f"L{layer} {stream} offset {offset}", stat, v["value"], f"{v['null_lo']:.3f}..{v['null_hi']:.3f}",
                         v["verdict"]])
    print("probe weights against the embedding (null: random matrices with the same singular values, 95%)\n")
    table(["probe", "statistic", "value", "null interval", "verdict"], rows)

    # Seed 003: induction heads.
    for name in ("induction-2l", "char-mlp"):
        model = zoo.load(name)
        t = time.perf_counter()
        rep = find_induction_heads(model)
        print(f"## seed 003: {name} ({time.perf_counter() - t:.1f} s)\n")
        print(rep.summary())
        print()
        ev_rows = [[e.label, e.induction, rep.previous.scores[e.layer, e.head].item(), e.copying,
                    e.previous_partner or "-", e.k_composition, e.k_composition_z, "yes" if e.is_induction else "no"]
                   for e in rep.evidence[:6]]
        table(["head", "induction", "previous-token", "copying", "partner", "K-comp", "z", "verdict"], ev_rows)


if __name__ == "__main__":
    main()
