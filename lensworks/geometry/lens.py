"""Logit lens: the next-token distribution read from every layer's residual stream."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._deprecation import renamed_arguments
from lensworks._dist import Shard, gather_each
from lensworks._results import Result
from lensworks.geometry._common import (CachedBatch, Data, gather_at, iter_batches, kl_divergence, progress_bar, softcap,
                                         std_or_zero)
from lensworks.model import HookedTransformer, LensworksError, check_int, hook_name, processing_state, token_label

__all__ = ["LogitLens", "logit_lens", "read_logits"]


def read_logits(model: HookedTransformer, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab_out"]:
    """Logits the model would give if ``resid`` were its final residual stream.

    Each vector is normalised by the model's final LayerNorm / RMSNorm with its *own* mean and
    scale (never the statistics of another layer), then unembedded, then soft-capped when the
    model caps its logits. On the last layer's ``resid_post`` this is exactly the model's output.

    Example:
        >>> read_logits(model, torch.zeros(model.cfg.d_model)).shape
        torch.Size([151])
    """
    with torch.inference_mode():
        x = resid
        if model.cfg.normalization_type is not None:
            x = model.ln_final(x)
        return softcap(model, model.unembed(x))


@dataclass(frozen=True)
class LogitLens(Result):
    """Per-layer next-token predictions read off the residual stream.

    Rows are ``embed`` (input of block 0) then ``L0`` ... ``L{n-1}`` (each block's output).

    Attributes:
        layer_labels: Row labels.
        kl: ``[layer, prompt]`` KL(final || layer) in nats; the last row is 0.
        top_tokens: ``[layer, prompt, k]`` most likely token ids at each layer.
        top_probs: ``[layer, prompt, k]`` their probabilities.
        final_token_prob: ``[layer, prompt]`` probability each layer gives the model's final top token.
        top_token_labels: ``[layer][prompt]`` string of the top token (ids when no tokenizer).
        prompt_labels: The prompts as text.
        final_max_error: Largest |lens logits - model logits| on the last row (should be ~0).
    """

    layer_labels: tuple[str, ...]
    kl: Float[Tensor, "layer n_prompts"]
    top_tokens: Int[Tensor, "layer n_prompts k"]
    top_probs: Float[Tensor, "layer n_prompts k"]
    final_token_prob: Float[Tensor, "layer n_prompts"]
    top_token_labels: tuple[tuple[str, ...], ...]
    prompt_labels: tuple[str, ...]
    final_max_error: float
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def top_token_strings(self) -> tuple[tuple[str, ...], ...]:
        """Top-1 token string per layer and prompt."""
        return self.top_token_labels

    def to_frame(self):
        """One row per layer: mean/std of the KL to the final distribution, top-1 agreement with
        the final prediction, mean probability of the final top token.

        Example:
            >>> logit_lens(zoo.load("char-mlp"), ["def f(x):"]).to_frame().columns.tolist()[:3]
            ['layer', 'kl_mean', 'kl_std']
        """
        import pandas as pd

        agree = (self.top_tokens[..., 0] == self.top_tokens[-1:, :, 0]).float().mean(1)
        return pd.DataFrame({
            "layer": list(self.layer_labels),
            "kl_mean": self.kl.mean(1).tolist(),
            "kl_std": std_or_zero(self.kl, dim=1).tolist(),
            "top1_agreement": agree.tolist(),
            "final_token_prob_mean": self.final_token_prob.mean(1).tolist(),
        })

    def caption(self) -> str:
        """How the lens reads each layer."""
        return ("Logit lens: the residual stream after each block read through the final LayerNorm (with its own "
                "statistics) and the unembedding; colour is KL(final ‖ layer) in nats, hover shows that layer's top token.")

    def headline(self) -> str | None:
        """The first layer whose top token agrees with the final one on most prompts."""
        agree = (self.top_tokens[..., 0] == self.top_tokens[-1:, :, 0]).float().mean(1)
        first = next(i for i in range(len(self.layer_labels)) if float(agree[i]) >= 0.5)
        return (f"The final top token is already the top token at {self.layer_labels[first]} on "
                f"{float(agree[first]):.0%} of prompts (mean KL there {float(self.kl[first].mean()):.3f} nats).")

    def figure(self):
        """Heatmap of KL(final || layer) per layer and prompt; hover shows the top token."""
        from lensworks.geometry._plots import logit_lens_figure

        return logit_lens_figure(self)


@renamed_arguments(prompts="data")
@adaptive_threads
def logit_lens(
    model: HookedTransformer,
    data: Data,
    *,
    position: int = -1,
    top_k: int = 5,
    batch_size: int = 32,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> LogitLens:
    """Read the next-token distribution from the residual stream before block 0 and after each block.

    Each residual vector goes through the final normalisation with its own statistics, then
    the unembedding (:func:`read_logits`); the last row therefore reproduces the model's
    logits, which is checked (``final_max_error``). Cost: one forward pass plus
    ``n_layers + 1`` unembeddings of one vector per prompt.

    Args:
        model: The model.
        data: Strings, a token tensor, an iterable of batches, or activations already cached
            (an ``ActivationCache`` from ``model.run_with_cache(tokens)``, or a ``{hook: tensor}``
            dict): the model is then not run again.
        position: Position read in each prompt (negative counts from each prompt's end).
        top_k: How many top tokens to keep per layer.
        batch_size: Prompts per forward pass.
        prepend_bos: Prepend BOS to string data (default: the model's setting).
        progress: Progress bar (None: only on a terminal).

    Returns:
        A :class:`LogitLens`.

    Example:
        >>> lens = logit_lens(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> lens.to_frame()["layer"].tolist()
        ['embed', 'L0', 'L1', 'L2', 'L3']
        >>> round(float(lens.to_frame()["kl_mean"].iloc[-1]), 6)  # the last layer reproduces the logits
        0.0
    """
    n_layers = model.cfg.n_layers
    k = min(check_int(top_k, "top_k", low=1), model.cfg.d_vocab_out)
    names = [hook_name("resid_pre", 0)] + [hook_name("resid_post", l) for l in range(n_layers)]
    parts = {k_: [] for k_ in ("kl", "tt", "tp", "ftp")}
    prompt_labels: list[str] = []
    worst = 0.0
    shard = Shard("data", model)
    for toks, idx in progress_bar(
        iter_batches(model, data, batch_size=batch_size, position=position, prepend_bos=prepend_bos,
                     what="data", shard=shard),
        desc="logit_lens", progress=progress,
    ):
        acts, model_logits = gather_at(model, toks, idx, names, logits=True)
        resid = torch.stack([acts[n] for n in names])  # [layer, batch, d_model]
        logits = read_logits(model, resid).float()
        worst = max(worst, float((logits[-1] - model_logits).abs().max()))
        logp = logits.log_softmax(-1)
        parts["kl"].append(kl_divergence(logp[-1:], logp).cpu())
        tp, tt = logp.exp().topk(k, dim=-1)
        parts["tt"].append(tt.cpu())
        parts["tp"].append(tp.cpu())
        final_top = tt[-1, :, 0]
        parts["ftp"].append(logp.exp().gather(-1, final_top[None, :, None].expand(len(names), -1, 1))[..., 0].cpu())
        for row in range(toks.shape[0]):
            prompt_labels.append(toks.label(row) if isinstance(toks, CachedBatch)
                                 else token_label(model, toks[row, : int(idx[row]) + 1].tolist()))
    empty = {"kl": torch.zeros(len(names), 0), "tt": torch.zeros(len(names), 0, k, dtype=torch.long),
             "tp": torch.zeros(len(names), 0, k), "ftp": torch.zeros(len(names), 0)}
    cat = {k_: shard.gather(torch.cat(v, dim=1) if v else empty[k_], dim=1) for k_, v in parts.items()}
    prompt_labels = shard.gather_objects(prompt_labels)
    worst = max(float(w) for w in gather_each(torch.tensor(worst, dtype=torch.float64)))
    top1 = cat["tt"][..., 0]
    labels = tuple(tuple(token_label(model, [int(t)]) for t in row) for row in top1.tolist())
    return LogitLens(
        layer_labels=("embed",) + tuple(f"L{l}" for l in range(n_layers)), kl=cat["kl"], top_tokens=cat["tt"],
        top_probs=cat["tp"], final_token_prob=cat["ftp"], top_token_labels=labels,
        prompt_labels=tuple(prompt_labels), final_max_error=worst, position=position,
        processing=processing_state(model),
    )
