"""Effective dimensionality of the residual stream, layer by layer (seed 001's question: does each
layer mix in more directions?).

For every stream and layer, the covariance of the activations at one position is accumulated
over the data in one streaming pass (sums of ``x`` and ``x x^T`` in float64; under
torch.distributed every rank adds its share). Its eigenvalues give

- the participation ratio ``(sum_i lambda_i)^2 / sum_i lambda_i^2``: 1 when one direction holds all
  the variance, ``d`` when ``d`` directions hold equal shares;
- ``n_components_90``: how many principal components hold 90% of the variance.

Memory: ``streams x layers x d_model^2`` float64 (pass ``layers=`` to bound it on large models).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._dist import Shard, all_reduce_sum
from lensworks._results import Result
from lensworks.geometry._common import Data, gather_at, iter_batches, progress_bar
from lensworks.model import HookedTransformer, LensworksError, check_layer, hook_name, missing_stream_error, processing_state, model_facts

__all__ = ["effective_dimensionality", "EffectiveDimensionality"]


@dataclass(frozen=True)
class EffectiveDimensionality(Result):
    """Covariance spectra of the residual stream per stream and layer, and two summaries.

    Attributes:
        streams: The streams read.
        layers: The layers read.
        eigenvalues: ``[stream, layer, d_model]`` covariance eigenvalues, largest first.
        participation_ratio: ``[stream, layer]`` ``(sum lambda)^2 / sum lambda^2``.
        n_components_90: ``[stream, layer]`` principal components needed for 90% of the variance.
        n_samples: Activations averaged (one per prompt).
        position: The position read in each prompt.
        processing: The model's weight-processing state.
    """

    streams: tuple[str, ...]
    layers: tuple[int, ...]
    eigenvalues: Float[Tensor, "stream layer d_model"]
    participation_ratio: Float[Tensor, "stream layer"]
    n_components_90: Float[Tensor, "stream layer"]
    n_samples: int
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: A note on how this result was made (the report sets one, e.g. why this head or how few
    #: samples); the page shows it under the caption.
    note: str = ""

    def to_frame(self):
        """One row per (layer, stream): ``layer, stream, participation_ratio, n_components_90``."""
        import pandas as pd

        rows = [dict(layer=layer, stream=s, participation_ratio=float(self.participation_ratio[si, li]),
                     n_components_90=int(self.n_components_90[si, li]))
                for li, layer in enumerate(self.layers) for si, s in enumerate(self.streams)]
        return pd.DataFrame(rows, columns=["layer", "stream", "participation_ratio", "n_components_90"])

    def figure(self):
        """Participation ratio and components for 90% of the variance against depth, one line per stream."""
        from lensworks.geometry._plots import dimensionality_figure

        return dimensionality_figure(self)

    def caption(self) -> str:
        """How to read the two panels."""
        return ("Effective dimensionality of the residual stream at one position per prompt: the participation "
                "ratio (sum of covariance eigenvalues squared over the sum of their squares; 1 = one direction, "
                "d = d equal directions) and the number of principal components holding 90% of the variance, "
                "per layer. Rising curves mean each layer mixes in more directions (seed 001).")

    def headline(self) -> str | None:
        """How the participation ratio of the last stream changes from the first layer read to the last."""
        pr = self.participation_ratio[-1]
        return (f"Participation ratio of {self.streams[-1]}: {float(pr[0]):.1f} at layer {self.layers[0]}, "
                f"{float(pr[-1]):.1f} at layer {self.layers[-1]} (d_model {self.eigenvalues.shape[-1]}).")


def spectrum_summary(eigenvalues: Tensor, share: float = 0.9) -> tuple[Tensor, Tensor]:
    """Participation ratio and components for ``share`` of the variance, over the last axis.

    Example:
        >>> pr, k = spectrum_summary(torch.tensor([1.0, 1.0, 1.0, 0.0]))
        >>> float(pr), int(k)
        (3.0, 3)
    """
    lam = eigenvalues.clamp_min(0).double()
    total = lam.sum(-1)
    pr = torch.where(total > 0, total.pow(2) / lam.pow(2).sum(-1).clamp_min(1e-300), torch.zeros_like(total))
    frac = lam.sort(-1, descending=True).values.cumsum(-1) / total.clamp_min(1e-300)[..., None]
    k = (frac < share - 1e-12).sum(-1) + 1
    return pr, torch.where(total > 0, k, torch.zeros_like(k)).double()


@adaptive_threads
def effective_dimensionality(
    model: HookedTransformer,
    data: Data,
    *,
    streams: Sequence[str] = ("resid_pre", "resid_post"),
    layers: Sequence[int] | None = None,
    position: int = -1,
    batch_size: int = 64,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> EffectiveDimensionality:
    """Covariance spectrum of the residual stream per stream and layer, in one streaming pass.

    Args:
        model: The model.
        data: Strings, a token tensor or an iterable of batches (at least 2 samples).
        streams: Streams to read (``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``).
        layers: Layers to read (default all).
        position: Position read in each prompt (negative counts from its end).
        batch_size: Prompts per forward pass.
        prepend_bos: Prepend BOS to strings (default: the model's setting).
        progress: Progress bar (None: only on a terminal).

    Returns:
        An :class:`EffectiveDimensionality`.

    Example:
        >>> ed = effective_dimensionality(zoo.load("char-mlp"), ["def f(x):", "import os", "the cat sat"])
        >>> ed.to_frame().columns.tolist()[:4]
        ['layer', 'stream', 'participation_ratio', 'n_components_90']
    """
    streams = (streams,) if isinstance(streams, str) else tuple(streams)
    missing_stream_error(model, streams)
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(check_layer(model, l) for l in layers)
    if not layers or not streams:
        raise LensworksError("effective_dimensionality needs at least one stream and one layer")
    d = model.cfg.d_model
    names = [hook_name(s, layer) for s in streams for layer in layers]
    device = model_facts(model).device
    s1 = torch.zeros(len(names), d, dtype=torch.float64, device=device)
    s2 = torch.zeros(len(names), d, d, dtype=torch.float64, device=device)
    n = torch.zeros((), dtype=torch.float64)
    shard = Shard("data", model)
    for toks, idx in progress_bar(
        iter_batches(model, data, batch_size=batch_size, position=position, prepend_bos=prepend_bos, what="data",
                     shard=shard),
        desc="effective_dimensionality", progress=progress,
    ):
        acts, _ = gather_at(model, toks, idx, names)
        x = torch.stack([acts[name].double() for name in names])  # [name, batch, d]
        s1 += x.sum(1)
        s2 += x.transpose(1, 2) @ x
        n += x.shape[1]
    s1, s2, n = all_reduce_sum(s1), all_reduce_sum(s2), int(all_reduce_sum(n))
    if n < 2:
        raise LensworksError(f"data: got {n} sample; a covariance needs at least 2")
    mean = s1 / n
    cov = (s2 - n * mean[:, :, None] * mean[:, None, :]) / (n - 1)
    eig = torch.linalg.eigvalsh(((cov + cov.transpose(1, 2)) / 2).cpu()).flip(-1).clamp_min(0)
    pr, k = spectrum_summary(eig)
    shape = (len(streams), len(layers))
    return EffectiveDimensionality(
        streams=streams, layers=layers, eigenvalues=eig.view(*shape, d).float(), participation_ratio=pr.view(shape).float(),
        n_components_90=k.view(shape).float(), n_samples=n, position=position, processing=processing_state(model),
    )
