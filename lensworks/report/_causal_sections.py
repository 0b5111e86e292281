"""The causal sections of the report: activation patching, attribution patching and direct logit
attribution, all on one clean/corrupted pair.

The pair is :func:`lensworks.causal.induction_pair` with the report's seed: repeated random
tokens, the kind of data the circuits group reads, with the token the induction pattern
predicts changed in the first copy (the answer is the clean token, the wrong answer the
corrupted one; the metric is their logit difference). It needs no tokenizer, so the sections run
on every model whose context holds a few repeated tokens; it is short (4 prompts of 15 or 16
tokens) so the sweep stays cheap.

Options read (``ctx.options``): ``causal_seq_len`` (length of the random sequence, default 8),
``causal_n_seqs`` (prompts, default 4) and ``causal_batch_size`` (sites per forward pass, default 64).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from lensworks.report._context import Context, DataRead
from lensworks.report._sections import Section

__all__ = ["SECTIONS", "TARGETS"]

#: What the report patches (when the model has it); head patterns are left to the library call.
TARGETS = ("resid_pre", "attn_out", "mlp_out", "head_z")


def pair(ctx: Context) -> Any:
    """The clean/corrupted pair every causal section reads (drawn once, recorded in "Data read")."""
    from lensworks.causal import induction_pair

    def compute() -> Any:
        p = induction_pair(ctx.model, seq_len=ctx.option("causal_seq_len"), n_seqs=ctx.option("causal_n_seqs", 4),
                           seed=ctx.seed)
        ctx.record(DataRead("causal: activation patching, attribution patching, direct logit attribution",
                            f"random token sequences, repeated, with one token of the first copy changed (seed "
                            f"{ctx.seed})", int(p.clean.shape[0]), int(p.clean.shape[1]),
                            "No text: the answer is the token the induction pattern predicts, the wrong answer the "
                            "one the corrupted copy makes it predict."))
        return p

    return ctx.shared("causal:pair", compute)


def _note(ctx: Context) -> str:
    return f"Prompts: {pair(ctx).describe()} Metric: the logit difference answer - wrong at the last token."


def _targets(ctx: Context) -> tuple[str, ...]:
    return tuple(t for t in TARGETS if t != "mlp_out" or ctx.facts.has_stream("mlp_out"))


def patching(ctx: Context) -> Any:
    """Activation patching of every target the model has (attribution patching reads it too; run once)."""
    from lensworks.causal import activation_patching

    def compute() -> Any:
        p = pair(ctx)
        res = activation_patching(ctx.model, p.clean, p.corrupted, "logit_diff", answer_tokens=p.answer,
                                  wrong_tokens=p.wrong, what=_targets(ctx), batch_size=ctx.option("causal_batch_size", 64),
                                  progress=False)
        return dataclasses.replace(res, note=_note(ctx))

    return ctx.shared("causal:patching", compute)


def _attribution(ctx: Context) -> Any:
    from lensworks.causal import attribution_patching

    p = pair(ctx)
    res = attribution_patching(ctx.model, p.clean, p.corrupted, "logit_diff", answer_tokens=p.answer,
                               wrong_tokens=p.wrong, what=_targets(ctx), exact=patching(ctx))
    return dataclasses.replace(res, note=_note(ctx) + " The correlation compares it with the activation patching above.")


def _dla(ctx: Context) -> Any:
    from lensworks.causal import direct_logit_attribution
    from lensworks.causal.dla import DECOMPOSITION_RTOL

    p = pair(ctx)
    with warnings.catch_warnings():  # the note below says it on the page
        warnings.simplefilter("ignore")
        res = direct_logit_attribution(ctx.model, p.clean, p.answer, wrong_tokens=p.wrong)
    note = f"Prompts: the clean ones of the patching above ({pair(ctx).describe()})"
    if res.decomposition_error > DECOMPOSITION_RTOL:
        note += (f" The components add up to the final residual only within a relative error of "
                 f"{res.decomposition_error:.2g} on this architecture: read the attributions with care.")
    return dataclasses.replace(res, note=note)


def _applies(model: Any) -> bool | str:
    """The pair must fit the model's context and vocabulary (drawing one costs nothing)."""
    from lensworks.causal import induction_pair
    from lensworks.model import LensworksError

    try:
        induction_pair(model, n_seqs=1)
    except LensworksError as exc:
        return f"no clean/corrupted pair of repeated tokens fits this model: {exc}"
    return True


SECTIONS: tuple[Section, ...] = (
    Section("activation patching", "causal", patching, applies=_applies),
    Section("attribution patching", "causal", _attribution, applies=_applies),
    Section("direct logit attribution", "causal", _dla, applies=_applies),
)
