"""The geometry sections of the report (and of ``lensworks geometry``), in page order.

They read ``ctx.windows("geometry")`` (the text windows, or the prompts a CLI gives); the
residual statistics compare ``ctx.positive`` with ``ctx.negative`` when given. Options read:
``batch_size``, ``lens_windows`` (windows the logit lens reads, default ``min(12, n_prompts)``)
and ``more_samples`` (how to get more samples, said in the effective-dimensionality note).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lensworks.model import LensworksError
from lensworks.report._context import Context, DataRead, read_prompts
from lensworks.report._sections import Section

__all__ = ["SECTIONS", "EXTRA"]


def _batch(ctx: Context) -> dict[str, Any]:
    return {"batch_size": ctx.options["batch_size"]} if ctx.options.get("batch_size") is not None else {}


def _stats(ctx: Context) -> Any:
    """Residual statistics of the positive and negative prompts given, else of lensworks' built-in
    prompts (Python code against English prose), else of the windows against shuffled windows."""
    from lensworks.geometry import residual_stats

    model, streams = ctx.model, ctx.facts.streams
    if ctx.positive is not None:
        data_sets = {"positive": read_prompts(ctx.positive, "positive"),
                     "negative": read_prompts(ctx.negative, "negative")}
        ctx.record(DataRead("geometry: residual statistics", "the positive and negative prompts given",
                            sum(len(v) for v in data_sets.values()), None, "one window per prompt"))
        return residual_stats(model, data_sets, streams=streams, progress=False, **_batch(ctx))
    if model.tokenizer is not None:
        from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

        builtin = {"Python code": list(BUILTIN_POSITIVE), "English prose": list(BUILTIN_NEGATIVE)}
        try:
            res = residual_stats(model, builtin, streams=streams, progress=False, **_batch(ctx))
        except LensworksError:  # the vocabulary cannot spell them: compare text with shuffled text
            pass
        else:
            ctx.record(DataRead("geometry: residual statistics", "lensworks' built-in prompts: Python code against "
                                "English prose", len(BUILTIN_POSITIVE) + len(BUILTIN_NEGATIVE), None,
                                "one window per prompt; pass positive=/negative= (CLI: --positive/--negative) "
                                "to compare your own data sets"))
            return res
    w = ctx.windows("geometry")
    gen = torch.Generator().manual_seed(ctx.seed)
    shuffled = w.clone()
    start = int(ctx.facts.uses_bos())
    for i in range(shuffled.shape[0]):
        perm = torch.randperm(shuffled.shape[1] - start, generator=gen) + start
        shuffled[i, start:] = w[i, perm]
    return residual_stats(model, {"text": w, "shuffled text": shuffled}, streams=streams, progress=False, **_batch(ctx))


def _lens(ctx: Context) -> Any:
    from lensworks.geometry import logit_lens

    w = ctx.windows("geometry")
    return logit_lens(ctx.model, w[: ctx.option("lens_windows", min(12, ctx.n_prompts))], progress=False, **_batch(ctx))


def _dimensionality(ctx: Context) -> Any:
    """Effective dimensionality; the note says when the sample count bounds the covariance's rank."""
    from lensworks.geometry import effective_dimensionality

    res = effective_dimensionality(ctx.model, ctx.windows("geometry"), progress=False, **_batch(ctx))
    d_model = ctx.facts.d_model
    if res.n_samples > d_model:
        return res
    how = ctx.option("more_samples", "raise n_prompts (CLI: --n-prompts)")
    return dataclasses.replace(res, note=(
        f"Read from {res.n_samples} windows (one sample each, at the last token): the covariance has rank at most "
        f"{res.n_samples - 1}, below d_model={d_model}, so both numbers are bounded by the sample count; {how} for "
        "larger samples."))


def _geometry(name: str) -> Any:
    def run(ctx: Context) -> Any:
        from lensworks import geometry

        return getattr(geometry, name)(ctx.model, ctx.windows("geometry"), progress=False, **_batch(ctx))

    run.__name__ = name
    return run


SECTIONS: tuple[Section, ...] = (
    Section("residual statistics", "geometry", _stats),
    Section("block ablation", "geometry", _geometry("block_ablation")),
    Section("decomposition", "geometry", _geometry("block_decomposition")),
    Section("logit lens", "geometry", _lens),
    Section("effective dimensionality", "geometry", _dimensionality, pair=True),
)

#: Geometry sections the report does not show (the ``geometry`` command runs them).
EXTRA: tuple[Section, ...] = (
    Section("update alignment", "geometry", _geometry("update_alignment")),
)
