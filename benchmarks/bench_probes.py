"""Probe benchmark: lensworks closed-form probes vs scikit-learn LogisticRegression, layer by layer.

Both fit one probe per (layer, stream, offset) of the demo ``char-mlp`` model on the same
stdlib text windows with the same train/held-out split; printed side by side: wall time and
held-out top-1 accuracy. The scikit-learn time includes extracting the features with
``run_with_cache`` (one forward pass) and standardising them; the lensworks time is the whole
``probe_inputs`` call (its own forward passes included), controls off, for both closed-form
methods: ``ridge`` (least squares onto one-hot targets), ``lda`` (same moments, linear
discriminant rule) and ``auto`` (per probe, the better of the two on a validation slice).

Usage: python benchmarks/bench_probes.py [--model char-mlp] [--windows 200] [--offsets 0,-1]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from lensworks import zoo
from lensworks.model import hook_name, load_model
from lensworks.probes import probe_inputs
from lensworks.model import text_windows
from lensworks.model import bos_token_id
from lensworks.probes.linear import DEFAULT_STREAMS, _plan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="char-mlp", help="zoo name or checkpoint path (default char-mlp)")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--offsets", default="0,-1")
    parser.add_argument("--max-iter", type=int, default=200, help="scikit-learn max_iter")
    parser.add_argument("--logistic-iter", type=int, default=30, help="L-BFGS iterations for lensworks method=\"logistic\" (warm-started from LDA)")
    args = parser.parse_args()
    offsets = tuple(int(o) for o in args.offsets.split(","))

    model = zoo.load(args.model) if args.model in zoo.names() else load_model(args.model)
    cfg = model.cfg
    text = zoo.corpus(args.windows * cfg.n_ctx * 2)
    windows = text_windows(model, text, max_tokens=args.windows * (cfg.n_ctx - 1))
    print(f"{args.model}: {cfg.n_layers} layers, d_model {cfg.d_model}, d_vocab {cfg.d_vocab}; "
          f"{windows.shape[0]} windows x {windows.shape[1]} tokens; offsets {offsets}; "
          f"torch threads {torch.get_num_threads()}")

    # ---- lensworks ridge (warm-up on a tiny slice first, so import/JIT costs are not timed)
    probe_inputs(model, windows[:4], offsets=offsets, controls=False, progress=False)
    t0 = time.perf_counter()
    res = probe_inputs(model, windows, offsets=offsets, controls=False, progress=False)
    t_ridge = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_lda = probe_inputs(model, windows, offsets=offsets, method="lda", controls=False, progress=False)
    t_lda = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_auto = probe_inputs(model, windows, offsets=offsets, method="auto", controls=False, progress=False)
    t_auto = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_log = probe_inputs(model, windows, offsets=offsets, method="logistic", max_iter=args.logistic_iter,
                           controls=False, progress=False)
    t_log = time.perf_counter() - t0

    # ---- scikit-learn, same split, layer by layer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    lengths = torch.full((windows.shape[0],), windows.shape[1])
    plan = _plan(windows, lengths, offsets, bos_token_id(model), 0.2, 0)
    t0 = time.perf_counter()
    names = {hook_name(s, l) for l in range(cfg.n_layers) for s in DEFAULT_STREAMS}
    with torch.inference_mode():
        _, cache = model.run_with_cache(windows, names_filter=lambda n: n in names)
    t_features = time.perf_counter() - t0
    rows = []
    t_fit = 0.0
    for layer in range(cfg.n_layers):
        for j, stream in enumerate(DEFAULT_STREAMS):
            acts = cache[hook_name(stream, layer)]
            for k, off in enumerate(offsets):
                tr, te = plan.train[k], plan.test[k]
                t1 = time.perf_counter()
                scaler = StandardScaler().fit(acts[tr].numpy())
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf = LogisticRegression(max_iter=args.max_iter).fit(
                        scaler.transform(acts[tr].numpy()), plan.target[k][tr].numpy()
                    )
                acc = float(clf.score(scaler.transform(acts[te].numpy()), plan.target[k][te].numpy()))
                t_fit += time.perf_counter() - t1
                rows.append(
                    (layer, stream, off, float(res.accuracy[layer, j, k]), float(res_lda.accuracy[layer, j, k]),
                     float(res_auto.accuracy[layer, j, k]), float(res_log.accuracy[layer, j, k]), acc)
                )
    t_sk = t_features + t_fit

    print(f"\n{'layer':>5} {'stream':>10} {'offset':>6} {'ridge':>8} {'lda':>8} {'auto':>8} {'logistic':>8} {'sklearn':>8}  (held-out accuracy)")
    for layer, stream, off, a, b, c, d, e in rows:
        print(f"{layer:>5} {stream:>10} {off:>6} {a:>8.4f} {b:>8.4f} {c:>8.4f} {d:>8.4f} {e:>8.4f}")
    print(f"\nprobes fitted: {len(rows)} (train rows per probe {res.n_train}, held-out {res.n_test})")
    print(f"scikit-learn LogisticRegression: {t_sk:8.2f} s  (features {t_features:.2f} s + fits {t_fit:.2f} s)")
    for name, t, col in (("ridge", t_ridge, 3), ("lda", t_lda, 4), ("auto", t_auto, 5), ("logistic", t_log, 6)):
        diffs = np.array([100 * (r[col] - r[7]) for r in rows])
        print(f"lensworks {name:<8} (probe_inputs): {t:8.2f} s  speed-up {t_sk / t:5.1f}x; accuracy minus sklearn "
              f"(points): mean {diffs.mean():+.2f}, worst {diffs.min():+.2f}, best {diffs.max():+.2f}")


if __name__ == "__main__":
    main()
