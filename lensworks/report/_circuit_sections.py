"""The circuits sections of the report (and of ``lensworks heads``), in page order.

Several sections read one computation (the induction verdict carries the induction, previous-
token and copying scores and the K-composition); :meth:`Context.shared` runs it once.

Options read (``ctx.options``): ``seq_len``, ``n_seqs`` (the repeated random sequences),
``z_min`` (circuit-graph edges, and the cells the composition heatmaps mark), ``trigram_head`` /
``trigram_k`` (skip-trigrams), ``explorer_max_prompts`` / ``explorer_max_tokens`` /
``explorer_max_views`` (attention explorer) and ``terms_*`` (term importance; see :func:`_terms`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lensworks._heads import HeadId
from lensworks.report._context import Context, DataRead
from lensworks.report._sections import Section

__all__ = ["SECTIONS"]

#: Term importance reads this many windows (one copy of them per term in every pass) and lists
#: virtual heads one by one only while the table stays under TERMS_MAX terms; above that it lists
#: single heads (or, above TERMS_MAX_HEADS heads, the direct path only) on fewer, shorter windows:
#: on a GPT-2-small shape (144 heads) single heads would cost about a minute on a 2-core CPU.
TERMS_WINDOWS = 4
TERMS_MAX = 300
TERMS_MAX_HEADS = 64
TERMS_WINDOWS_LARGE = 2
TERMS_TOKENS_LARGE = 32


def _sequences(ctx: Context) -> dict[str, Any]:
    """The repeated-sequence options given (``seq_len``, ``n_seqs``), for the library calls."""
    return {k: ctx.options[k] for k in ("seq_len", "n_seqs") if ctx.options.get(k) is not None}


def induction(ctx: Context) -> Any:
    """The induction verdict (read by several sections; computed once)."""
    from lensworks.circuits import find_induction_heads

    def compute() -> Any:
        rep = find_induction_heads(ctx.model, seed=ctx.seed, progress=False, **_sequences(ctx))
        n_seq = rep.thresholds["seq_len"]
        ctx.record(DataRead("circuits: head scores, induction verdict",
                            f"random token sequences, each repeated once (seed {ctx.seed})",
                            int(rep.thresholds["n_seqs"]), int(rep.thresholds["prepend_bos"]) + 2 * n_seq,
                            "No text: weights and synthetic tokens only."))
        return rep

    return ctx.shared("induction", compute)


def duplicate(ctx: Context) -> Any:
    """Duplicate-token scores on the verdict's sequences."""
    from lensworks.circuits import head_scores

    def compute() -> Any:
        t = induction(ctx).thresholds
        n_seqs = {"n_seqs": ctx.options["n_seqs"]} if ctx.options.get("n_seqs") is not None else {}
        return head_scores(ctx.model, "duplicate_token", seq_len=t["seq_len"], seed=ctx.seed,
                           prepend_bos=t["prepend_bos"], **n_seqs)

    return ctx.shared("duplicate_token", compute)


def composition(ctx: Context, mode: str) -> Any:
    """Q/K/V composition scores (K comes with the verdict), marking the pairs at the graph's ``z_min``."""
    from lensworks.circuits import composition_scores

    if mode == "K":
        res = induction(ctx).k_composition
    else:
        res = ctx.shared(f"composition:{mode}", lambda: composition_scores(ctx.model, mode, progress=False))
    z_min = ctx.options.get("z_min")
    return res if z_min is None or z_min == res.z_min else dataclasses.replace(res, z_min=z_min)


def _graph(ctx: Context) -> Any:
    from lensworks.circuits import circuit_graph

    rep = induction(ctx)
    given = {"previous_token": rep.previous, "induction": rep.induction, "duplicate_token": duplicate(ctx),
             "copying": rep.copying}
    given.update({m: composition(ctx, m) for m in "QKV"})
    z_min = {"z_min": ctx.options["z_min"]} if ctx.options.get("z_min") is not None else {}
    return circuit_graph(ctx.model, seed=ctx.seed, precomputed=given, **z_min)


def _terms(ctx: Context) -> Any:
    """Term importance on the ``"terms"`` data given, else on the first geometry windows (fewer,
    shorter ones and lower orders on models with many heads; the note says so)."""
    from lensworks.circuits import term_importance
    from lensworks.circuits.terms import count_terms

    model, facts = ctx.model, ctx.facts
    if "terms" in ctx.windows_given:
        return term_importance(model, ctx.windows_given["terms"], max_order=ctx.option("terms_max_order"),
                               progress=False)
    n_heads, n_layers = facts.n_heads, facts.n_layers
    windows = ctx.windows("geometry")
    if n_layers >= 2 and count_terms(n_layers, n_heads, 2) <= TERMS_MAX:
        order, w, note = 2, windows[:TERMS_WINDOWS], ""
    else:  # many heads: every term is a copy of the batch, so read less and list less
        order = 1 if n_layers * n_heads <= TERMS_MAX_HEADS else 0
        w = windows[:TERMS_WINDOWS_LARGE, :TERMS_TOKENS_LARGE]
        note = (f"With {n_layers * n_heads} heads the report lists "
                + ("single heads only (virtual heads would be too many terms)" if order == 1 else
                   f"only the direct path (single heads are listed up to {TERMS_MAX_HEADS} heads)")
                + f" and reads {w.shape[0]} windows of {w.shape[1]} tokens; call "
                  "lensworks.circuits.term_importance for more.")
    res = term_importance(model, w, max_order=min(order, n_layers), progress=False)
    ctx.record(DataRead("circuits: term importance", ctx.windows_source("geometry"), int(w.shape[0]), int(w.shape[1]),
                        "the first geometry windows" + ("" if not note else ", cut short (many heads)")))
    return dataclasses.replace(res, note=note) if note else res


def _trigrams(ctx: Context) -> Any:
    """Skip-trigrams of ``trigram_head`` when given, else of the verdict's first induction head,
    else of the head with the highest copying score (the note says which)."""
    from lensworks.circuits import skip_trigrams

    k = ctx.option("trigram_k", 15)
    if ctx.options.get("trigram_head") is not None:
        layer, head = ctx.options["trigram_head"]
        return skip_trigrams(ctx.model, layer, head, k=k)
    rep = induction(ctx)
    if rep.heads:
        (layer, head), why = rep.heads[0], "the first induction head of the verdict"
    else:
        label, _ = rep.copying.top(1)[0]
        layer, head = HeadId.parse(label)
        why = "the head with the highest copying score"
    return dataclasses.replace(skip_trigrams(ctx.model, layer, head, k=k), note=f"Head chosen: {why}.")


def _explorer(ctx: Context) -> Any:
    """The attention explorer on the prompts given, else on the first two geometry windows."""
    from lensworks.circuits import attention_patterns

    model = ctx.model
    if ctx.prompts is None:
        w = ctx.windows("geometry")[:2, :24]
        res = attention_patterns(model, w, max_tokens=24, max_prompts=2)
        ctx.record(DataRead("circuits: attention explorer", ctx.windows_source("geometry"), int(w.shape[0]),
                            int(w.shape[1]), "the first geometry windows, first 24 tokens; pass prompts= (CLI: "
                            "--prompts FILE) to explore your own prompts"))
        return dataclasses.replace(res, note="Shown: the first two text windows (first 24 tokens).")
    max_prompts, max_tokens = ctx.option("explorer_max_prompts", 8), ctx.option("explorer_max_tokens", 48)
    n_heads = ctx.facts.n_layers * ctx.facts.n_heads
    given = ctx.prompts
    shown = list(given[: max(1, min(max_prompts, ctx.option("explorer_max_views", 256) // n_heads))])
    res = attention_patterns(model, shown, max_tokens=max_tokens, max_prompts=len(shown))
    left = len(given) - len(shown)
    more = f"; the other {left} are not shown (at most {len(shown)} on a model with {n_heads} heads)" if left else ""
    ctx.record(DataRead("circuits: attention explorer", f"the prompts given ({len(given)})", len(shown), None,
                        f"first {max_tokens} tokens of each{more}"))
    return dataclasses.replace(res, note=f"Shown: the prompts given ({len(shown)} of {len(given)} shown, first "
                                         f"{max_tokens} tokens of each).")


def _layers(n: int):
    def applies(model: Any) -> bool | str:
        from lensworks.model import model_facts

        have = model_facts(model).n_layers
        return True if have >= n else f"needs at least {n} layers; the model has {have}"

    return applies


_TWO_LAYERS = _layers(2)


def _terms_apply(model: Any) -> bool | str:
    from lensworks.circuits.terms import unsupported

    return unsupported(model) or True

SECTIONS: tuple[Section, ...] = (
    Section("verdict", "circuits", induction),
    Section("induction", "circuits", lambda ctx: induction(ctx).induction),
    Section("previous_token", "circuits", lambda ctx: induction(ctx).previous),
    Section("duplicate_token", "circuits", duplicate),
    Section("Q composition", "circuits", lambda ctx: composition(ctx, "Q"), applies=_TWO_LAYERS),
    Section("K composition", "circuits", lambda ctx: composition(ctx, "K"), applies=_TWO_LAYERS),
    Section("V composition", "circuits", lambda ctx: composition(ctx, "V"), applies=_TWO_LAYERS),
    Section("circuit graph", "circuits", _graph, applies=_TWO_LAYERS),
    Section("term importance", "circuits", _terms, pair=True, applies=_terms_apply),
    Section("skip-trigrams", "circuits", _trigrams, pair=True),
    Section("copying", "circuits", lambda ctx: induction(ctx).copying),
    Section("attention explorer", "circuits", _explorer, pair=True, drawn=True),
)
