"""Skip-trigrams of one head: ``destination ... source -> out`` read off its weights (seed 003).

A head attends from a destination token to a source token (its QK circuit) and writes something
that raises some output tokens (its OV circuit). The full OV circuit ``W_E W_V W_O W_U`` scores
every (source, out) pair; the QK circuit ``W_E W_Q W_K^T W_E^T`` scores every (destination,
source) pair. :func:`skip_trigrams` keeps the ``k`` largest OV entries and, for each, the
destination that attends most to that source. Both circuits are ``d_vocab x d_vocab``; they are
never formed: the OV circuit is multiplied in chunks of sources with a running top-k, and the
QK entries are computed only for the ``k`` chosen sources.

Positions are ignored, as in TransformerLens's ``W_E @ QK @ W_E.T``: for rotary or learned
positional models the QK column is the token-only part of the attention score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._heads import HeadId
from lensworks._results import Result
from lensworks.model import (HookedTransformer, LensworksError, attention_weights, check_head, embedding,
                             processing_state, token_strings, unembedding)

__all__ = ["skip_trigrams", "SkipTrigrams"]


@dataclass(frozen=True)
class SkipTrigrams(Result):
    """The ``k`` strongest skip-trigrams of one head.

    Attributes:
        layer, head: The head.
        source, out: ``[k]`` token ids of the ``k`` largest full-OV-circuit entries, largest first.
        destination: ``[k]`` for each source, the destination token with the largest QK entry.
        ov: ``[k]`` ``W_E[source] W_V W_O W_U[:, out]``.
        qk: ``[k]`` ``W_E[destination] W_Q W_K^T W_E[source]^T``.
        source_labels, destination_labels, out_labels: The tokens as strings.
        processing: The model's weight-processing state.
    """

    layer: int
    head: int
    source: Int[Tensor, " k"]
    destination: Int[Tensor, " k"]
    out: Int[Tensor, " k"]
    ov: Float[Tensor, " k"]
    qk: Float[Tensor, " k"]
    source_labels: tuple[str, ...]
    destination_labels: tuple[str, ...]
    out_labels: tuple[str, ...]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: A note on how this result was made (the report sets one, e.g. why this head or how few
    #: samples); the page shows it under the caption.
    note: str = ""

    def to_frame(self):
        """One row per trigram: ``source, destination, out, ov, qk`` (tokens as strings) and their ids."""
        import pandas as pd

        return pd.DataFrame({
            "source": list(self.source_labels), "destination": list(self.destination_labels),
            "out": list(self.out_labels), "ov": self.ov.tolist(), "qk": self.qk.tolist(),
            "source_id": self.source.tolist(), "destination_id": self.destination.tolist(), "out_id": self.out.tolist(),
        })

    @property
    def head_id(self) -> HeadId:
        """The head, as a :class:`~lensworks.HeadId`."""
        return HeadId(self.layer, self.head)

    def figure(self):
        """Bars of the OV entries, labelled ``destination ... source -> out``; hover shows the QK entry."""
        from lensworks.circuits._plots import skip_trigrams_figure

        return skip_trigrams_figure(self)

    def caption(self) -> str:
        """How to read a trigram."""
        return (f"Skip-trigrams of head {self.head_id.label}: each bar is a (source, out) pair with one of the "
                "largest entries of the full OV circuit W_E W_V W_O W_U (attending to the source raises the out token), "
                "labelled with the destination token whose QK entry W_E W_Q W_K^T W_E^T for that source is largest "
                "(positions ignored).")

    def headline(self) -> str | None:
        """The strongest trigram."""
        return (f"{self.head_id.label}'s strongest skip-trigram: {self.destination_labels[0]!r} … "
                f"{self.source_labels[0]!r} → {self.out_labels[0]!r} (OV {float(self.ov[0]):.3f}).")


def skip_trigrams(model: HookedTransformer, layer: int, head: int, *, k: int = 20,
                  source_chunk: int = 2048) -> SkipTrigrams:
    """The ``k`` largest full-OV-circuit entries of one head, each with its best destination.

    Args:
        model: The model.
        layer: The head's layer.
        head: The head (grouped-query heads are mapped to their key/value heads).
        k: How many (source, out) pairs.
        source_chunk: Sources multiplied at a time (memory ``source_chunk x d_vocab`` floats).

    Returns:
        A :class:`SkipTrigrams`; ``to_frame()`` has columns ``source, destination, out, ov, qk``.

    Example:
        >>> tri = skip_trigrams(model, 1, 2, k=5)
        >>> tri.to_frame()[["destination", "source", "out"]].iloc[0].tolist()
        ['ho', 'ji', '<bos>']
    """
    layer, head = check_head(model, layer, head)
    V = model.cfg.d_vocab
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= V * model.cfg.d_vocab_out:
        raise LensworksError(f"k must be an int in [1, d_vocab * d_vocab_out], got {k!r}")
    if not isinstance(source_chunk, int) or source_chunk < 1:
        raise LensworksError(f"source_chunk must be a positive int, got {source_chunk!r}")
    w = attention_weights(model, [layer])
    W_E, W_U = embedding(model), unembedding(model)  # model dtype: upcast a slice at a time
    with torch.inference_mode():
        left = _float_rows_times(W_E, w["W_V"][0, head].float())  # [V, d_head]
        right = _float_rows_times(W_U.T, w["W_O"][0, head].float().T).T  # [d_head, V_out]
        best_v = torch.full((0,), float("-inf"), device=left.device)
        best_i = torch.zeros(0, dtype=torch.long, device=left.device)
        n_out = right.shape[1]
        for start in range(0, V, source_chunk):
            block = (left[start : start + source_chunk] @ right).flatten()  # [chunk * V_out]
            if best_v.numel() == k:  # only entries above the k-th best so far can enter: one linear pass
                idx = (block > best_v[-1]).nonzero()[:, 0]
                vals = block[idx]
            else:  # (a full sort-based top-k of a 10^8-entry block takes seconds on a CPU)
                vals, idx = block.topk(min(k, block.numel()))
            if not vals.numel():
                continue
            best_v, order = torch.cat([best_v, vals]).topk(min(k, best_v.numel() + vals.numel()))
            best_i = torch.cat([best_i, idx + start * n_out])[order]
        source, out = best_i // n_out, best_i % n_out
        q = _float_rows_times(W_E, w["W_Q"][0, head].float())  # [V, d_head]: every destination's query
        keys = W_E[source].float() @ w["W_K"][0, head].float()  # [k, d_head]: the chosen sources' keys
        qk_all = q @ keys.T  # [V, k]
        qk, destination = qk_all.max(0)
    return SkipTrigrams(
        layer=layer, head=head, source=source.cpu(), destination=destination.cpu(), out=out.cpu(),
        ov=best_v.cpu(), qk=qk.cpu(), source_labels=tuple(token_strings(model, source.cpu())),
        destination_labels=tuple(token_strings(model, destination.cpu())),
        out_labels=tuple(token_strings(model, out.cpu())), processing=processing_state(model),
    )


def _float_rows_times(a: Tensor, b: Tensor, chunk: int = 16384) -> Tensor:
    """``a.float() @ b`` with ``a`` upcast ``chunk`` rows at a time (a 128k-token bf16 embedding
    would otherwise be copied whole to float32: 2 GiB)."""
    return torch.cat([a[s : s + chunk].float() @ b for s in range(0, a.shape[0], chunk)])
