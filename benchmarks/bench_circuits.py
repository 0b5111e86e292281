"""Circuits benchmark: lensworks vs TransformerLens on a randomly initialised GPT-2-small-shaped
model (12 layers, 12 heads, d_model 768, d_vocab 50257), in one run, same numbers checked.

Run:  .venv/bin/python benchmarks/bench_circuits.py [--device cuda] [--n-seqs 32] [--seq-len 50]

Prints one row per analysis: TransformerLens seconds, lensworks seconds, speed-up, and the
largest absolute difference between the two results (after converting normalisations where
the definitions differ only by them; see docs/from-transformerlens.md).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

warnings.filterwarnings("ignore")

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.head_detector import detect_head  # noqa: E402

from lensworks.circuits import composition_scores, copying_scores, head_scores, repeated_tokens  # noqa: E402
from lensworks.circuits.heads import behaviour_scores  # noqa: E402
from lensworks.model import vocab_tokenizer  # noqa: E402


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-seqs", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--skip-copying-reference", action="store_true", help="skip TL's slow full-OV eigenvalues")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
        act_fn="gelu_new", normalization_type="LN", seed=0, device=args.device,
    )
    model = HookedTransformer(cfg)
    model.eval()
    # a vocabulary tokenizer over 50257 fixed-width strings, so detect_head can tokenize prompts
    model.set_tokenizer(vocab_tokenizer(["<bos>"] + [f"{i:05d}" for i in range(1, 50257)]))
    model.cfg.default_prepend_bos = True
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {threads} torch threads, device {args.device}, torch {torch.__version__}")
    if args.device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name()}")
    rows = []

    # warm-up of both sides (first LAPACK / cuBLAS calls, allocator growth)
    composition_scores(model, "Q", baseline=False)
    model.all_composition_scores("Q")

    for mode in "QKV":
        ref, t_ref = timed(lambda: model.all_composition_scores(mode), args.device)
        ours, t_ours = timed(lambda: composition_scores(model, mode, baseline=False), args.device)
        err = float((ours.scores - ref).abs().max())
        rows.append((f"composition {mode}", t_ref, t_ours, err))
        del ref
    from lensworks.circuits.composition import random_composition_baseline

    _, t_base = timed(lambda: random_composition_baseline(768, 64, "Q", device=args.device), args.device)
    rows.append(("  random baseline (once per shape, then cached)", float("nan"), t_base, float("nan")))

    ours, t_ours = timed(lambda: copying_scores(model, baseline=False), args.device)
    if not args.skip_copying_reference:
        def tl_copying():
            ev = (model.W_E @ model.OV @ model.W_U).eigenvalues  # TL's FactoredMatrix route
            return ev.real.sum(-1) / ev.abs().sum(-1)

        ref, t_ref = timed(lambda: tl_copying().detach(), args.device)
        rows.append(("copying (full-OV eigenvalues)", t_ref, t_ours, float((ours.scores - ref.float()).abs().max())))
    else:
        rows.append(("copying (full-OV eigenvalues)", float("nan"), t_ours, float("nan")))

    n, B = args.seq_len, args.n_seqs
    toks = repeated_tokens(model, seq_len=n, n_seqs=B, seed=0, prepend_bos=True)
    T = toks.shape[1]
    strs = [model.tokenizer.decode(t[1:]) for t in toks]
    assert torch.equal(model.to_tokens(strs[0])[0], toks[0])
    t_tl_all = t_ours_all = 0.0
    for kind, tl_kind in [("previous_token", "previous_token_head"), ("duplicate_token", "duplicate_token_head"),
                          ("induction", "induction_head")]:
        ref, t_ref = timed(lambda: detect_head(model, strs, tl_kind), args.device)
        ours, t_ours = timed(lambda: head_scores(model, kind, tokens=toks), args.device)
        if kind == "previous_token":
            # detect_head also counts position 1 -> BOS; compare on the shared definition
            _, cache = model.run_with_cache(toks[:, :3], names_filter=lambda nm: nm.endswith("hook_pattern"))
            extra = torch.stack([cache["pattern", l][:, :, 1, 0] for l in range(12)]).mean(1)
            conv = (ours.scores.to(extra.device) * (2 * n - 1) + extra) / T
        else:
            conv = ours.scores * n / T
        rows.append((f"head score {kind} (detect_head)", t_ref, t_ours, float((conv.cpu() - ref.cpu().float()).abs().max())))
        t_tl_all += t_ref
    _, t_ours_all = timed(lambda: behaviour_scores(model, toks, offset=1), args.device)
    rows.append(("all three head scores, one pass", t_tl_all, t_ours_all, float("nan")))

    print(f"\n{'analysis':44s} {'TransformerLens s':>18s} {'lensworks s':>12s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name, tr, to, err in rows:
        print(f"{name:44s} {tr:18.3f} {to:12.3f} {tr / to:8.1f}x {err:11.2e}")


if __name__ == "__main__":
    main()
