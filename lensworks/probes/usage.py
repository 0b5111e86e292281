"""Do middle layers use the unembedding directions of tokens the model rules out?

Hypothesis (research note 002): directions of tokens that are near-impossible in context are
free real estate, so a model may use them for intermediate computation in the middle layers
and remove them before the unembedding. ``unlikely_token_usage`` measures, at each prompt's
last position and at every depth, the share of the residual's squared norm that lies in the
span of the unembedding columns of the ``k`` tokens the model finds least likely next,
against random sets of ``k`` tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._dist import is_main
from lensworks._deprecation import renamed_arguments
from lensworks._results import Reference, Result, require_finite
from lensworks.model._compat import capture_hooks, require_finite_parameters
from lensworks.model import HookedTransformer, LensworksError, check_int, hook_name, processing_state, unembedding
from lensworks.probes._data import model_tokens
from lensworks.probes._nulls import check_null_options, null_interval

__all__ = ["UnlikelyTokenUsage", "unlikely_token_usage"]


@dataclasses.dataclass(frozen=True)
class UnlikelyTokenUsage(Result):
    """Share of the residual in the span of the least likely tokens' unembedding directions.

    Attributes:
        k: Tokens per set.
        depth_labels: ``"embed"`` (``resid_pre`` of layer 0) then ``"L{l} out"``
            (``resid_post`` of each layer).
        share_unlikely: Mean over prompts, per depth.
        share_likely: The same for the ``k`` most likely tokens.
        random_mean / random_lo / random_hi: Mean and interval over random ``k``-token sets
            (each draw averaged over prompts).
        per_prompt_unlikely: ``[n_prompts, n_depth]``.
        unlikely_tokens: ``[n_prompts, k]`` ids of the least likely next tokens.
        options: Options used.
        processing: The model's weight-processing state.
        random_std: Standard deviation over the random sets, per depth (None in results built
            before it was recorded).

    :meth:`references` gives the random sets as one :class:`~lensworks._results.Reference`.
    """

    k: int
    depth_labels: tuple[str, ...]
    share_unlikely: Float[Tensor, "n_depth"]
    share_likely: Float[Tensor, "n_depth"]
    random_mean: Float[Tensor, "n_depth"]
    random_lo: Float[Tensor, "n_depth"]
    random_hi: Float[Tensor, "n_depth"]
    per_prompt_unlikely: Float[Tensor, "n_prompts n_depth"]
    unlikely_tokens: Int[Tensor, "n_prompts k"]
    options: dict[str, Any]
    processing: dict[str, Any]
    random_std: Float[Tensor, "n_depth"] | None = None

    def references(self) -> dict[str, Reference]:
        """``{"random": ...}``: the share for random ``k``-token sets, one entry per depth."""
        std = self.random_std if self.random_std is not None else float("nan")
        return {**super().references(), "random": Reference(
            mean=self.random_mean, std=std, lo=self.random_lo, hi=self.random_hi, n=int(self.options["n_random"]),
            kind="null", label=f"random {self.k}-token sets")}

    def to_frame(self):
        """One row per depth.

        Example:
            >>> usage = unlikely_token_usage(zoo.load("char-mlp"), ["def f(x):", "import os"], k=5)
            >>> list(usage.to_frame().columns)[:2]
            ['depth', 'share_unlikely']
        """
        import pandas as pd

        return pd.DataFrame(
            {
                "depth": list(self.depth_labels),
                "share_unlikely": self.share_unlikely.tolist(),
                "share_likely": self.share_likely.tolist(),
                "random_mean": self.random_mean.tolist(),
                "random_lo": self.random_lo.tolist(),
                "random_hi": self.random_hi.tolist(),
            }
        )

    def caption(self) -> str:
        """What the share measures."""
        return (f"How much of the residual stream lies in the span of the {self.k} tokens the model finds least likely "
                f"next (their unembedding directions), per depth, beside the {self.k} most likely tokens and random "
                "token sets of the same size.")

    def headline(self) -> str | None:
        """The share at the last depth against random token sets."""
        random = self.references()["random"].at(-1)
        return (f"At {self.depth_labels[-1]}, {float(self.share_unlikely[-1]):.1%} of the residual lies along the "
                f"{self.k} least likely tokens ({random.describe('.1%')}).")

    def figure(self):
        """Share against depth, with the random-set band.

        Example:
            >>> usage = unlikely_token_usage(zoo.load("char-mlp"), ["def f(x):", "import os"], k=5)
            >>> fig = usage.figure()
        """
        from lensworks.probes._plots import unlikely_usage_figure

        return unlikely_usage_figure(self)


def _span_share(x: Tensor, dirs: Tensor) -> Tensor:
    """``||Q^T x||^2 / ||x||^2`` with ``Q`` an orthonormal basis of the columns of ``dirs``.

    x: ``[..., depth, d]``; dirs: ``[..., d, k]``. Returns ``[..., depth]``.
    """
    q, _ = torch.linalg.qr(dirs)
    proj = x @ q
    return (proj**2).sum(-1) / (x**2).sum(-1).clamp_min(1e-300)


@renamed_arguments(prompts="data")
def unlikely_token_usage(
    model: HookedTransformer,
    data: Union[Sequence[str], Tensor],
    *,
    k: int = 10,
    n_random: int = 20,
    seed: int = 0,
    batch_size: int = 16,
    interval: float = 0.95,
    progress: bool | None = None,
) -> UnlikelyTokenUsage:
    """Per layer, how much of the residual lies along the least likely tokens' unembeddings.

    For each prompt, take its last position, the model's final logits there, and the ``k``
    tokens with the lowest logits. At every depth (``resid_pre`` of layer 0, then
    ``resid_post`` of each layer) compute ``||Q^T x||^2 / ||x||^2`` where ``Q`` is an
    orthonormal basis of those tokens' ``W_U`` columns. The same share for the ``k`` most
    likely tokens and for ``n_random`` random ``k``-token sets (uniform without replacement)
    is reported beside it; a random ``k``-dimensional subspace holds about ``k / d_model`` of
    an isotropic vector. Under the hypothesis, the unlikely share rises above the random band
    in the middle layers and falls back at the end.

    Args:
        model: The model.
        data: Strings (tokenized one by one) or a ``[batch, pos]`` token tensor.
        k: Tokens per set, ``1 <= k < d_model`` and ``k <= d_vocab``.
        n_random: Random sets drawn.
        seed: Seed of the random sets.
        batch_size: Prompts per forward pass.
        interval: Central probability of the random band.
        progress: Show a progress bar (None: only on a terminal).

    Returns:
        An :class:`UnlikelyTokenUsage`.

    Example:
        >>> char = zoo.load("char-mlp")
        >>> usage = unlikely_token_usage(char, ["def f(x):", "import os"], k=5)
        >>> usage.share_unlikely.shape[0] == char.cfg.n_layers + 1
        True
    """
    d, V = model.cfg.d_model, model.cfg.d_vocab_out
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise LensworksError(f"k must be a positive int, got {k!r}")
    if k > V:
        raise LensworksError(f"k={k} is larger than the vocabulary ({V} tokens)")
    if k >= d:
        raise LensworksError(f"k={k} must be smaller than d_model={d}, or the span of k directions is the whole residual stream")
    check_null_options(n_random, interval)
    seed = check_int(seed, "seed")
    batch_size = check_int(batch_size, "batch_size", low=1)
    toks, lengths = model_tokens(model, data, what="data")
    require_finite_parameters(model)
    n_layers = model.cfg.n_layers
    names = [hook_name("resid_pre", 0)] + [hook_name("resid_post", l) for l in range(n_layers)]
    wu = unembedding(model).double()
    gen = torch.Generator().manual_seed(seed)
    shares_u, shares_l, shares_r, lows = [], [], [], []
    disable = None if progress is None else not progress
    for s in tqdm(range(0, toks.shape[0], batch_size), desc="unlikely-token usage", disable=True if not is_main() else disable,
                  leave=False):
        batch, lens = toks[s : s + batch_size], lengths[s : s + batch_size]
        rows = torch.arange(len(batch), device=batch.device)
        store: dict[str, Tensor] = {}

        def grab(name: str, act: Tensor) -> None:
            store[name] = act[rows, lens - 1].double()

        with torch.inference_mode():
            logits = model.run_with_hooks(batch, fwd_hooks=capture_hooks(names, grab), return_type="logits")
        last = logits[rows, lens - 1].double()  # [b, V]
        x = torch.stack([store[n] for n in names], dim=1)  # [b, depth, d]
        low = last.topk(k, dim=-1, largest=False).indices
        high = last.topk(k, dim=-1).indices
        shares_u.append(_span_share(x, wu.T[low].transpose(1, 2)))
        shares_l.append(_span_share(x, wu.T[high].transpose(1, 2)))
        rand = torch.stack([torch.stack([torch.randperm(V, generator=gen)[:k] for _ in range(n_random)]) for _ in range(len(batch))])
        dirs = wu.T[rand.to(wu.device)].transpose(-1, -2)  # [b, n_random, d, k]
        shares_r.append(_span_share(x[:, None], dirs))  # [b, n_random, depth]
        lows.append(low.cpu())
    per_prompt = torch.cat(shares_u)
    rnd = torch.cat(shares_r).mean(0)  # [n_random, depth], each draw averaged over prompts
    lo, hi = null_interval(rnd, interval)
    require_finite("unlikely-token share", per_prompt)
    return UnlikelyTokenUsage(
        k=k,
        depth_labels=("embed",) + tuple(f"L{l} out" for l in range(n_layers)),
        share_unlikely=per_prompt.mean(0).float().cpu(),
        share_likely=torch.cat(shares_l).mean(0).float().cpu(),
        random_mean=rnd.mean(0).float().cpu(),
        random_lo=lo.float().cpu(),
        random_hi=hi.float().cpu(),
        per_prompt_unlikely=per_prompt.float().cpu(),
        unlikely_tokens=torch.cat(lows),
        options={"n_random": n_random, "seed": seed, "interval": interval, "batch_size": batch_size},
        processing=processing_state(model),
        random_std=rnd.std(0).float().cpu(),
    )
