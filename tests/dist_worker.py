"""One rank of the 2-process gloo runs in tests/test_distributed.py (run as a script).

Usage: python tests/dist_worker.py RANK WORLD INIT_FILE OUT_FILE [ANALYSES] [MODE]
MODE "same" (default) gives every rank the same data; "differ" gives rank 1 other data; "fail1"
bad input on rank 1; "weights" other weights on rank 1; "rank0only" rank 1 calls nothing.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def analyses(model, toks, texts):
    """Name -> callable returning a dict of tensors; run identically alone and under torchrun."""
    from lensworks import circuits, geometry

    return {
        "residual_stats": lambda: _stats(geometry.residual_stats(model, {"a": toks[:5], "b": texts}, position=-1)),
        "update_alignment": lambda: {"cosine": geometry.update_alignment(model, toks).cosine},
        "block_ablation": lambda: {k: getattr(geometry.block_ablation(model, toks, batch_size=3), k)
                                   for k in ("drop_attn_hellinger", "drop_mlp_kl", "drop_mlp_top1")},
        "logit_lens": lambda: _lens(geometry.logit_lens(model, texts, batch_size=2)),
        "head_scores": lambda: {k: circuits.head_scores(model, k, seq_len=6, n_seqs=7, batch_size=3).scores
                                for k in ("previous_token", "duplicate_token", "induction")},
        "neighbours": lambda: _neighbours(model, texts),
        "probes_auto": lambda: _probes(model, toks, "auto"),
        "probes_ridge": lambda: _probes(model, toks, "ridge"),
        "probes_fast_logistic": lambda: _probes(model, toks, "fast-logistic"),
        "effective_dimensionality": lambda: {"pr": geometry.effective_dimensionality(model, toks, batch_size=3).participation_ratio},
        "term_importance": lambda: {k: getattr(circuits.term_importance(model, toks, batch_size=3), k)
                                    for k in ("loss_by_order", "loss_without")},
        "copying": lambda: {"scores": circuits.copying_scores(model).scores},
        "composition": lambda: {"scores": circuits.composition_scores(model, "K", progress=False).scores},
    }


def count_work(model):
    """Count the rows the model's forward passes read and the weight reads of the weight-only scores."""
    import lensworks.circuits.composition as comp
    import lensworks.circuits.eigen as eigen

    work = {"rows": 0, "weight_reads": 0}

    def embed_hook(act, hook):
        work["rows"] += act.shape[0]

    model.add_hook("hook_embed", embed_hook)
    for mod, name in ((comp, "attention_weights"), (eigen, "_gram_ue")):
        real = getattr(mod, name)

        def counted(*args, _real=real, **kwargs):
            work["weight_reads"] += 1
            return _real(*args, **kwargs)

        setattr(mod, name, counted)
    return work


def _probes(model, toks, method):
    from lensworks.probes import probe_inputs

    res = probe_inputs(model, toks, method=method, offsets=(0, -1), batch_size=3, seed=0, progress=False)
    return {"accuracy": res.accuracy, "shuffled": res.control_shuffled, "random": res.control_random_model,
            "weights": res.weights(1, res.streams[0], 0)}


def _neighbours(model, texts):
    from lensworks.geometry import NeighbourApproximation

    corpus = "the cat sat on the mat. the dog sat on the log. a cat and a dog ran far away. " * 12
    approx = NeighbourApproximation(window=3, thresholds=0.8).fit(model, corpus, batch_size=64, progress=False)
    prompts = [corpus[i : i + 9] for i in range(0, 300, 23)]
    ev = approx.evaluate(prompts, progress=False)
    tuned = approx.tune(prompts, threshold_grid=(0.6, 0.9), weight_grid=(0.5, 1.0), rounds=1, progress=False)
    sim = approx.similar(prompts[0])
    return {"hellinger": ev.hellinger, "n_similar": ev.n_similar.float(), "tuned": torch.tensor(tuned.thresholds),
            "tuned_h": torch.tensor([tuned.mean_hellinger]), "similar": sim.indices.float(), "similar_cos": sim.cosines}


def _stats(s):
    return {f"{k}_{n}": getattr(s, k)[n] for k in ("mean", "var", "norm_mean") for n in s.datasets} | {
        "count": torch.tensor([s.count[n] for n in s.datasets])}


def _lens(lens):
    return {"kl": lens.kl, "top_tokens": lens.top_tokens.float(), "labels": list(lens.prompt_labels)}


def model_and_data(mode: str = "same", rank: int = 0):
    from helpers import CHAR_VOCAB, tiny_model

    model = tiny_model(seed=2, n_layers=3, attn_only=False, d_mlp=64, vocab=CHAR_VOCAB)
    seed = 5 if mode == "differ" and rank == 1 else 4
    toks = torch.randint(1, model.cfg.d_vocab, (11, 9), generator=torch.Generator().manual_seed(seed))
    texts = ["the cat sat", "on the mat", "a dog", "ran far away", "and back again.", "fin"]
    return model, toks, texts


def main() -> None:
    rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    wanted = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
    mode = sys.argv[6] if len(sys.argv) > 6 else "same"
    torch.set_num_threads(1)
    timeout = timedelta(seconds=8 if mode in ("fail1", "rank0only") else 60)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                         timeout=timeout)
    model, toks, texts = model_and_data(mode, rank)
    if mode == "fail1" and rank == 1:
        toks = toks.float()  # bad input on one rank only: it fails at once, the other must not hang
    if mode == "weights" and rank == 1:
        with torch.no_grad():
            model.blocks[0].attn.W_Q[0, 0, 0] += 1.0  # another checkpoint on one rank
    if mode == "rank0only" and rank == 1:  # only rank 0 calls the analyses; rank 1 leaves at once
        torch.save({"results": {}, "errors": {}, "work": {}}, out)
        torch.distributed.destroy_process_group()
        return
    work = count_work(model)
    results, errors, done = {}, {}, {}
    for name, fn in analyses(model, toks, texts).items():
        if wanted and name not in wanted:
            continue
        before = dict(work)
        try:
            results[name] = fn()
        except Exception as exc:  # recorded for the test to read
            errors[name] = f"{type(exc).__name__}: {exc}"
        done[name] = {k: work[k] - before[k] for k in work}
    torch.save({"results": results, "errors": errors, "work": done}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
