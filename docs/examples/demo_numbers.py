"""Every number the documentation quotes about the demo models, computed here.

Each source below runs one experiment of docs/seed-experiments.md (or of the zoo's page) with the
protocol the page describes and returns its values by name; a page quotes them through markers
(see ``regenerate.py``): ``KEY = source name + "." + value name``, e.g. ``induction.z_max``.
Sources run once per process and share the models and the text windows they read. Offline, on
the bundled demo models; the models are deterministic, so the values repeat on the same torch
version.

    .venv/bin/python docs/examples/regenerate.py --print     # every value
    .venv/bin/python docs/examples/regenerate.py             # write them into the pages
"""

from __future__ import annotations

import functools
import math
import random
from typing import Any, Callable

import torch

import lensworks
from lensworks import zoo
from lensworks._threads import using_threads
from lensworks.model import hook_name, text_windows

#: The sources, by name (a page's key starts with one of these).
SOURCES: dict[str, Callable[[], dict[str, Any]]] = {}

#: Protocol sizes the pages quote.
ABLATION_WINDOWS = 128
PROBE_WINDOWS = 240
NEIGHBOUR_CHARS = 200_000
NEIGHBOUR_PROMPTS = 400
DIM_WINDOWS, DIM_WIDTH = 600, 64


def source(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Register ``fn`` as the source of the keys ``fn.__name__ + ".*"``, computed once, with the
    torch threads lensworks' analyses choose (the cores other processes leave free: on a busy
    2-core machine two threads make the neighbour index several times slower than one)."""

    @functools.cache
    @functools.wraps(fn)
    def run() -> dict[str, Any]:
        with using_threads():
            return fn()

    SOURCES[fn.__name__] = run
    return run


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats with three decimals."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- shared inputs


@functools.cache
def model(name: str):
    return lensworks.load_model(zoo.path(name)) if name == "bpe-llama" else zoo.load(name)


@functools.cache
def held_out_windows():
    """Windows of 128 characters (BOS + 127) of the held-out text right after the training text."""
    return text_windows(model("char-mlp"), zoo.corpus(1_200_000)[1_000_000:], max_tokens=400 * 127)


# --------------------------------------------------------------------------- seed 000


@source
def residual() -> dict[str, Any]:
    """Seed 000: residual statistics of char-mlp, 16 lines of Python against 16 of English, last character."""
    from lensworks.geometry import residual_stats
    from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

    stats = residual_stats(model("char-mlp"), {"python": list(BUILTIN_POSITIVE), "english": list(BUILTIN_NEGATIVE)})
    cos = stats.cosine("python", "english")
    streams = list(stats.streams)
    out: dict[str, Any] = {}
    rows = []
    for layer in range(stats.n_layers):
        row: list[Any] = [layer] + [float(cos[s][layer]) for s in streams]
        for d in ("python", "english"):
            vm, vx = stats.var_mean(d), stats.var_max(d)
            for si, s in enumerate(streams):
                out[f"{d}.var.{s}.{layer}"] = float(vm[si][layer])
                row.append(float(vm[si][layer]))
            row.append(float(vx[-1][layer]))
        rows.append(row)
    out["table"] = table(
        ["block", "cos(means) resid_pre", "resid_mid", "resid_post", "Python mean var resid_pre", "resid_mid",
         "resid_post", "Python max var resid_post", "English mean var resid_pre", "resid_mid", "resid_post",
         "English max var resid_post"], rows)
    all_cos = [float(cos[s][layer]) for s in streams for layer in range(stats.n_layers)]
    out["cos_min"], out["cos_max"] = min(all_cos), max(all_cos)
    post = [out[f"python.var.resid_post.{layer}"] for layer in range(stats.n_layers)]
    growth = [b - a for a, b in zip(post, post[1:])]
    out["python_growth_min"], out["python_growth_max"] = min(growth), max(growth)
    out["growth_every_step"] = all(
        out[f"{d}.var.resid_pre.{layer}"] < out[f"{d}.var.resid_mid.{layer}"] < out[f"{d}.var.resid_post.{layer}"]
        for d in ("python", "english") for layer in range(stats.n_layers))
    out["mlp_adds_more_than_attention"] = all(
        out[f"{d}.var.resid_post.{layer}"] - out[f"{d}.var.resid_mid.{layer}"]
        > out[f"{d}.var.resid_mid.{layer}"] - out[f"{d}.var.resid_pre.{layer}"]
        for d in ("python", "english") for layer in range(stats.n_layers))
    return out


# --------------------------------------------------------------------------- seed 004, appendix


@source
def ablation() -> dict[str, Any]:
    """Seed 004's ablation table: block_ablation and block_decomposition of char-mlp on held-out windows."""
    from lensworks.geometry import block_ablation, block_decomposition

    char, prompts = model("char-mlp"), held_out_windows()[:ABLATION_WINDOWS]
    f = block_ablation(char, prompts).to_frame()
    rows, ratios = [], []
    for r in f.itertuples(index=False):
        rows.append([r.block, f"{r.drop_attn_hellinger_mean:.3f} ± {r.drop_attn_hellinger_std:.3f}",
                     f"{r.drop_mlp_hellinger_mean:.3f} ± {r.drop_mlp_hellinger_std:.3f}", float(r.drop_attn_kl_mean),
                     float(r.drop_mlp_kl_mean), float(r.drop_attn_top1_agreement), float(r.drop_mlp_top1_agreement)])
        ratios.append(r.drop_mlp_hellinger_mean / r.drop_attn_hellinger_mean)
    c = block_decomposition(char, prompts).ffn_only_cosine
    return {
        "n_windows": len(prompts),
        "table": table(["block", "drop attention: Hellinger", "drop MLP: Hellinger", "drop attention: KL (nats)",
                        "drop MLP: KL (nats)", "top-1 kept, drop attention", "top-1 kept, drop MLP"], rows),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "mlp_larger_everywhere": min(ratios) > 1,
        "largest_in_block_0": max(range(len(ratios)), key=lambda i: f.drop_mlp_hellinger_mean[i]) == 0,
        "block0_mlp_top1_changed_pct": 100 * (1 - float(f.drop_mlp_top1_agreement[0])),
        "ffn_only_cos_mean": float(c.mean()), "ffn_only_cos_std": float(c.std()),
    }


# --------------------------------------------------------------------------- seed 004, FFN neighbours


@source
def neighbours() -> dict[str, Any]:
    """Seed 004: the FFN-neighbour approximation of char-mlp, tuned on half the prompts, evaluated on the other."""
    from lensworks.geometry import NeighbourApproximation

    held_out = zoo.corpus(1_200_000)[1_000_000:]
    approx = NeighbourApproximation(window=10).fit(model("char-mlp"), zoo.corpus(NEIGHBOUR_CHARS))
    rng = random.Random(0)
    queries = [held_out[s : s + 10] for s in (rng.randrange(0, len(held_out) - 10) for _ in range(NEIGHBOUR_PROMPTS))]
    half = len(queries) // 2
    tuned = approx.tune(queries[:half])
    ev = approx.evaluate(queries[half:], tuned.thresholds, tuned.weights)
    base = approx.evaluate(queries[half:], 0.9)
    n = len(queries) - half
    weights = list(tuned.weights)
    return {
        "n_chars": NEIGHBOUR_CHARS, "n_prompts": len(queries), "n_tune": half,
        "n_windows": approx.n_windows,
        "table": table(["setting", "prompts", "mean Hellinger", "std", "prompts with no similar window"],
                       [["cosine > 0.9 in every block, equal weights", n, base.mean, base.std, base.n_unmatched],
                        [f"tuned on the other {half} prompts", n, ev.mean, ev.std, ev.n_unmatched]]),
        "tuned": ", ".join(f"{t:.2f} / {w:g}" for t, w in zip(tuned.thresholds, weights)),
        "tuned_mean": ev.mean,
        "later_blocks_weigh_more": max(weights[: len(weights) // 2]) < min(weights[len(weights) // 2 :]),
        "tuning_helps": ev.mean < base.mean,
    }


# --------------------------------------------------------------------------- seed 002


@source
def probes() -> dict[str, Any]:
    """Seed 002: ridge probes of char-mlp for the character at offsets 0, -1, -2, with controls, and
    how three of the probes' weights relate to the embedding."""
    from lensworks.probes import compare_to_embedding, probe_inputs

    pr = probe_inputs(model("char-mlp"), held_out_windows()[:PROBE_WINDOWS], offsets=(0, -1, -2), method="ridge")
    f = pr.to_frame()
    out: dict[str, Any] = {"n_windows": PROBE_WINDOWS}
    for r in f.itertuples(index=False):
        out[f"acc.L{r.layer}.{r.stream}.{r.offset}"] = float(r.accuracy)
        out[f"random.L{r.layer}.{r.stream}.{r.offset}"] = float(r.control_random_model)
        out[f"shuffled.L{r.layer}.{r.stream}.{r.offset}"] = float(r.control_shuffled)
    out["chance"] = float(f.chance[f.offset == 0].iloc[0])
    last = max(pr.layers)
    shown = [(0, "resid_pre"), (0, "resid_mid"), (0, "resid_post")] + [(l, "resid_post") for l in range(1, last + 1)]
    rows = []
    for layer, stream in shown:
        acc = [out[f"acc.L{layer}.{stream}.{o}"] for o in (0, -1, -2)]
        rnd = " / ".join(f"{out[f'random.L{layer}.{stream}.{o}']:.3f}" for o in (0, -1, -2))
        rows.append([layer, stream + (" (embedding)" if (layer, stream) == (0, "resid_pre") else ""), *acc, rnd])
    out["table"] = table(["block", "stream", "current char (offset 0)", "previous char (-1)", "two back (-2)",
                          "random-model control, offsets 0 / -1 / -2"], rows)
    after = [out[f"acc.L{layer}.{stream}.-2"] for layer, stream in shown[1:]]
    out["two_back_min"], out["two_back_max"] = min(after), max(after)
    out["shuffled_at_chance"] = all(abs(v - out["chance"]) < 0.01 for k, v in out.items() if k.startswith("shuffled."))
    out["random_fades_too"] = (out["random.L0.resid_pre.0"] - out[f"random.L{last}.resid_post.0"]
                               >= 0.5 * (out["acc.L0.resid_pre.0"] - out[f"acc.L{last}.resid_post.0"]))
    # probe weights against the embedding (null: random matrices with the probe's singular values)
    for name, (layer, stream, offset) in {"first": (0, "resid_pre", 0), "last": (last, "resid_post", 0),
                                          "last_prev": (last, "resid_post", -1)}.items():
        cmp = compare_to_embedding(model("char-mlp"), pr.weights(layer, stream, offset), tokens=pr.classes, seed=0)
        for stat, v in cmp.summary().items():
            out[f"{name}.{stat}"] = float(v["value"])
            out[f"{name}.{stat}.lo"], out[f"{name}.{stat}.hi"] = float(v["null_lo"]), float(v["null_hi"])
            out[f"{name}.{stat}.verdict"] = v["verdict"]
    out["first_reads_embedding"] = out["first.overlap_embed.verdict"] == "closer than chance"
    out["last_not_embedding"] = (out["last.overlap_embed.verdict"] == "within chance"
                                 and out["last.overlap_unembed.verdict"] == "farther than chance"
                                 and out["last_prev.overlap_embed.verdict"] == "within chance"
                                 and out["last_prev.overlap_unembed.verdict"] == "farther than chance"
                                 and out["last.mass_position.verdict"] == "within chance")
    return out


# --------------------------------------------------------------------------- seed 001


@source
def dims() -> dict[str, Any]:
    """Seed 001: effective dimensionality at the last position of held-out windows, char-mlp and bpe-llama."""
    from lensworks.geometry import effective_dimensionality

    held_out = zoo.corpus(None)[1_000_000:]
    out: dict[str, Any] = {"n_windows": DIM_WINDOWS, "width": DIM_WIDTH}
    rows = []
    for name in ("char-mlp", "bpe-llama"):
        m = model(name)
        windows = text_windows(m, held_out, width=DIM_WIDTH)[:DIM_WINDOWS]
        f = effective_dimensionality(m, windows).to_frame()
        L = m.cfg.n_layers
        pick = {layer: f[(f.layer == layer) & (f.stream == "resid_pre")].iloc[0] for layer in range(L)}
        pick["final"] = f[(f.layer == L - 1) & (f.stream == "resid_post")].iloc[0]
        pr, n90 = [], []
        for col in [0, 1, 2, 3, "final"]:
            r = pick.get(col)
            pr.append("" if r is None else f"{r.participation_ratio:.1f}")
            n90.append("" if r is None else str(int(r.n_components_90)))
            if r is not None:
                out[f"{name}.pr.{col}"] = float(r.participation_ratio)
                out[f"{name}.n90.{col}"] = int(r.n_components_90)
        rows += [[f"`{name}`: participation ratio", *pr], [f"`{name}`: components for 90%", *n90]]
    out["table"] = table(["model", "layer 0 (embedding)", "layer 1", "layer 2", "layer 3", "final output"], rows)
    c = lambda k: out[f"char-mlp.{k}"]
    out["char_count_grows"] = c("n90.0") < c("n90.1") < c("n90.2") < c("n90.3")
    out["char_ratio_doubles_then_drifts_down"] = (c("pr.1") > 1.8 * c("pr.0") and c("pr.1") > c("pr.2") > c("pr.3"))
    out["char_last_block_concentrates"] = c("n90.final") < c("n90.3") and c("pr.final") < c("pr.3")
    out["llama_first_block_removes"] = out["bpe-llama.n90.1"] < out["bpe-llama.n90.0"]
    out["llama_second_adds_back"] = out["bpe-llama.n90.final"] > out["bpe-llama.n90.1"]
    return out


# --------------------------------------------------------------------------- seed 003


def _previous_by_position(m, positions: list[tuple[int, int]], n_seqs: int = 64, seed: int = 0) -> dict[tuple, list]:
    """Mean attention t -> t-1 of each layer-0 head over query positions [a, b] of non-repeated random tokens."""
    g = torch.Generator().manual_seed(seed)
    n_pos = m.cfg.n_ctx - 1
    toks = torch.cat([torch.zeros(n_seqs, 1, dtype=torch.long),
                      torch.randint(1, m.cfg.d_vocab, (n_seqs, n_pos), generator=g)], dim=1)
    with torch.inference_mode():
        _, cache = m.run_with_cache(toks, names_filter=hook_name("pattern", 0))
    pat = cache[hook_name("pattern", 0)]
    q = torch.arange(1, n_pos + 1)
    prev = pat[:, :, q, q - 1].mean(0)  # [head, query position - 1]
    return {(a, b): prev[:, a - 1 : b].mean(1).tolist() for a, b in positions}


@source
def induction() -> dict[str, Any]:
    """Seed 003 on induction-2l: the verdict with its evidence, the baseline, and the previous-token protocols."""
    from lensworks.circuits import find_induction_heads
    from lensworks.zoo.metrics import induction_metrics

    m = model("induction-2l")
    rep = find_induction_heads(m)
    prev = rep.previous.scores
    t = rep.thresholds
    out: dict[str, Any] = {"seq_len": t["seq_len"], "n_seqs": t["n_seqs"], "threshold_induction": t["induction"],
                           "threshold_previous": t["previous_token"], "threshold_z": t["k_comp_z"]}

    def role(e) -> str:
        if e.is_induction:
            return "induction head"
        p = float(prev[e.layer, e.head])
        return "previous-token head" if p >= 0.5 else "weak previous-token head" if p >= t["previous_token"] else "-"

    ind = [e for e in rep.evidence if e.is_induction]
    rest = sorted((e for e in rep.evidence if not e.is_induction), key=lambda e: -float(prev[e.layer, e.head]))
    rows = []
    for e in ind + rest:
        partner = e.previous_partner if e.is_induction else None
        rows.append([e.label, e.induction, float(prev[e.layer, e.head]), f"{e.copying:+.3f}", partner or "-",
                     f"{e.k_composition:.3f}" if partner else "-", f"{e.k_composition_z:.1f}" if partner else "-",
                     role(e)])
        out[f"{e.label}.induction"] = e.induction
        out[f"{e.label}.previous"] = float(prev[e.layer, e.head])
        out[f"{e.label}.z"] = e.k_composition_z
    out["table"] = table(["head", "induction score", "previous-token score", "copying score", "K-composition partner",
                          "K-comp", "z vs random", "verdict"], rows)
    out["chance"] = float(rep.induction.references()["chance"].mean)
    base = rep.k_composition.baseline
    out["baseline_mean"], out["baseline_std"] = float(base.mean), float(base.std)
    zs = [e.k_composition_z for e in ind]
    out["z_min"], out["z_max"] = min(zs), max(zs)
    out["induction_min"], out["induction_max"] = min(e.induction for e in ind), max(e.induction for e in ind)
    out["copying_min"] = min(e.copying for e in ind)
    out["kcomp_min"], out["kcomp_max"] = min(e.k_composition for e in ind), max(e.k_composition for e in ind)
    strong = {e.label for e in rest if role(e) == "previous-token head"}
    layer1 = {f"L{m.cfg.n_layers - 1}H{h}" for h in range(m.cfg.n_heads)}
    out["all_layer1_are_induction_with_strong_partner"] = (
        {e.label for e in ind} == layer1 and all(e.previous_partner in strong for e in ind) and len(strong) == 2)
    # the zoo's own measurement (recipes.induction_metrics, stored in recipe.json): another protocol
    zm = induction_metrics(m)
    out["zoo_n"], out["zoo_batch"] = zm["n"], zm["batch_size"]
    out["zoo_loss_first"], out["zoo_loss_second"] = zm["loss_first_copy"], zm["loss_second_copy"]
    out["zoo_loss_uniform"] = zm["loss_uniform"]
    for h, v in enumerate(zm["previous_token_score"][0]):
        out[f"zoo_previous.L0H{h}"] = v
    for h, v in enumerate(zm["induction_score"][1]):
        out[f"zoo_induction.L1H{h}"] = v
    out["zoo_induction_layer0_max"] = max(zm["induction_score"][0])
    out["zoo_previous_layer1_max"] = max(zm["previous_token_score"][1])
    out["zoo_induction_mean_layer1"] = sum(zm["induction_score"][1]) / len(zm["induction_score"][1])
    # why the two protocols disagree on previous-token scores: the layer-0 heads look back one
    # token at early positions only (non-repeated random tokens, so repetition plays no part)
    spans = [(21, 30), (41, 50), (51, 63)]
    by_pos = _previous_by_position(m, spans)
    for a, b in spans:
        for h in range(m.cfg.n_heads):
            out[f"prev_pos_{a}_{b}.L0H{h}"] = by_pos[(a, b)][h]
    return out


@source
def char_induction() -> dict[str, Any]:
    """Seed 003 on char-mlp: no induction head; its best scores and its previous-token head."""
    from lensworks.circuits import find_induction_heads

    m = model("char-mlp")
    rep = find_induction_heads(m)
    best = max(rep.evidence, key=lambda e: e.induction)
    prev = rep.previous.scores
    pl, ph = divmod(int(prev.flatten().argmax()), prev.shape[1])
    z = rep.k_composition.z()[pl, ph, pl + 1 :]
    return {
        "no_induction_heads": rep.heads == [],
        "best_induction": best.induction, "best_label": best.label,
        "chance": float(rep.induction.references()["chance"].mean),
        "previous_label": f"L{pl}H{ph}", "previous_best": float(prev[pl, ph]),
        "previous_is_L0H3": (pl, ph) == (0, 3),
        "best_z_from_previous": float(z.max()),
        "best_is_L3H0": best.label == "L3H0",
    }


@source
def terms() -> dict[str, Any]:
    """Seed 003's term importance on induction-2l (32 repeated random sequences of 31 tokens)."""
    from lensworks.circuits import repeated_tokens, term_importance

    m = model("induction-2l")
    res = term_importance(m, repeated_tokens(m, seq_len=31, n_seqs=32), progress=False)
    f = res.to_frame()
    loss = [float(x) for x in res.loss_by_order]
    single = f[f.order == 1].sort_values("loss_increase", ascending=False)
    virtual = f[f.order == 2].sort_values("loss_increase", ascending=False)
    layer1 = single[single.term.str.startswith("L1")]
    layer0 = single[single.term.str.startswith("L0")]
    top_virtual = virtual.head(4)
    spread = float(top_virtual.loss_increase.max() - top_virtual.loss_increase.min())
    out = {
        "loss_direct": loss[0], "loss_single": loss[1], "loss_model": loss[-1], "uniform": math.log(m.cfg.d_vocab - 1),
        "n_tokens": 2 * 31 + 1,
        "layer1_terms": ", ".join(layer1.term),
        "layer1_increases": ", ".join(f"{v:.3f}" for v in layer1.loss_increase),
        "top_virtual_terms": ", ".join(top_virtual.term),
        "top_virtual_increase": float(top_virtual.loss_increase.mean()),
        "top_virtual_alike": spread < 0.0015,
        "direct_increase": float(f[f.order == 0].loss_increase.iloc[0]),
        "layer0_max": float(layer0.loss_increase.max()),
        "sum_single": float(single.loss_increase.sum()),
        "sum_virtual": float(virtual.loss_increase.sum()), "n_virtual": len(virtual),
        "sum_direct": float(f[f.order == 0].loss_increase.sum()),
        "layer1_single_lead": set(single.term.head(len(layer1))) == set(layer1.term),
    }
    out["single_mostly_layer1"] = float(layer1.loss_increase.sum()) > 0.95 * out["sum_single"]
    return out
