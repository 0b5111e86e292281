"""Per-layer residual-stream statistics for contrastive data sets, in one streaming pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._deprecation import renamed_arguments
from lensworks._dist import Shard, gather_each, is_distributed
from lensworks._results import Result
from lensworks.geometry._common import Data, cosine, gather_at, has_hook, iter_batches, progress_bar
from lensworks.model import (
    HookedTransformer, LensworksError, RESIDUAL_STREAMS, hook_name, model_facts, processing_state,
)

__all__ = ["ResidualStats", "UpdateAlignment", "residual_stats", "update_alignment", "STREAMS"]

#: Streams residual_stats can read, per block.
STREAMS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


class _Moments:
    """Mergeable running mean / sum of squared deviations (Chan et al.'s parallel Welford), float64."""

    def __init__(self, shape: tuple[int, ...], device: Any):
        self.n = 0
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.norm_sum = torch.zeros(shape[:-1], dtype=torch.float64, device=device)

    def update(self, x: Tensor) -> None:
        """Add a batch ``[batch, *shape]``."""
        x = x.double()
        if x.shape[0] == 0:
            return
        mb = x.mean(0)
        self.merge(x.shape[0], mb, (x - mb).pow(2).sum(0), x.norm(dim=-1).sum(0))

    def merge(self, nb: int, mb: Tensor, m2b: Tensor, norm_sum_b: Tensor) -> None:
        """Add another set of moments (``nb`` samples with mean ``mb`` and squared deviations ``m2b``)."""
        if nb == 0:
            return
        n = self.n
        total = n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / total)
        self.m2 += m2b + delta.pow(2) * (n * nb / total)
        self.norm_sum += norm_sum_b
        self.n = total

    def merge_ranks(self) -> None:
        """Under torch.distributed: combine every rank's moments, in rank order (no-op alone)."""
        if not is_distributed():
            return
        parts = zip(gather_each(torch.tensor(float(self.n), dtype=torch.float64, device=self.mean.device)),
                    gather_each(self.mean), gather_each(self.m2), gather_each(self.norm_sum))
        self.n = 0
        self.mean.zero_()
        self.m2.zero_()
        self.norm_sum.zero_()
        for n, mean, m2, norm_sum in parts:
            self.merge(int(n), mean, m2, norm_sum)


@dataclass(frozen=True)
class ResidualStats(Result):
    """Per data set, stream and layer: mean vector, unbiased per-feature variance and mean norm.

    Attributes:
        datasets: Data-set names, in the order given.
        streams: Stream names (e.g. ``resid_pre``), in the order given.
        count: Number of samples per data set.
        mean: Per data set, ``[stream, layer, d_model]`` mean vectors.
        var: Per data set, ``[stream, layer, d_model]`` unbiased variances (as ``torch.var``).
        norm_mean: Per data set, ``[stream, layer]`` mean L2 norm of the samples.
        position: The token position read in every prompt (negative counts from each prompt's end).
        processing: The model's weight-processing state.
    """

    datasets: tuple[str, ...]
    streams: tuple[str, ...]
    count: dict[str, int]
    mean: dict[str, Float[Tensor, "stream n_layers d_model"]]
    var: dict[str, Float[Tensor, "stream n_layers d_model"]]
    norm_mean: dict[str, Float[Tensor, "stream n_layers"]]
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return next(iter(self.mean.values())).shape[1]

    def var_mean(self, dataset: str) -> Float[Tensor, "stream n_layers"]:
        """Mean over features of the variance."""
        return self.var[self._check(dataset)].mean(-1)

    def var_max(self, dataset: str) -> Float[Tensor, "stream n_layers"]:
        """Max over features of the variance."""
        return self.var[self._check(dataset)].amax(-1)

    def _check(self, dataset: str) -> str:
        if dataset not in self.mean:
            raise LensworksError(f"unknown data set {dataset!r}; expected one of {list(self.datasets)}")
        return dataset

    def cosine(self, a: str, b: str) -> dict[str, Float[Tensor, " n_layers"]]:
        """Cosine between the mean vectors of data sets ``a`` and ``b``, per stream and layer.

        Example:
            >>> stats = residual_stats(zoo.load("char-mlp"), {"python": ["def f(x):", "import os"],
            ...                                               "prose": ["the cat sat", "a dog ran"]})
            >>> stats.cosine("python", "prose")["resid_post"].shape  # one per layer
            torch.Size([4])
        """
        ma, mb = self.mean[self._check(a)], self.mean[self._check(b)]
        cos = cosine(ma, mb).float()
        return {s: cos[i] for i, s in enumerate(self.streams)}

    def merge(self, other: "ResidualStats") -> "ResidualStats":
        """Combine with statistics of further shards (same streams); data sets of the same name pool.

        The pooled mean and variance equal those of one pass over all samples (Chan et al.'s
        parallel update), so shards can be computed on different machines.

        Example:
            >>> char = zoo.load("char-mlp")
            >>> part1 = residual_stats(char, {"python": ["def f(x):", "x = 1"], "prose": ["the cat sat", "it is"]})
            >>> part2 = residual_stats(char, {"python": ["import os", "y = 2"], "prose": ["a dog ran", "we go"]})
            >>> whole = part1.merge(part2)
            >>> whole.count
            {'python': 4, 'prose': 4}
        """
        if tuple(other.streams) != tuple(self.streams):
            raise LensworksError(f"cannot merge statistics of streams {other.streams} into {self.streams}")
        if other.position != self.position:
            raise LensworksError(f"cannot merge statistics read at position {other.position} and {self.position}")
        count, mean, var, norm = dict(self.count), dict(self.mean), dict(self.var), dict(self.norm_mean)
        for name in other.datasets:
            if name not in count:
                count[name], mean[name], var[name], norm[name] = (
                    other.count[name], other.mean[name], other.var[name], other.norm_mean[name])
                continue
            if mean[name].shape != other.mean[name].shape:
                raise LensworksError(
                    f"data set {name!r}: shapes {tuple(mean[name].shape)} and {tuple(other.mean[name].shape)} differ"
                )
            na, nb = count[name], other.count[name]
            n = na + nb
            ma, mb = mean[name].double(), other.mean[name].double()
            delta = mb - ma
            m2 = var[name].double() * (na - 1) + other.var[name].double() * (nb - 1) + delta.pow(2) * (na * nb / n)
            mean[name] = (ma + delta * (nb / n)).to(self.mean[name].dtype)
            var[name] = (m2 / (n - 1)).to(self.var[name].dtype)
            norm[name] = ((norm[name].double() * na + other.norm_mean[name].double() * nb) / n).to(norm[name].dtype)
            count[name] = n
        names = tuple(self.datasets) + tuple(d for d in other.datasets if d not in self.datasets)
        return dataclasses.replace(self, datasets=names, count=count, mean=mean, var=var, norm_mean=norm)

    def to_frame(self):
        """One row per (dataset, stream, layer): ``var_mean``, ``var_max``, ``norm_mean``, ``n_samples``.

        Example:
            >>> stats = residual_stats(zoo.load("char-mlp"), {"python": ["def f(x):", "import os"],
            ...                                               "prose": ["the cat sat", "a dog ran"]})
            >>> stats.to_frame().columns[:3].tolist()
            ['dataset', 'stream', 'layer']
        """
        import pandas as pd

        rows = []
        for d in self.datasets:
            vm, vx, nm = self.var_mean(d), self.var_max(d), self.norm_mean[d]
            for si, s in enumerate(self.streams):
                for layer in range(self.n_layers):
                    rows.append(
                        dict(dataset=d, stream=s, layer=layer, var_mean=float(vm[si, layer]),
                             var_max=float(vx[si, layer]), norm_mean=float(nm[si, layer]), n_samples=self.count[d])
                    )
        return pd.DataFrame(rows, columns=["dataset", "stream", "layer", "var_mean", "var_max", "norm_mean", "n_samples"])

    def caption(self) -> str:
        """What the panels show."""
        return ("Residual-stream statistics at one token position, per layer and stream (resid_pre, resid_mid, "
                "resid_post): cosine between the two data sets' mean vectors, and the mean and max over features "
                "of the per-feature variance. Growing variance with depth is the effect of summing block outputs.")

    def headline(self) -> str | None:
        """How much the mean per-feature variance grows from the first layer to the last."""
        name = self.datasets[0]
        stream = self.streams[-1] if "resid_post" not in self.streams else "resid_post"
        var = self.var[name][self.streams.index(stream)].mean(-1)
        return (f"Mean per-feature variance of {stream} on {name!r}: {float(var[0]):.3g} at layer 0, "
                f"{float(var[-1]):.3g} at layer {var.numel() - 1}.")

    def figure(self, a: str | None = None, b: str | None = None):
        """Three panels: cosine of the two data sets' means, mean of variance, max of variance.

        ``a`` and ``b`` pick the pair for the cosine panel (default: the first two data sets).
        """
        from lensworks.geometry._plots import residual_stats_figure

        return residual_stats_figure(self, a, b)


def _check_streams(model: HookedTransformer, streams: Sequence[str]) -> tuple[str, ...]:
    if isinstance(streams, str):
        streams = (streams,)
    streams = tuple(streams)
    if not streams:
        raise LensworksError(f"streams: expected at least one of {STREAMS}, got none")
    facts = model_facts(model)
    for s in streams:
        if s not in STREAMS:
            raise LensworksError(f"unknown stream {s!r}; expected one of {STREAMS}")
        if not facts.has_stream(s) or not has_hook(model, s, 0):  # the same answer on both TransformerLens lines
            raise LensworksError(
                f"stream {s!r} does not exist in this model (hook {hook_name(s, 0)!r} is missing; "
                "attention-only and parallel-block models have no resid_mid, attention-only ones no mlp_out)"
            )
    if len(set(streams)) != len(streams):
        raise LensworksError(f"streams has repeated entries: {streams}")
    return streams


@renamed_arguments(datasets="data")
@adaptive_threads
def residual_stats(
    model: HookedTransformer,
    data: Mapping[str, Data],
    *,
    streams: Sequence[str] | None = None,
    position: int = -1,
    batch_size: int = 64,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> ResidualStats:
    """Mean, per-feature variance and mean norm of the residual stream, per data set, stream and layer.

    One streaming pass per data set: batches update a running mean and sum of squared
    deviations (Chan et al.'s parallel form of Welford's algorithm, in float64), so memory does
    not grow with the number of samples. The variance is unbiased, as ``torch.var``.

    Args:
        model: The model.
        data: Data-set name -> data: a list of strings, a ``[batch, pos]`` token tensor, an
            ``ActivationCache`` (or ``{hook: tensor}`` dict) the user already has, or an
            iterable yielding such batches (e.g. a generator, for data sets too large to store).
            Each needs at least 2 samples.
        streams: Which of ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``
            (default: the residual streams the model has: ``resid_pre``, ``resid_mid`` where blocks
            are sequential, ``resid_post``; the result's ``streams`` says which were read).
        position: Token position read in each prompt; negative counts from each prompt's own end.
        batch_size: Prompts per forward pass.
        prepend_bos: Prepend BOS to string prompts (default: the model's setting).
        progress: Show a progress bar (None: only on a terminal).

    Returns:
        A :class:`ResidualStats`.

    Example:
        >>> code_lines = ["def f(x):", "import os", "    return x"]
        >>> text_lines = ["the cat sat", "a dog ran", "it is late"]
        >>> stats = residual_stats(zoo.load("char-mlp"), {"python": code_lines, "prose": text_lines})
        >>> stats.streams, stats.count["python"]
        (('resid_pre', 'resid_mid', 'resid_post'), 3)
        >>> stats.cosine("python", "prose")["resid_post"].shape
        torch.Size([4])
    """
    if not isinstance(data, Mapping) or not data:
        raise LensworksError(f"data: expected a non-empty mapping of name -> data, got {type(data).__name__}")
    if streams is None:
        streams = tuple(st for st in RESIDUAL_STREAMS if model_facts(model).has_stream(st))
    streams = _check_streams(model, streams)
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    names = [hook_name(s, layer) for s in streams for layer in range(n_layers)]
    count, mean, var, norm = {}, {}, {}, {}
    for name, one in data.items():
        acc = _Moments((len(streams), n_layers, d_model), model_facts(model).device)
        for toks, idx in progress_bar(
            iter_batches(model, one, batch_size=batch_size, position=position, prepend_bos=prepend_bos,
                         what=f"data set {name!r}", shard=Shard(f"data set {name!r}", model)),
            desc=f"residual_stats {name}", progress=progress,
        ):
            acts, _ = gather_at(model, toks, idx, names)
            x = torch.stack([acts[n] for n in names], dim=1).view(toks.shape[0], len(streams), n_layers, d_model)
            acc.update(x)
        acc.merge_ranks()
        if acc.n < 2:
            raise LensworksError(f"data set {name!r}: got {acc.n} sample; the unbiased variance needs at least 2")
        count[name] = acc.n
        mean[name] = acc.mean.float().cpu()
        var[name] = (acc.m2 / (acc.n - 1)).float().cpu()
        norm[name] = (acc.norm_sum / acc.n).float().cpu()
    return ResidualStats(
        datasets=tuple(data), streams=streams, count=count, mean=mean, var=var, norm_mean=norm,
        position=position, processing=processing_state(model),
    )


@dataclass(frozen=True)
class UpdateAlignment(Result):
    """Cosine between the mean update directions written by every attention layer and MLP.

    Attributes:
        labels: ``L{layer}.attn`` / ``L{layer}.mlp``, in forward order.
        cosine: ``[update, update]`` cosine of the mean update vectors (0 for a zero update).
        mean_norm: Norm of each mean update vector.
        n_samples: Number of samples averaged.
    """

    labels: tuple[str, ...]
    cosine: Float[Tensor, "update update"]
    mean_norm: Float[Tensor, " update"]
    n_samples: int
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def caption(self) -> str:
        """What the heatmap compares."""
        return ("Cosine between the mean update directions that the attention layers and MLPs write into the "
                "residual stream (mean of attn_out / mlp_out over the samples at one position), every pair. "
                "Large off-diagonal values mean successive layers push the state along shared directions.")

    def headline(self) -> str | None:
        """The most aligned pair of distinct updates."""
        n = self.cosine.shape[0]
        if n < 2:
            return None
        off = self.cosine.clone().fill_diagonal_(-2.0)
        i, j = divmod(int(off.argmax()), n)
        return f"Most aligned updates: {self.labels[i]} and {self.labels[j]} (cosine {float(self.cosine[i, j]):.3f})."

    def to_frame(self):
        """Long format: one row per pair of updates with their cosine."""
        import pandas as pd

        rows = [
            dict(a=a, b=b, cosine=float(self.cosine[i, j]))
            for i, a in enumerate(self.labels) for j, b in enumerate(self.labels)
        ]
        return pd.DataFrame(rows, columns=["a", "b", "cosine"])

    def figure(self):
        """Heatmap of the pairwise cosines."""
        from lensworks.plotting import head_heatmap

        return head_heatmap(
            self.cosine, title="Cosine between mean update directions (attn_out / mlp_out per layer)",
            x_labels=self.labels, y_labels=self.labels, x_title="update (layer.component)",
            y_title="update (layer.component)", colorbar_title="cosine", zmin=-1, zmax=1,
            colorscale="RdBu", hover_name="cosine",
        )


def update_alignment(
    model: HookedTransformer,
    data: Data,
    *,
    position: int = -1,
    batch_size: int = 64,
    progress: bool | None = None,
) -> UpdateAlignment:
    """Do layers push the residual stream along shared directions? Cosines of mean updates.

    For every block, the mean over samples of ``attn_out`` and of ``mlp_out`` (at ``position``)
    is an update direction; the result holds the cosine between every pair of them. High
    off-diagonal values support the hypothesis (seed 000) that successive layers move the
    state along similar directions, which would make the variance grow across layers.

    Example:
        >>> ua = update_alignment(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> ua.cosine.shape  # (2 * n_layers, 2 * n_layers) for a model with MLPs
        torch.Size([8, 8])
    """
    streams = ("attn_out", "mlp_out") if has_hook(model, "mlp_out", 0) else ("attn_out",)
    stats = residual_stats(model, {"data": data}, streams=streams, position=position, batch_size=batch_size,
                           progress=progress)
    mean = stats.mean["data"]  # [stream, layer, d]
    vecs, labels = [], []
    for layer in range(model.cfg.n_layers):
        for si, s in enumerate(streams):
            vecs.append(mean[si, layer])
            labels.append(f"L{layer}.{s.split('_')[0]}")
    v = torch.stack(vecs)
    cos = cosine(v[:, None, :], v[None, :, :]).float()
    return UpdateAlignment(labels=tuple(labels), cosine=cos, mean_norm=v.norm(dim=-1),
                           n_samples=stats.count["data"], position=position, processing=processing_state(model))
