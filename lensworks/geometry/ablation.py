"""A block as vector addition: dropping its attention or MLP output, and measuring the pieces."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._deprecation import renamed_arguments
from lensworks._dist import Shard, gather_each, is_distributed
from lensworks._results import Result
from lensworks.geometry import _common
from lensworks.geometry._common import Data, cosine, gather_at, has_hook, iter_batches, kl_divergence, progress_bar
from lensworks.model._compat import logits_from_block, require_finite_activation
from lensworks.model import HookedTransformer, LensworksError, hook_name, processing_state, token_label

__all__ = ["hellinger", "AblationTable", "block_ablation", "BlockDecomposition", "block_decomposition",
           "check_decomposition"]

#: Relative error above which the residual decomposition is reported as not adding up.
DECOMPOSITION_RTOL = 1e-4


def hellinger(p: Float[Tensor, "... d_vocab"], q: Float[Tensor, "... d_vocab"]) -> Float[Tensor, "..."]:
    """Hellinger distance between distributions along the last axis.

    ``H(P, Q) = ||sqrt(P) - sqrt(Q)||_2 / sqrt(2)``: 0 for identical distributions, 1 for
    distributions with disjoint support. It is a metric (symmetric, triangle inequality) and,
    unlike KL, bounded and finite when one side puts zero mass where the other does not.

    Args:
        p: Probabilities (non-negative; each row summing to 1).
        q: Probabilities of the same shape.

    Returns:
        Distances with the last axis removed, clamped to [0, 1] against rounding.

    Example:
        >>> hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
        tensor(1.)
    """
    return _common.hellinger(p, q)


def _component(store: dict[str, Tensor], model: HookedTransformer, kind: str, layer: int, like: Tensor) -> Tensor:
    name = hook_name(kind, layer)
    return store[name] if name in store else torch.zeros_like(like)


def check_decomposition(
    model: HookedTransformer, store: dict[str, Tensor]
) -> tuple[bool, float]:
    """Does ``embed + pos_embed + sum(attn_out) + sum(mlp_out)`` equal the last ``resid_post``?

    ``store`` holds full activations (any batch / position shape) keyed by hook name.
    Returns ``(ok, relative_error)`` where the error is the largest absolute difference over
    the largest norm of the final residual.
    """
    final = store[hook_name("resid_post", model.cfg.n_layers - 1)].double()
    total = store[hook_name("embed")].double().clone()
    if hook_name("pos_embed") in store and model.cfg.positional_embedding_type == "standard":
        total = total + store[hook_name("pos_embed")].double()
    for layer in range(model.cfg.n_layers):
        total = total + _component(store, model, "attn_out", layer, final).double()
        total = total + _component(store, model, "mlp_out", layer, final).double()
    err = float((total - final).abs().max())
    scale = float(final.norm(dim=-1).max().clamp_min(1e-12))
    rel = err / scale
    # each residual add rounds in the model's dtype: about 4e-3 relative per add in bf16
    tol = DECOMPOSITION_RTOL if model.cfg.dtype in (torch.float32, torch.float64) else 2e-2
    return rel <= tol, rel


def _full_names(model: HookedTransformer) -> list[str]:
    names = [hook_name("embed")]
    if hook_name("pos_embed") in model.hook_dict and model.cfg.positional_embedding_type == "standard":
        names.append(hook_name("pos_embed"))
    for layer in range(model.cfg.n_layers):
        for kind in ("resid_pre", "attn_out", "mlp_out", "resid_post"):
            if has_hook(model, kind, layer):
                names.append(hook_name(kind, layer))
    return names


def _run_full(model: HookedTransformer, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    names = set(_full_names(model))
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    acts = {k: require_finite_activation(v, k) for k, v in cache.items()}
    return require_finite_activation(logits, "the logits"), acts


def _combine_checks(worst: float, ok: bool) -> tuple[float, bool]:
    """The decomposition check over all ranks: the largest error, and whether every rank passed."""
    if not is_distributed():
        return worst, ok
    parts = gather_each(torch.tensor([worst, float(not ok)], dtype=torch.float64))
    return max(float(p[0]) for p in parts), not any(float(p[1]) for p in parts)


def _ablate_with_hooks(model: HookedTransformer, tokens: Tensor, layer: int, kind: str) -> Tensor:
    """A full forward pass whose block ``layer`` passes on ``resid_post - <kind>``."""
    held: dict[str, Tensor] = {}

    def grab(act: Tensor, hook) -> None:
        held["c"] = act

    def drop(act: Tensor, hook) -> Tensor:
        return act - held["c"]

    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name(kind, layer), grab), (hook_name("resid_post", layer), drop)])


@dataclass(frozen=True)
class AblationTable(Result):
    """Effect on the next-token distribution of dropping each block's attention or MLP output.

    Per-prompt values have shape ``[n_layers, n_prompts]``. "drop attention" means the block
    passes on ``x + mlp_out`` (``mlp_out`` computed as usual, from ``x + attn_out``); "drop MLP"
    means it passes on ``x + attn_out``. Distances compare with the unmodified model at the
    prompt's read position.

    Attributes:
        drop_attn_hellinger, drop_mlp_hellinger: Hellinger distances.
        drop_attn_kl, drop_mlp_kl: ``KL(normal || ablated)`` in nats.
        drop_attn_top1, drop_mlp_top1: 1.0 where the top token is unchanged.
        decomposition_ok: Whether embed + pos_embed + all attn/MLP outputs reproduced the final
            residual (within a relative error of 1e-4; 2e-2 in bf16/fp16); when not, the ablations' meaning is
            doubtful and a warning was issued.
        decomposition_error: The relative error found.
    """

    drop_attn_hellinger: Float[Tensor, "n_layers n_prompts"]
    drop_mlp_hellinger: Float[Tensor, "n_layers n_prompts"]
    drop_attn_kl: Float[Tensor, "n_layers n_prompts"]
    drop_mlp_kl: Float[Tensor, "n_layers n_prompts"]
    drop_attn_top1: Float[Tensor, "n_layers n_prompts"]
    drop_mlp_top1: Float[Tensor, "n_layers n_prompts"]
    decomposition_ok: bool
    decomposition_error: float
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        """Number of prompts."""
        return self.drop_attn_hellinger.shape[1]

    @staticmethod
    def _std(x: Tensor) -> Tensor:
        return _common.std_or_zero(x, dim=1)

    def caption(self) -> str:
        """What each bar is."""
        return ("Block ablation: for each block, pass on x + mlp_out (attention dropped) or x + attn_out (MLP "
                "dropped) and measure the Hellinger distance between the final next-token distribution and the "
                "normal one; bars are the mean over prompts, whiskers one standard deviation.")

    def headline(self) -> str | None:
        """The single ablation that moves the output most."""
        attn, mlp = self.drop_attn_hellinger.mean(1), self.drop_mlp_hellinger.mean(1)
        which, values = ("attention", attn) if float(attn.max()) >= float(mlp.max()) else ("MLP", mlp)
        b = int(values.argmax())
        line = (f"Largest single ablation: dropping block {b}'s {which} moves the next-token distribution by "
                f"Hellinger {float(values[b]):.3f} on average")
        if float(mlp.abs().sum()) == 0.0:  # attention-only model
            return line + "."
        return line + f" (summed over blocks: attention {float(attn.sum()):.3f}, MLP {float(mlp.sum()):.3f})."

    def to_frame(self):
        """One row per block (0-based ``block``): mean and std of each metric over prompts.

        The std is unbiased; it is 0 with a single prompt. ``*_top1_agreement`` is the fraction
        of prompts whose top token did not change.

        Example:
            >>> block_ablation(zoo.load("char-mlp"), ["def f(x):"]).to_frame().columns[:3].tolist()
            ['block', 'drop_attn_hellinger_mean', 'drop_attn_hellinger_std']
        """
        import pandas as pd

        cols: dict[str, Any] = {"block": list(range(self.drop_attn_hellinger.shape[0]))}
        for metric in ("hellinger", "kl"):
            for which in ("drop_attn", "drop_mlp"):
                x = getattr(self, f"{which}_{metric}")
                cols[f"{which}_{metric}_mean"] = x.mean(1).tolist()
                cols[f"{which}_{metric}_std"] = self._std(x).tolist()
        for which in ("drop_attn", "drop_mlp"):
            cols[f"{which}_top1_agreement"] = getattr(self, f"{which}_top1").mean(1).tolist()
        order = ["block", "drop_attn_hellinger_mean", "drop_attn_hellinger_std", "drop_mlp_hellinger_mean",
                 "drop_mlp_hellinger_std", "drop_attn_kl_mean", "drop_attn_kl_std", "drop_mlp_kl_mean",
                 "drop_mlp_kl_std", "drop_attn_top1_agreement", "drop_mlp_top1_agreement"]
        return pd.DataFrame(cols)[order]

    def figure(self):
        """Grouped bars of the mean Hellinger distance per block, with std error bars."""
        from lensworks.geometry._plots import ablation_figure

        return ablation_figure(self)


@renamed_arguments(prompts="data")
@adaptive_threads
def block_ablation(
    model: HookedTransformer,
    data: Data,
    *,
    position: int = -1,
    batch_size: int = 32,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> AblationTable:
    """For every block, drop its attention or its MLP output and measure the change in prediction.

    One normal forward pass per batch caches each block's output and components; each ablated
    run restarts from the modified block output (``start_at_layer``), so the cost is about
    ``n_layers`` forward passes per batch rather than ``2 n_layers``. Before trusting the
    ablations the function checks that ``embed + pos_embed + sum(attn_out) + sum(mlp_out)``
    reproduces the final residual, and warns (and records) when it does not. An
    attention-only model has no MLP output: its drop-MLP rows are exactly 0.

    Args:
        model: The model.
        data: Strings, a token tensor or an iterable of batches.
        position: The position whose next-token distribution is compared.
        batch_size: Prompts per forward pass.
        prepend_bos: Prepend BOS to string data (default: the model's setting).
        progress: Progress bar (None: only on a terminal).

    Returns:
        An :class:`AblationTable`.

    Example:
        >>> table = block_ablation(zoo.load("char-mlp"), ["def f(x):", "import os"])
        >>> table.to_frame()[["block", "drop_mlp_hellinger_mean"]].round(2).values.tolist()
        [[0.0, 0.84], [1.0, 0.25], [2.0, 0.35], [3.0, 0.28]]
    """
    n_layers = model.cfg.n_layers
    out = {k: [] for k in ("attn_h", "mlp_h", "attn_kl", "mlp_kl", "attn_top", "mlp_top")}
    worst = 0.0
    ok_all = True
    shard = Shard("data", model)
    for toks, idx in progress_bar(
        iter_batches(model, data, batch_size=batch_size, position=position, prepend_bos=prepend_bos,
                     what="data", shard=shard),
        desc="block_ablation", progress=progress,
    ):
        rows = torch.arange(toks.shape[0], device=toks.device)
        logits, store = _run_full(model, toks)
        ok, rel = check_decomposition(model, store)
        ok_all &= ok
        worst = max(worst, rel)
        clean = logits[rows, idx].float().log_softmax(-1)
        res = {k: [] for k in out}
        with torch.inference_mode():
            for layer in range(n_layers):
                post = store[hook_name("resid_post", layer)]
                for which, kind in (("attn", "attn_out"), ("mlp", "mlp_out")):
                    if not has_hook(model, kind, layer):
                        res[f"{which}_h"].append(torch.zeros(len(rows), device=toks.device))
                        res[f"{which}_kl"].append(torch.zeros(len(rows), device=toks.device))
                        res[f"{which}_top"].append(torch.ones(len(rows), device=toks.device))
                        continue
                    if model.cfg.positional_embedding_type == "shortformer":
                        abl = _ablate_with_hooks(model, toks, layer, kind)  # start_at_layer loses the pos embed
                    else:
                        resid = post - store[hook_name(kind, layer)]
                        abl = logits_from_block(model, resid, layer + 1)
                    abl = abl[rows, idx].float().log_softmax(-1)
                    res[f"{which}_h"].append(_common.hellinger(clean.exp(), abl.exp()))
                    res[f"{which}_kl"].append(kl_divergence(clean, abl))
                    res[f"{which}_top"].append((clean.argmax(-1) == abl.argmax(-1)).float())
        for k in out:
            out[k].append(torch.stack(res[k]).cpu())
    worst, ok_all = _combine_checks(worst, ok_all)
    if not ok_all:
        warnings.warn(
            f"block_ablation: embed + pos_embed + sum(attn_out) + sum(mlp_out) does not reproduce the final "
            f"residual (relative error {worst:.2e}); this architecture scales or reorders its residual adds, "
            "so the ablations may not mean what they say",
            stacklevel=2,
        )
    cat = {k: shard.gather(torch.cat(v, dim=1) if v else torch.zeros(n_layers, 0), dim=1) for k, v in out.items()}
    return AblationTable(
        drop_attn_hellinger=cat["attn_h"], drop_mlp_hellinger=cat["mlp_h"], drop_attn_kl=cat["attn_kl"],
        drop_mlp_kl=cat["mlp_kl"], drop_attn_top1=cat["attn_top"], drop_mlp_top1=cat["mlp_top"],
        decomposition_ok=ok_all, decomposition_error=worst, position=position, processing=processing_state(model),
    )


@dataclass(frozen=True)
class BlockDecomposition(Result):
    """How each block's two updates relate to the residual they are added to (per prompt).

    Attributes:
        attn_norm, mlp_norm: ``[n_layers, n_prompts]`` norms of ``attn_out`` and ``mlp_out``.
        attn_cos_input, mlp_cos_input: their cosine with the block input ``resid_pre``.
        attn_mlp_cos: cosine between ``attn_out`` and ``mlp_out`` of the same block.
        mlp_cos_mid: cosine of ``mlp_out`` with ``resid_pre + attn_out`` (what precedes it).
        ffn_path_cos: cosine of ``mlp_out`` of block l with ``embed + sum_{j<l} mlp_out_j``.
        embed_norm: ``[n_prompts]`` norm of the block-0 input (token + position embedding).
        ffn_only_cosine: ``[n_prompts]`` cosine between the final residual and
            ``embed + sum(mlp_out)`` (seed 004: the FFN-only sum points the same way).
        ffn_only_norm_ratio: ``[n_prompts]`` norm of the FFN-only sum over the final residual's.
        prompt_labels: The prompts (strings, or token ids joined) for labels.
    """

    attn_norm: Float[Tensor, "n_layers n_prompts"]
    mlp_norm: Float[Tensor, "n_layers n_prompts"]
    attn_cos_input: Float[Tensor, "n_layers n_prompts"]
    mlp_cos_input: Float[Tensor, "n_layers n_prompts"]
    attn_mlp_cos: Float[Tensor, "n_layers n_prompts"]
    mlp_cos_mid: Float[Tensor, "n_layers n_prompts"]
    ffn_path_cos: Float[Tensor, "n_layers n_prompts"]
    embed_norm: Float[Tensor, " n_prompts"]
    ffn_only_cosine: Float[Tensor, " n_prompts"]
    ffn_only_norm_ratio: Float[Tensor, " n_prompts"]
    prompt_labels: tuple[str, ...]
    position: int = -1
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def caption(self) -> str:
        """How to read the tip-to-tail drawing."""
        return ("The embedding and every block's attention and MLP outputs drawn tip to tail for one prompt: "
                "arrow lengths are the real norms and each arrow's angle to the running sum is the real one. "
                "The title gives the cosine between the final residual and the sum of the embedding and MLP outputs only.")

    def headline(self) -> str | None:
        """Seed 004's observation: does the FFN-only sum point where the residual does?"""
        return (f"The embedding plus all MLP outputs points along the final residual with cosine "
                f"{float(self.ffn_only_cosine.mean()):.3f} on average over {self.ffn_only_cosine.numel()} prompts.")

    def to_frame(self):
        """One row per block: means over prompts of every per-block quantity."""
        import pandas as pd

        cols = {"block": list(range(self.attn_norm.shape[0]))}
        for name in ("attn_norm", "mlp_norm", "attn_cos_input", "mlp_cos_input", "attn_mlp_cos", "mlp_cos_mid",
                     "ffn_path_cos"):
            cols[name + "_mean"] = getattr(self, name).mean(1).tolist()
        return pd.DataFrame(cols)

    def path_full(self, prompt: int):
        """(labels, norms, cos with running sum) for the embed, attn, MLP, attn, ... path."""
        labels, norms, coss = ["embed"], [float(self.embed_norm[prompt])], [1.0]
        for layer in range(self.attn_norm.shape[0]):
            labels += [f"L{layer} attn_out", f"L{layer} mlp_out"]
            norms += [float(self.attn_norm[layer, prompt]), float(self.mlp_norm[layer, prompt])]
            coss += [float(self.attn_cos_input[layer, prompt]), float(self.mlp_cos_mid[layer, prompt])]
        return labels, norms, coss

    def path_ffn_only(self, prompt: int):
        """(labels, norms, cos with running sum) for the embed, MLP, MLP, ... path."""
        labels, norms, coss = ["embed"], [float(self.embed_norm[prompt])], [1.0]
        for layer in range(self.mlp_norm.shape[0]):
            labels.append(f"L{layer} mlp_out")
            norms.append(float(self.mlp_norm[layer, prompt]))
            coss.append(float(self.ffn_path_cos[layer, prompt]))
        return labels, norms, coss

    def figure(self, prompt: int = 0):
        """Seed 004's 2-D tip-to-tail picture for one prompt (lengths and angles to scale)."""
        from lensworks.geometry._plots import decomposition_figure

        if not 0 <= prompt < len(self.prompt_labels):
            raise LensworksError(f"prompt {prompt} is out of range (0..{len(self.prompt_labels) - 1})")
        return decomposition_figure(self, prompt)


@renamed_arguments(prompts="data")
@adaptive_threads
def block_decomposition(
    model: HookedTransformer,
    data: Data,
    *,
    position: int = -1,
    batch_size: int = 64,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> BlockDecomposition:
    """Norms and angles of each block's attention and MLP updates at one position per prompt.

    Reads ``resid_pre``, ``attn_out``, ``mlp_out`` and the final ``resid_post`` at ``position``
    (no full cache is kept) and reports, per block, the updates' norms, their cosines with
    the block input and with each other, and the cosine between the final residual and the
    sum of the embedding and the MLP outputs only.

    Example:
        >>> dec = block_decomposition(zoo.load("char-mlp"), ["def f(x):"])
        >>> round(float(dec.ffn_only_cosine[0]), 2)
        0.96
    """
    n_layers = model.cfg.n_layers
    has_mlp = has_hook(model, "mlp_out", 0)
    names = [hook_name("resid_pre", l) for l in range(n_layers)] + [hook_name("attn_out", l) for l in range(n_layers)]
    if has_mlp:
        names += [hook_name("mlp_out", l) for l in range(n_layers)]
    names.append(hook_name("resid_post", n_layers - 1))
    acc = {k: [] for k in ("an", "mn", "aci", "mci", "amc", "mcm", "fpc", "en", "foc", "fnr")}
    labels: list[str] = []
    shard = Shard("data", model)
    for toks, idx in progress_bar(
        iter_batches(model, data, batch_size=batch_size, position=position, prepend_bos=prepend_bos,
                     what="data", shard=shard),
        desc="block_decomposition", progress=progress,
    ):
        acts, _ = gather_at(model, toks, idx, names)
        for row in range(toks.shape[0]):
            ids = toks[row, : int(idx[row]) + 1].tolist()
            labels.append(token_label(model, ids))
        pre = torch.stack([acts[hook_name("resid_pre", l)] for l in range(n_layers)]).double()
        attn = torch.stack([acts[hook_name("attn_out", l)] for l in range(n_layers)]).double()
        mlp = (torch.stack([acts[hook_name("mlp_out", l)] for l in range(n_layers)]).double()
               if has_mlp else torch.zeros_like(attn))
        final = acts[hook_name("resid_post", n_layers - 1)].double()
        embed = pre[0]
        ffn_running = embed[None] + torch.cumsum(mlp, 0) - mlp  # embed + sum_{j<l} mlp_j
        acc["an"].append(attn.norm(dim=-1))
        acc["mn"].append(mlp.norm(dim=-1))
        acc["aci"].append(cosine(attn, pre))
        acc["mci"].append(cosine(mlp, pre))
        acc["amc"].append(cosine(attn, mlp))
        acc["mcm"].append(cosine(mlp, pre + attn))
        acc["fpc"].append(cosine(mlp, ffn_running))
        acc["en"].append(embed.norm(dim=-1))
        ffn_sum = embed + mlp.sum(0)
        acc["foc"].append(cosine(final, ffn_sum))
        acc["fnr"].append(ffn_sum.norm(dim=-1) / final.norm(dim=-1).clamp_min(1e-30))
    empty = {k: torch.zeros(0) if k in ("en", "foc", "fnr") else torch.zeros(n_layers, 0) for k in acc}
    cat = {k: shard.gather(torch.cat(v, dim=-1).float().cpu() if v else empty[k], dim=-1) for k, v in acc.items()}
    labels = shard.gather_objects(labels)
    return BlockDecomposition(
        attn_norm=cat["an"], mlp_norm=cat["mn"], attn_cos_input=cat["aci"], mlp_cos_input=cat["mci"],
        attn_mlp_cos=cat["amc"], mlp_cos_mid=cat["mcm"], ffn_path_cos=cat["fpc"],
        embed_norm=cat["en"], ffn_only_cosine=cat["foc"], ffn_only_norm_ratio=cat["fnr"],
        prompt_labels=tuple(labels), position=position, processing=processing_state(model),
    )
