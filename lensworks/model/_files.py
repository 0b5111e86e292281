"""Checkpoint files read without running code: safetensors, and torch files through
``torch.load(weights_only=True)`` (optionally memory-mapped), with errors that name the file and
say what to do (a whole pickled module, a file that needs unpickling code)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lensworks.model._core import LensworksError

__all__ = ["torch_load", "read_safetensors", "read_state_dict", "stored_shapes", "plain_reason", "check_floating"]


def _weight_files(path: Path) -> tuple[list[Path], str]:
    st = sorted(path.glob("*.safetensors"))
    if st:
        return st, "safetensors"
    pt = sorted(path.glob("pytorch_model*.bin"))
    if pt:
        return pt, "bin"
    names = sorted(p.name for p in path.iterdir())[:12]
    raise LensworksError(
        f"{path}: no weight files: expected model.safetensors, model-*-of-*.safetensors or pytorch_model*.bin, found {names}"
    )


def _numpy_scalar_globals() -> list[Any]:
    """The numpy globals a pickled numpy scalar needs (``cfg.to_dict()`` holds numpy floats)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch
        return []
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
                    if hasattr(dtypes, n)]
    return allowed


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_reason(exc: BaseException, limit: int = 240) -> str:
    """An exception's message as one plain line: colour codes stripped, the telling line kept.

    torch's weights-only errors open with advice and give the reason ("Unsupported global:
    ...") further down; that line is the one shown.

    Example:
        >>> plain_reason(ValueError("\\x1b[1mbad\\x1b[0m\\nmore"))
        'bad'
    """
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported global", "Unsupported operand", "Trying to load unsupported")) or "WeightsUnpickler error" in ln:
            return ln[:limit]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def torch_load(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (never unpickles code); errors name the file.

    numpy scalars (which ``HookedTransformerConfig.to_dict()`` contains) are allowed: they
    rebuild a number, never run code. A file that needs code to unpickle (a whole
    ``nn.Module`` saved with ``torch.save(model)``, or any other class) is refused naming the
    classes it would import, with what to save instead. ``mmap=True`` maps the tensors instead
    of reading them (zip-format files), so tensors the caller drops (optimizer state) are never
    read into memory.
    """
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except IsADirectoryError:
        raise LensworksError(f"{path}: is a directory; expected a checkpoint file") from None
    except PermissionError:
        raise LensworksError(f"{path}: permission denied (the file exists but cannot be read)") from None
    except Exception as exc:
        if mmap and "mmap" in str(exc):  # the legacy (non-zip) format cannot be mapped
            return torch_load(path)
        code = _code_globals(path)
        if code:
            if any(g.startswith("torch.nn.modules.") for g in code):
                own = [g for g in code if not g.startswith("torch.")] + [g for g in code if g.startswith("torch.")]
                raise LensworksError(
                    f"{path}: refused: this file is a whole pickled module ({', '.join(own[:3])}), which only "
                    "running its code could read; in the training script save the weights instead, "
                    "torch.save(model.state_dict(), 'model_state.pt'), and load that file"
                ) from None
            raise LensworksError(
                f"{path}: refused: this file needs unpickling code ({', '.join(code[:4])}), which lensworks never "
                "runs; convert it to safetensors (safetensors.torch.save_file(state_dict, 'model.safetensors')) "
                "or save a plain state dict"
            ) from None
        raise LensworksError(
            f"{path}: could not be read as a weights-only torch checkpoint "
            f"(lensworks never unpickles arbitrary objects): {type(exc).__name__}: {plain_reason(exc)}"
        ) from exc


def _code_globals(path: Path) -> list[str]:
    """The classes and functions a torch checkpoint would import when unpickled (read from the
    pickle's opcodes, nothing executed), less those weights-only loading admits."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format or not a torch file at all
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_scalar_globals() if hasattr(g, "__qualname__")}
    return [g for g in found if g not in allowed]


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise LensworksError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory, merged across shards, read without unpickling.

    Example:
        >>> sorted(read_state_dict(zoo.path("bpe-llama")))[:1]
        ['model.embed_tokens.weight']
    """
    files, kind = _weight_files(path)
    sd: dict[str, Tensor] = {}
    for f in files:
        part = read_safetensors(f) if kind == "safetensors" else torch_load(f)
        if not isinstance(part, dict) or not all(isinstance(v, Tensor) for v in part.values()):
            raise LensworksError(f"{f}: expected a mapping of parameter names to tensors")
        sd.update(part)
    index = next(iter(path.glob("*.index.json")), None)
    if index is not None:
        try:
            wanted = set(json.loads(index.read_text()).get("weight_map", {}))
        except (OSError, json.JSONDecodeError) as exc:
            raise LensworksError(f"{index}: not a readable shard index ({exc})") from exc
        missing = sorted(wanted - set(sd))
        if missing:
            raise LensworksError(f"{index} lists {len(missing)} tensors that no weight file holds, e.g. {missing[:3]}")
    return sd


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a checkpoint directory, across shards; safetensors headers
    are read without loading the tensors.

    Example:
        >>> stored_shapes(zoo.path("bpe-llama"))["model.embed_tokens.weight"]
        (2048, 128)
    """
    files, kind = _weight_files(path)
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        if kind == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt") as handle:
                    for k in handle.keys():
                        shapes[k] = tuple(handle.get_slice(k).get_shape())
            except Exception as exc:
                raise LensworksError(f"{f}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc
        else:
            shapes.update({k: tuple(v.shape) for k, v in torch_load(f).items()})
    return shapes


def check_floating(sd: dict[str, Tensor], where: str) -> None:
    """Refuse integer or boolean weights (a quantised checkpoint, or a file of token ids), naming
    the tensor as the file names it. Masks and position-id buffers may be integers.

    Example:
        >>> check_floating({"wte.weight": torch.zeros(2, dtype=torch.long)}, "ckpt.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lensworks.errors.LensworksError: ckpt.pt: wte.weight holds torch.int64 values; expected floating-point weights ...
    """
    for k, v in sd.items():
        last = k.rsplit(".", 1)[-1]
        is_weight = last in ("weight", "w", "b") or last.startswith(("W_", "b_"))  # not masks or position ids
        if is_weight and not v.is_floating_point():
            raise LensworksError(f"{where}: {k} holds {v.dtype} values; expected floating-point weights "
                                 "(a quantised or integer checkpoint cannot be analysed)")
