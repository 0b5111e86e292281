"""Which residual streams the probes read, and where each sits along its block.

A leaf module (it imports nothing from :mod:`lensworks.probes`), so that the fitting code and
the figures can both import it.
"""

from __future__ import annotations

from typing import Sequence

from lensworks.model import HookedTransformer, LensworksError, missing_stream_error, model_streams

__all__ = ["DEFAULT_STREAMS", "PROBE_STREAMS", "STREAM_DEPTH", "resolve_streams"]

#: The streams probed by default. ``resid_mid`` is dropped from the default for models that
#: have no MLP (attention-only or parallel attention/MLP blocks), where it is never computed.
DEFAULT_STREAMS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

#: Every stream a probe may read.
PROBE_STREAMS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

#: Where each stream sits along the residual stream of its block (for plots).
STREAM_DEPTH: dict[str, float] = {"resid_pre": 0.0, "attn_out": 0.4, "resid_mid": 0.5, "mlp_out": 0.9, "resid_post": 1.0}


def resolve_streams(model: HookedTransformer, streams: Sequence[str] | str | None) -> tuple[tuple[str, ...], list[str]]:
    """The streams to probe, checked against the model, and the default ones it skipped.

    ``None`` means "the model's default streams": :data:`DEFAULT_STREAMS` less those the
    model does not compute (``resid_mid`` on attention-only and parallel-block models), which
    are returned as skipped. Any explicit value, including a tuple equal to
    :data:`DEFAULT_STREAMS`, is taken as asked: nothing is skipped, and a stream the model
    lacks is an error. On a model that has every default stream both spellings give the same
    streams.

    Args:
        model: The model.
        streams: None, one stream name, or a sequence of names from :data:`PROBE_STREAMS`.

    Returns:
        ``(streams, skipped)``.

    Example:
        >>> resolve_streams(zoo.load("char-mlp"), None)
        (('resid_pre', 'resid_mid', 'resid_post'), [])
        >>> resolve_streams(zoo.load("induction-2l"), None)  # attention only: no resid_mid
        (('resid_pre', 'resid_post'), ['resid_mid'])
    """
    skipped: list[str] = []
    if streams is None:
        streams = model_streams(model, DEFAULT_STREAMS)
        skipped = [s for s in DEFAULT_STREAMS if s not in streams]
    if isinstance(streams, str):
        streams = (streams,)
    streams = tuple(streams)
    if not streams:
        raise LensworksError("streams is empty; expected some of " + ", ".join(PROBE_STREAMS))
    for s in streams:
        if s not in PROBE_STREAMS:
            raise LensworksError(f"unknown stream {s!r}; expected one of {list(PROBE_STREAMS)}")
    if len(set(streams)) != len(streams):
        raise LensworksError(f"streams has repeated entries: {list(streams)}")
    missing_stream_error(model, streams)
    return streams, skipped
