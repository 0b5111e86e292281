"""TransformerLens 3: checkpoints built as ``HookedTransformer`` objects.

Hugging Face tensors are read from the files tensor by tensor and converted with the family's
converter (the ``transformers`` model is never built); TransformerLens-format state dicts load as
stored or processed. Processing (``load_and_process_state_dict``'s steps) runs one block at a time
(:mod:`._process`). Only imported when TransformerLens 3 is installed
(:func:`lensworks.model._backend.backend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lensworks.model import _files, _hf
from lensworks.model._compat import move, quiet
from lensworks.model._core import HookedTransformer, LensworksError
from lensworks.model._families import FamilySpec
from lensworks.model._placement import Placement
from lensworks.model._process import load_and_process
from lensworks.model._tlconfig import make_cfg

__all__ = ["HookedBackend"]


class HookedBackend:
    """:class:`~lensworks.model._backend.Backend` of TransformerLens 3 (``HookedTransformer``).

    Example:
        >>> from lensworks.model._backend import backend
        >>> type(backend()).__name__ in ("HookedBackend", "BridgeBackend")
        True
    """

    line = 3
    reads_unregistered = False

    def build_from_hf(self, path: Path, spec: FamilySpec, raw: dict[str, Any], fields: dict[str, Any], *,
                      tokenizer: Any, dtype: torch.dtype, device: Any, processing: dict[str, bool],
                      placement: Placement = Placement()) -> Any:
        """See :meth:`lensworks.model._backend.Backend.build_from_hf` (``placement.n_devices``
        spreads the blocks over that many CUDA devices, as TransformerLens 3 does)."""
        where = str(path)
        cfg = make_cfg({**fields, "dtype": dtype, "device": "cpu", "init_weights": False}, where=where)
        if tokenizer is not None:
            cfg.tokenizer_name = str(path)
        converted = _hf.read_converted(path, spec, raw, cfg, dtype=dtype)  # tensor by tensor, cast as read
        with quiet():
            model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
        _hf.check_shapes(converted, {k: tuple(v.shape) for k, v in model.state_dict().items()}, where=where)
        process = dict(processing)
        if cfg.output_logits_soft_cap and cfg.output_logits_soft_cap > 0:
            process["center_unembed"] = False  # a soft-cap is not invariant to a shift of the logits
        with quiet():  # one block at a time; converted is emptied as it is loaded
            load_and_process(model, converted, fold_value_biases=True, **process)
        if tokenizer is not None:
            with quiet():
                model.set_tokenizer(tokenizer)
        if (placement.n_devices or 1) > 1:
            return _spread(model, placement.n_devices, device)
        return finish(model, device)

    def build_from_tl(self, cfg: dict[str, Any], state_dict: dict[str, Tensor], *, tokenizer: Any, dtype: torch.dtype,
                      device: Any, processing: dict[str, bool], process: bool, where: str) -> Any:
        """See :meth:`lensworks.model._backend.Backend.build_from_tl`."""
        ht_cfg = make_cfg({**cfg, "init_weights": False}, where=where)
        try:
            with quiet():
                model = HookedTransformer(ht_cfg, tokenizer=None, move_to_device=False)
        except (ValueError, TypeError, KeyError, AssertionError, NotImplementedError) as exc:  # TL's own config checks
            raise LensworksError(f"{where}: TransformerLens cannot build a model from this config: "
                                 f"{type(exc).__name__}: {_files.plain_reason(exc)}") from exc
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict and not k.endswith(("IGNORE", ".mask"))]
        unexpected = [k for k in state_dict if k not in expected]
        if process and any(k.endswith(("ln1.w", "ln2.w", "ln_final.w")) for k in unexpected):
            unexpected = []  # LayerNorm weights of an unfolded checkpoint, folded below
        if missing or unexpected:
            raise LensworksError(
                f"{where}: state_dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        _hf.check_shapes(state_dict, {k: tuple(v.shape) for k, v in expected.items()}, where=where)
        if process:
            with quiet():
                load_and_process(model, dict(state_dict), fold_value_biases=False, **processing)
        else:
            model.load_state_dict(state_dict, strict=False)
        if tokenizer is not None:
            with quiet():
                model.set_tokenizer(tokenizer)
            model.cfg.default_prepend_bos = cfg.get("default_prepend_bos", model.cfg.default_prepend_bos)
        return finish(model, device)

    def pretrained(self, name: str, *, dtype: torch.dtype | None, device: Any, processing: dict[str, bool],
                   placement: Placement = Placement()) -> Any:
        """See :meth:`lensworks.model._backend.Backend.pretrained`."""
        check_pretrained_name(name)
        kwargs: dict[str, Any] = dict(processing)
        if placement.n_devices is not None:
            kwargs["n_devices"] = placement.n_devices
        if device is not None:
            kwargs["device"] = device
        if dtype is not None:
            kwargs["dtype"] = dtype
        try:
            with quiet():
                return HookedTransformer.from_pretrained(name, **kwargs)
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise LensworksError(
                f"could not load {name!r}: it is not a local checkpoint (directory or .pt/.pth file), "
                f"and loading it as a TransformerLens pretrained name failed: {type(exc).__name__}: {first}"
            ) from exc


def _spread(model: Any, n_devices: int, device: Any) -> Any:
    """Blocks spread evenly over ``n_devices`` CUDA devices from ``device`` (default cuda:0), as
    ``HookedTransformer.from_pretrained(n_devices=...)`` places them."""
    model.cfg.n_devices = n_devices
    model.cfg.device = str(device) if device is not None else "cuda"
    try:
        model.move_model_modules_to_device()
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise LensworksError(f"cannot spread the model over {n_devices} CUDA devices: {str(exc).splitlines()[0][:200]}") from exc
    model.eval()
    return model


def finish(model: Any, device: Any) -> Any:
    """``model`` moved to ``device`` (when one is given) and in eval mode.

    Example:
        >>> finish(model, None).training
        False
    """
    if device is not None:
        try:
            model = move(model, device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise LensworksError(f"cannot move the model to device {device!r}: {str(exc).splitlines()[0][:200]}") from exc
    model.eval()
    return model


def check_pretrained_name(name: str) -> None:
    """Refuse an unknown name with a few close matches, not TransformerLens's list of every model.

    Example:
        >>> check_pretrained_name("gpt2")
    """
    try:
        from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
    except ImportError:  # pragma: no cover - layout of other TransformerLens versions
        return
    known = list(OFFICIAL_MODEL_NAMES) + [a for aliases in MODEL_ALIASES.values() for a in aliases]
    if name in known or name.lower() in {k.lower() for k in known}:
        return
    from lensworks._zoo_index import ZOO_NAMES, name_hint

    hint = name_hint(name, known)
    raise LensworksError(
        f"could not load {name!r}: no such file or directory, and not a TransformerLens pretrained name{hint} "
        f"(bundled demo models: {', '.join(ZOO_NAMES)})"
    )
