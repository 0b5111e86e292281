"""The seam between TransformerLens 3.x (``HookedTransformer``) and 4.x (``TransformerBridge``).

Everything that differs between the two lines is decided here, behind small functions; the
analyses never ask which line they run on. Facts this module relies on (TransformerLens 4.3):

- ``from transformer_lens import HookedTransformer`` raises ImportError on 4.x.
- A bridge speaks HookedTransformer's hook names and weight conventions only after
  ``enable_compatibility_mode()``; before that, legacy names still resolve (no error) but the
  weights are in the raw Hugging Face basis, so lensworks refuses such a bridge.
- Inside a hook callback, ``hook.name`` of ``blocks.{l}.hook_resid_pre`` / ``hook_resid_post`` is
  the bridge's own ``hook_in`` / ``hook_out``: key captured activations by the name asked for.
- GQA ``W_K`` / ``W_V`` keep ``n_key_value_heads``; bias-free layers return None for ``b_*``;
  Gemma's ``W_E`` is unscaled (the sqrt(d_model) factor is applied at run time);
  ``start_at_layer == n_layers`` raises; ``normalization_type`` stays "LN"/"RMS" after folding.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from lensworks.model._core import HookedTransformer, LensworksError, NonFiniteError

#: Major version of the installed transformer-lens (3 or 4).
TL_MAJOR = int(importlib.metadata.version("transformer-lens").split(".")[0])


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens 4 ``TransformerBridge``."""
    return any(c.__name__ == "TransformerBridge" and c.__module__.startswith("transformer_lens.model_bridge")
               for c in type(model).__mro__)


def is_model(obj: Any) -> bool:
    """True for the model kinds lensworks accepts: a HookedTransformer or a TransformerBridge."""
    return (HookedTransformer is not None and isinstance(obj, HookedTransformer)) or is_bridge(obj)


def check_model(model: Any) -> None:
    """Raise unless ``model`` is a HookedTransformer or a bridge in compatibility mode.

    Example:
        >>> check_model("gpt2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lensworks.errors.LensworksError: expected a TransformerLens model: ... Got str
    """
    if not is_model(model):
        raise LensworksError(
            "expected a TransformerLens model: a HookedTransformer (TransformerLens 3) or a TransformerBridge in "
            f"compatibility mode (TransformerLens 4); lensworks.load_model(path) makes one. Got {type(model).__name__}"
        )
    if is_bridge(model) and not getattr(model, "compatibility_mode", False):
        raise LensworksError(
            "this TransformerBridge is not in compatibility mode: call model.enable_compatibility_mode() "
            "(or enable_compatibility_mode(no_processing=True)) first, so that it has HookedTransformer's hook "
            "names and weight layout, or load it with lensworks.load_model(path)"
        )


@contextlib.contextmanager
def quiet():
    """Silence TransformerLens and transformers while they build or process a model."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers without these helpers
        hf_logging, bars = None, False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- weights


def require_finite_weight(tensor: Tensor, name: str) -> Tensor:
    """Return ``tensor``, or raise naming it and counting its NaN / inf entries.

    ``where(denom > 0, ...)`` guards further down would otherwise turn NaN into plausible zeros.

    Example:
        >>> require_finite_weight(torch.tensor([1.0, float("nan")]), "W_U of the unembedding")
        Traceback (most recent call last):
        lensworks.errors.NonFiniteError: W_U of the unembedding holds 1 NaN; no analysis can be computed from it
    """
    if tensor.is_floating_point() and not all_finite(tensor):
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(torch.isinf(tensor).sum())
        parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else ""]
        raise NonFiniteError(f"{name} holds {' and '.join(p for p in parts if p)}; no analysis can be computed from it")
    return tensor


def require_finite_parameters(model: Any) -> None:
    """Raise naming the first parameter or buffer that holds NaN or inf.

    Forward-based analyses call this once per call: TransformerLens turns a NaN attention
    score into zero attention, so one NaN weight yields finite, plausible and wrong
    activations that no activation check would catch. Read in slices (see :func:`all_finite`).

    Example:
        >>> require_finite_parameters(zoo.load("char-mlp"))  # returns None: every weight is finite
    """
    for name, tensor in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                          if b.is_floating_point() and not n.endswith(("IGNORE", "mask"))]:
        require_finite_weight(tensor.detach(), f"the weight {name.replace('._original_component', '')}")


def all_finite(tensor: Tensor, *, chunk_elements: int = 1 << 24) -> bool:
    """Whether every entry is finite, read in slices of about ``chunk_elements`` entries.

    ``torch.isfinite`` of a whole bf16 tensor on the CPU works through a float32 copy: 2.4 GiB
    for a Llama-3 shape's 128k-token embedding, checked by every analysis. A slice's sum is
    read first: any NaN or inf makes it NaN or inf, so a finite sum proves the slice finite
    (20x faster than ``isfinite`` on a bf16 CPU tensor); a slice whose sum is not finite (a bad
    entry, or finite entries too large to add up) is checked entry by entry.

    Example:
        >>> all_finite(torch.tensor([1.0, float("inf")]))
        False
    """
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), chunk_elements):
        part = flat[start : start + chunk_elements]
        if not bool(torch.isfinite(part.sum())) and not bool(torch.isfinite(part).all()):
            return False
    return True


def require_finite_activation(tensor: Tensor, name: str) -> Tensor:
    """Return an activation, or raise naming its hook, its NaN / inf count and the first place.

    Finite weights can still overflow on some input (float16 residual streams, huge token
    norms); a number computed from such an activation would look plausible and be wrong.

    Example:
        >>> require_finite_activation(torch.tensor([[1.0, float("inf")]]), "blocks.0.hook_resid_post")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lensworks.errors.NonFiniteError: the activation blocks.0.hook_resid_post holds 1 inf (first at index (0, 1)) ...
    """
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = ~torch.isfinite(tensor)
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(bad.sum()) - n_nan
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        parts = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else ""]
        raise NonFiniteError(
            f"the activation {name} holds {' and '.join(p for p in parts if p)} (first at index {first}) on this "
            f"input; the model overflows here (load it in float32, or check the weights), so nothing is computed from it"
        )
    return tensor


def stacked(model: Any, name: str, layers: Sequence[int]) -> Tensor:
    """``blocks[l].attn.<name>`` for the given layers, stacked and detached, GQA expanded."""
    mats = [require_finite_weight(getattr(model.blocks[i].attn, name).detach(), f"{name} of block {i}") for i in layers]
    w = torch.stack([m.to(mats[0].device) for m in mats])  # blocks of a split model sit on several devices
    n_heads = model.cfg.n_heads
    if w.ndim >= 3 and w.shape[1] != n_heads:  # key/value heads stored once per group
        w = torch.repeat_interleave(w, n_heads // w.shape[1], dim=1)
    return w


def token_embedding(model: Any) -> Tensor:
    """``[d_vocab, d_model]``: what the residual stream receives for each token id (Gemma's
    sqrt(d_model) scale included on both lines)."""
    if not is_bridge(model):
        return require_finite_weight(model.W_E.detach(), "W_E of the embedding")
    ids = torch.arange(model.cfg.d_vocab, device=model.W_E.device)[None]
    inner = getattr(model.embed, "original_component", None)
    with torch.no_grad():
        if inner is None:  # pragma: no cover - other bridge layouts
            return require_finite_weight(model.embed(ids)[0].detach(), "W_E of the embedding")
        # the Hugging Face module itself, as the bridge's embedding runs it (its scale included), but
        # without the bridge's hook points: reading a weight must not fire a user's hook_embed hooks
        # (nor count as a forward pass over one row of every token)
        out = inner(ids)
        out = out[0] if isinstance(out, tuple) else out
        return require_finite_weight(out[0].to(model.W_E.dtype).detach(), "W_E of the embedding")


def writing_weights(model: Any) -> list[Tensor]:
    """Every tensor that writes to the residual stream (for the centring check)."""
    cfg = model.cfg
    out = [token_embedding(model)]
    if cfg.positional_embedding_type in ("standard", "shortformer"):
        out.append(model.W_pos.detach())
    for b in model.blocks:
        out += [b.attn.W_O.detach()] + ([b.attn.b_O.detach()] if b.attn.b_O is not None else [])
        if not cfg.attn_only:
            out += mlp_output_weights(b.mlp)
    return out


def mlp_output_weights(mlp: Any) -> list[Tensor]:
    """What an MLP writes to the residual stream with, as ``[..., d_mlp, d_model]`` tensors:
    ``W_out`` (and ``b_out``), or, for a mixture of experts under TransformerLens 4 (Mixtral), every
    expert's down projection stacked ``[n_experts, d_mlp, d_model]``."""
    try:
        w_out = mlp.W_out
    except AttributeError:
        w_out = None
    if w_out is not None:
        b_out = getattr(mlp, "b_out", None)
        return [w_out.detach()] + ([b_out.detach()] if b_out is not None else [])
    experts = getattr(getattr(mlp, "original_component", None), "experts", None)
    down = getattr(experts, "down_proj", None)
    if isinstance(down, Tensor) and down.ndim == 3:  # transformers' fused experts: [E, d_model, d_mlp]
        return [down.detach().transpose(-1, -2)]
    if isinstance(experts, torch.nn.ModuleList):  # one module per expert (older layouts)
        mats = [getattr(e, name).weight for e in experts for name in ("down_proj", "w2") if hasattr(e, name)]
        if len(mats) == len(experts):
            return [torch.stack([m.detach().T for m in mats])]
    raise LensworksError(f"cannot read the output weights of this MLP ({type(mlp).__name__}): neither W_out "
                         "nor a mixture of experts' down projections")


#: The refusal of an analysis that edits attention patterns on a model where edits are discarded.
PATTERN_NOT_EDITABLE = ("{what} needs to edit attention patterns, but this model's attention (run whole by the "
                        "Hugging Face module under TransformerLens 4's bridge, as GPT-J's is) fires hook_pattern only "
                        "after using the pattern, so an edit would be silently discarded")


def pattern_edits_apply(model: Any) -> bool:
    """Whether a hook on ``hook_pattern`` that returns an edited pattern changes the model's
    output. Always under TransformerLens 3; under TransformerLens 4 not for attention the bridge
    hands whole to the Hugging Face module (GPT-J's, for one), which fires ``hook_pattern``
    after the pattern was used and discards the edit.

    Example:
        >>> pattern_edits_apply(model)
        True
    """
    if not is_bridge(model):
        return True
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    for block in model.blocks:
        attn = block.attn
        inner = getattr(attn, "original_component", None)
        if type(attn).forward is AttentionBridge.forward and not getattr(inner, "accepts_pattern_fn", False):
            return False
    return True


def folded(model: Any) -> bool:
    """Whether LayerNorm/RMSNorm weights are folded into the next matrices."""
    if not is_bridge(model):
        return model.cfg.normalization_type in ("LNPre", "RMSPre")
    record = getattr(model, "_lensworks_processing", None)
    if record is not None:
        return bool(record["fold_ln"]) and model.cfg.normalization_type is not None
    return False


def normalization_type(model: Any) -> str | None:
    """TransformerLens 3's name: "LNPre"/"RMSPre" once folded."""
    nt = model.cfg.normalization_type
    return nt + "Pre" if is_bridge(model) and nt in ("LN", "RMS") and folded(model) else nt


def architecture(model: Any) -> str | None:
    arch = getattr(model.cfg, "original_architecture", None)
    if arch is None and is_bridge(model):
        arch = getattr(model.cfg, "architecture", None)
        arch = None if arch == "TransformerLensNative" else arch
    return arch


# --------------------------------------------------------------------------- running


def has_hook(model: Any, name: str) -> bool:
    """Whether hook ``name`` exists and fires (bridges list ``hook_pos_embed`` for rotary models)."""
    if name == "hook_pos_embed" and model.cfg.positional_embedding_type not in ("standard", "shortformer"):
        return False
    return name in model.hook_dict


def capture_hooks(names: Sequence[str], fn: Callable[[str, Tensor], Any]) -> list[tuple[str, Callable]]:
    """``fwd_hooks`` that call ``fn(name, activation)`` with the name asked for (never
    ``hook.name``, which a bridge reports under its own names); activations holding NaN or
    inf raise :class:`LensworksError` naming the hook instead of reaching ``fn``."""

    def make(name: str):
        if name.endswith(("attn_scores", "hook_mask")):  # masked positions hold -inf by design
            return lambda act, hook: fn(name, act)
        return lambda act, hook: fn(name, require_finite_activation(act, name))

    return [(n, make(n)) for n in names]


def logits_from_block(model: Any, resid: Tensor, start_at_layer: int) -> Tensor:
    """Logits from a residual stream entering block ``start_at_layer`` (0..n_layers), output
    soft-cap included, as the model's own forward computes them."""
    if start_at_layer < model.cfg.n_layers:
        return model(resid, start_at_layer=start_at_layer, return_type="logits")
    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    logits = model.unembed(x)
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def move(model: Any, device: Any) -> Any:
    """``model.to(device)`` without TransformerLens's print."""
    with quiet():
        return model.to(device, print_details=False)
