"""The probes sections of the report (and of ``lensworks probes``), in page order.

They read ``ctx.windows("probes")`` (twice as many text windows as geometry, or the windows a
CLI gives). Options read: ``method``, ``offsets``, ``streams``, ``shared``, ``controls``,
``batch_size`` (passed to :func:`lensworks.probes.probe_inputs` when given) and ``n_random``
(random matrices of the comparison, default 50).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lensworks.report._context import Context
from lensworks.report._sections import Section

__all__ = ["SECTIONS"]

_PROBE_OPTIONS = ("method", "offsets", "streams", "shared", "controls", "batch_size")


def probe(ctx: Context) -> Any:
    """Input-token probes (the comparison reads them too; fitted once)."""
    from lensworks.probes import probe_inputs

    given = {k: ctx.options[k] for k in _PROBE_OPTIONS if ctx.options.get(k) is not None}
    return ctx.shared("probe", lambda: probe_inputs(ctx.model, ctx.windows("probes"), seed=ctx.seed, progress=False,
                                                    **given))


def last_probe(ctx: Context) -> tuple[int, str, int]:
    """``(layer, stream, offset)`` of the probe the comparison reads: the last layer and stream,
    the first offset."""
    res = probe(ctx)
    return res.layers[-1], res.streams[-1], res.offsets[0]


def _compare(ctx: Context) -> Any:
    """The last probe against the embedding; the note says which probe."""
    from lensworks.probes import compare_to_embedding

    res, last = probe(ctx), last_probe(ctx)
    cmp = compare_to_embedding(ctx.model, res.weights(*last), tokens=res.classes, n_random=ctx.option("n_random", 50),
                               seed=ctx.seed)
    return dataclasses.replace(cmp, note=f"The probe compared: the input token at offset {last[2]}, read from layer "
                                         f"{last[0]} {last[1]}.")


def _basis(ctx: Context) -> Any:
    from lensworks.probes import embedding_basis

    f = ctx.facts
    return embedding_basis(ctx.model, "pca", k=min(f.d_model, f.d_vocab, 32))


SECTIONS: tuple[Section, ...] = (
    Section("input-token probes", "probes", probe),
    Section("comparison with W_E", "probes", _compare, pair=True),
    Section("embedding basis", "probes", _basis),
)
