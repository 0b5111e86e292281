"""Probe benchmark: lensworks probes vs scikit-learn LogisticRegression, layer by layer, in one run.

Both fit one probe per (layer, stream, offset) on the same text windows with the same
train/held-out split; printed side by side: wall time and held-out top-1 accuracy. The
scikit-learn time includes extracting the features with ``run_with_cache`` (one forward pass)
and standardising them (``StandardScaler`` + ``LogisticRegression(max_iter=200)``, C=1); each
lensworks time is a whole ``probe_inputs`` call (its own forward passes included), controls
off, for the methods in ``--methods``: ``fast-logistic``, ``logistic``
(plain L-BFGS, ``--logistic-iter`` steps), ``ridge``, ``lda`` and ``auto``. Wall time and
process CPU time (all threads) are both printed: on a shared machine the CPU time is the
steadier measure of the work done.

Models: a zoo name or checkpoint path (default ``char-mlp``), or ``d384-c65``: a
6-layer HookedTransformer (d_model 384, 6 heads of 64, d_mlp 1536, n_ctx 256, LayerNorm,
GELU) over a 65-symbol character vocabulary (the 64 most frequent characters of
``zoo.corpus(1_000_000)`` plus one "other" symbol, no BOS), initialised with seed 0 and
trained here with AdamW (lr 1e-3, warm-up 20 steps, cosine decay; batches of 4 windows of
256 characters from that corpus, seed 1) for ``--train-steps`` steps with one torch thread.
The trained weights are cached in ``--cache`` so that reruns skip training.

Usage:
    python benchmarks/bench_probes.py [--model char-mlp] [--windows 200] [--offsets 0,-1]
        [--methods fast-logistic,logistic,ridge,lda,auto] [--layers 0,2,5]
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from collections import Counter

import numpy as np
import torch

from lensworks import zoo
from lensworks.model import bos_token_id, hook_name, load_model, text_windows
from lensworks.probes import probe_inputs
from lensworks.probes.linear import DEFAULT_STREAMS, _plan

D384 = "d384-c65"


def _d384_vocab(text: str) -> dict[str, int]:
    """The 64 most frequent characters of ``text`` (ties by code point) get ids 0-63; id 64 is "other"."""
    top = sorted(Counter(text).items(), key=lambda kv: (-kv[1], kv[0]))[:64]
    return {c: i for i, (c, _) in enumerate(top)}


def _d384_tokens(text: str, vocab: dict[str, int]) -> torch.Tensor:
    return torch.tensor([vocab.get(c, 64) for c in text], dtype=torch.long)


def d384_model(steps: int, cache: str, device: str = "cpu"):
    """Build (or load from ``cache``) the d_model-384, 65-symbol model trained for ``steps`` steps
    (trained on ``device``; on the CPU with one thread, as the probes benchmark measured it)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=6, d_model=384, n_heads=6, d_head=64, d_mlp=1536, n_ctx=256, d_vocab=65,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard", device="cpu", seed=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = HookedTransformer(cfg, move_to_device=False)
    if os.path.exists(cache) and torch.load(cache).get("steps") == steps:
        model.load_state_dict(torch.load(cache)["state"])
        print(f"{D384}: loaded {steps}-step weights from {cache}")
        return model.eval()
    model = model.to(device)
    text = zoo.corpus(1_000_000)
    data = _d384_tokens(text, _d384_vocab(text))
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - 256, (4,), generator=gen).tolist()
        batch = torch.stack([data[s : s + 256] for s in starts]).to(device)
        loss = model(batch, return_type="loss")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  train step {step}: loss {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    torch.set_num_threads(threads)
    model = model.to("cpu").eval()
    torch.save({"steps": steps, "state": model.state_dict()}, cache)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="char-mlp", help=f"zoo name, checkpoint path or {D384!r} (default char-mlp)")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--offsets", default="0,-1")
    parser.add_argument("--layers", default=None, help="comma-separated layers to probe (default all)")
    parser.add_argument("--methods", default="fast-logistic,logistic,ridge,lda,auto")
    parser.add_argument("--max-iter", type=int, default=200, help="scikit-learn max_iter")
    parser.add_argument("--logistic-iter", type=int, default=30, help="L-BFGS iterations for lensworks method=\"logistic\" (warm-started from LDA)")
    parser.add_argument("--fast-iter", type=int, default=None, help="L-BFGS iterations for \"fast-logistic\" (default: its own)")
    parser.add_argument("--train-steps", type=int, default=300, help=f"training steps of {D384}")
    parser.add_argument("--cache", default="/tmp/lensworks-bench-d384-c65.pt", help=f"weights cache of {D384}")
    parser.add_argument("--train-only", action="store_true", help=f"train (or load) {D384} and stop")
    args = parser.parse_args()
    offsets = tuple(int(o) for o in args.offsets.split(","))
    methods = [m for m in args.methods.split(",") if m]
    print(f"load average at start: {os.getloadavg()}")

    if args.model == D384:
        model = d384_model(args.train_steps, args.cache)
        if args.train_only:
            return
        text = zoo.corpus(1_000_000)
        toks = _d384_tokens(text, _d384_vocab(text))
        n_ctx = model.cfg.n_ctx
        windows = toks[: args.windows * n_ctx].view(args.windows, n_ctx)
    else:
        model = zoo.load(args.model) if args.model in zoo.names() else load_model(args.model)
        text = zoo.corpus(args.windows * model.cfg.n_ctx * 2)
        windows = text_windows(model, text, max_tokens=args.windows * (model.cfg.n_ctx - 1))
    cfg = model.cfg
    layers = list(range(cfg.n_layers)) if args.layers is None else [int(l) for l in args.layers.split(",")]
    print(f"{args.model}: {cfg.n_layers} layers, d_model {cfg.d_model}, d_vocab {cfg.d_vocab}; "
          f"{windows.shape[0]} windows x {windows.shape[1]} tokens; layers {layers}; offsets {offsets}; "
          f"torch threads {torch.get_num_threads()}")

    # ---- lensworks (warm-up on a tiny slice first, so import/JIT costs are not timed)
    probe_inputs(model, windows[:4], offsets=offsets, layers=layers, controls=False, progress=False)
    results, times, cpu = {}, {}, {}
    for method in methods:
        kw = {"logistic": {"max_iter": args.logistic_iter}, "fast-logistic": {"max_iter": args.fast_iter}}.get(method, {})
        t0, c0 = time.perf_counter(), time.process_time()
        results[method] = probe_inputs(model, windows, offsets=offsets, layers=layers, method=method,
                                       controls=False, progress=False, **kw)
        times[method], cpu[method] = time.perf_counter() - t0, time.process_time() - c0
        print(f"  lensworks {method}: {times[method]:.2f} s, CPU {cpu[method]:.2f} s "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)

    # ---- scikit-learn, same split, layer by layer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    lengths = torch.full((windows.shape[0],), windows.shape[1])
    plan = _plan(windows, lengths, offsets, bos_token_id(model), 0.2, 0)
    t0, c0 = time.perf_counter(), time.process_time()
    names = {hook_name(s, l) for l in layers for s in DEFAULT_STREAMS}
    with torch.inference_mode():
        _, cache = model.run_with_cache(windows, names_filter=lambda n: n in names)
    t_features = time.perf_counter() - t0
    rows = []
    t_fit = 0.0
    for i, layer in enumerate(layers):
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
                rows.append((layer, stream, off, [float(results[m].accuracy[i, j, k]) for m in methods], acc))
    t_sk = t_features + t_fit
    c_sk = time.process_time() - c0

    print(f"\n{'layer':>5} {'stream':>10} {'offset':>6} " + " ".join(f"{m:>13}" for m in methods) + f" {'sklearn':>8}  (held-out accuracy)")
    for layer, stream, off, accs, acc in rows:
        print(f"{layer:>5} {stream:>10} {off:>6} " + " ".join(f"{a:>13.4f}" for a in accs) + f" {acc:>8.4f}")
    first = results[methods[0]] if methods else None
    if first is not None:
        print(f"\nprobes fitted: {len(rows)} (train rows per probe {first.n_train}, held-out {first.n_test}, "
              f"classes {len(first.classes)})")
    print(f"scikit-learn LogisticRegression: {t_sk:8.2f} s  (features {t_features:.2f} s + fits {t_fit:.2f} s), CPU {c_sk:.2f} s")
    for col, name in enumerate(methods):
        diffs = np.array([100 * (r[3][col] - r[4]) for r in rows])
        print(f"lensworks {name:<13} (probe_inputs): {times[name]:8.2f} s  speed-up {t_sk / times[name]:5.1f}x "
              f"(CPU {cpu[name]:.2f} s, {c_sk / cpu[name]:.1f}x); "
              f"accuracy minus sklearn (points): mean {diffs.mean():+.2f}, worst {diffs.min():+.2f}, best {diffs.max():+.2f}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
