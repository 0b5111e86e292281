"""Activation patching per head and position: lensworks's batched sweep against TransformerLens 3's loop.

Both compute the same [n_layers, n_pos, n_heads] tensor: the logit difference of two answer tokens
with one head's output ``z`` at one position patched. TransformerLens's
``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` runs one forward pass per
(layer, position, head); ``lensworks.causal.activation_patching(..., what="head_z",
positions="each")`` stacks ``--sites`` sites along the batch, starts each chunk from the cached
residual stream of its first layer and unembeds only the read position. Both are timed in the same
process on the same random model (GPT-2-small shape by default: 12 layers, 12 heads, d_model 768,
d_mlp 3072, d_vocab 50257), and the results are checked to agree.

Run (TransformerLens 3 only; TransformerLens 4 has no patching module):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_patching.py [--pos 12] [--batch 2] [--threads 1]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_patching.py --reduced   # a busy machine

``--reduced`` keeps GPT-2-small's width but uses 4 layers and 8 positions (the full sweep's
TransformerLens side takes minutes on one core); the speed-up is about the same, as both sides
scale with the number of sites. The target: >= 5x on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
import warnings

import torch


def gpt2_small_shape(n_layers: int, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--pos", type=int, default=12, help="tokens per prompt")
    ap.add_argument("--batch", type=int, default=2, help="prompts")
    ap.add_argument("--sites", type=int, default=64, help="lensworks: sites per forward pass")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reduced", action="store_true", help="4 layers, 8 positions (a busy machine)")
    args = ap.parse_args(argv)
    if args.reduced:
        args.layers, args.pos = 4, 8
    torch.set_num_threads(args.threads)
    from lensworks.model import TL_MAJOR

    if TL_MAJOR >= 4:
        print("TransformerLens 4 has no transformer_lens.patching; run this with TransformerLens 3 (.venv)")
        return 1
    from transformer_lens import patching

    from lensworks.causal import activation_patching

    model = gpt2_small_shape(args.layers)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (args.batch, args.pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, args.pos // 2] = torch.randint(0, 50257, (args.batch,), generator=g)
    answer, wrong = torch.arange(args.batch) + 100, torch.arange(args.batch) + 200
    rows = torch.arange(args.batch)

    def metric(logits):
        return (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()

    n_sites = args.layers * args.pos * 12
    print(f"model: GPT-2-small shape, {args.layers} layers{' (--reduced)' if args.reduced else ''}; "
          f"{args.batch} prompts x {args.pos} tokens; {n_sites} sites (layer x position x head); "
          f"{args.threads} thread(s); torch {torch.__version__}, {platform.processor() or platform.machine()}")

    t0 = time.perf_counter()
    ours = activation_patching(model, clean, corrupted, "logit_diff", what="head_z", positions="each",
                               answer_tokens=answer, wrong_tokens=wrong, batch_size=args.sites, progress=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_callable = activation_patching(model, clean, corrupted, metric, what="head_z", positions="each",
                                        batch_size=args.sites, progress=False)
    t_callable = time.perf_counter() - t0

    patching.tqdm = functools.partial(patching.tqdm, disable=True)  # TransformerLens's loop shows a bar
    t0 = time.perf_counter()
    with torch.inference_mode():
        _, cache = model.run_with_cache(corrupted)
        ref = patching.get_act_patch_attn_head_out_by_pos(model, clean, cache, metric).cpu()
    t_tl = time.perf_counter() - t0

    err = float((ours["head_z"] - ref).abs().max())
    err_c = float((ours_callable["head_z"] - ref).abs().max())
    print(f"TransformerLens get_act_patch_attn_head_out_by_pos: {t_tl:8.2f} s ({n_sites} forward passes)")
    print(f"lensworks activation_patching, named metric:        {t_ours:8.2f} s  speed-up {t_tl / t_ours:5.1f}x")
    print(f"lensworks activation_patching, callable metric:     {t_callable:8.2f} s  speed-up {t_tl / t_callable:5.1f}x")
    print(f"largest difference from TransformerLens: {err:.2e} (named), {err_c:.2e} (callable)")
    return 0 if max(err, err_c) < 1e-3 else 2


if __name__ == "__main__":
    sys.exit(main())
