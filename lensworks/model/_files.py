"""Checkpoint files read without running code: safetensors, and torch files through
``torch.load(weights_only=True)`` (optionally memory-mapped), with errors that name the file and
say what to do (a whole pickled module, a file that needs unpickling code)."""

from __future__ import annotations

import dataclasses
import json
import re
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from lensworks.model._core import LensworksError

__all__ = ["torch_load", "read_safetensors", "read_state_dict", "stored_shapes", "plain_reason", "check_floating",
           "LazyWeights", "weight_files"]

_ST_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


@dataclasses.dataclass(frozen=True)
class WeightFiles:
    """The weight files of a checkpoint directory that hold its model, as Hugging Face reads them.

    Attributes:
        files: The files to read, in order.
        kind: ``"safetensors"`` or ``"bin"``.
        index: The shard index followed (``model.safetensors.index.json`` /
            ``pytorch_model.bin.index.json``), or None.
        weight_map: The index's ``weight_map`` (tensor name -> file name); empty without an index.
    """

    files: tuple[Path, ...]
    kind: str
    index: Path | None = None
    weight_map: Mapping[str, str] = dataclasses.field(default_factory=dict)


def weight_files(path: Path) -> WeightFiles:
    """The files that hold the model in Hugging Face directory ``path``, chosen as ``transformers``
    chooses them: the shards ``model.safetensors.index.json`` names (and only those), else
    ``model.safetensors``, else index-less ``model-0000i-of-0000n.safetensors`` shards; then the
    same for ``pytorch_model*.bin``. Other files (``consolidated.safetensors`` of the original
    release, adapters) are never read.

    Example:
        >>> [f.name for f in weight_files(zoo.path("bpe-llama")).files]
        ['model.safetensors']
    """
    for kind, index_name, single, shard_glob in (
        ("safetensors", _ST_INDEX, "model.safetensors", "model-*-of-*.safetensors"),
        ("bin", _BIN_INDEX, "pytorch_model.bin", "pytorch_model-*-of-*.bin"),
    ):
        index = path / index_name
        if index.is_file():
            weight_map = _read_index(index)
            names = list(dict.fromkeys(weight_map.values()))
            for name in names:
                if not (path / name).is_file():
                    raise LensworksError(f"{index} names the shard {name}, which is missing from {path}")
            return WeightFiles(tuple(path / n for n in names), kind, index, weight_map)
        if (path / single).is_file():
            return WeightFiles((path / single,), kind)
        shards = sorted(path.glob(shard_glob))
        if shards:
            return WeightFiles(tuple(shards), kind)
    names = sorted(p.name for p in path.iterdir())[:12]
    other = [n for n in names if n.endswith((".safetensors", ".bin"))]
    hint = (f"; lensworks does not guess which of {other} holds the model (rename it model.safetensors)"
            if other else "")
    raise LensworksError(
        f"{path}: no weight files: expected model.safetensors, {_ST_INDEX} with its shards, or "
        f"pytorch_model*.bin, found {names}{hint}"
    )


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LensworksError(f"{index}: not a readable shard index ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) and "/" not in v and "\\" not in v for k, v in weight_map.items()):
        raise LensworksError(f"{index}: expected a 'weight_map' of tensor names to shard file names in this directory")
    return weight_map


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


#: safetensors dtype names -> torch dtypes (the float8 ones where this torch has them).
_ST_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("I64", "int64"), ("I32", "int32"),
        ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("U16", "uint16"), ("U32", "uint32"),
        ("U64", "uint64"), ("BOOL", "bool"))
    if hasattr(torch, attr)
}


def _safe_open(path: Path) -> Any:
    """``safe_open`` that reads each tensor's bytes with ``pread`` into a buffer of its own
    (safetensors >= 0.8), so a tensor nobody holds any more is freed at once and no mapped file
    pages count towards the process's memory; older safetensors map the file."""
    from safetensors import safe_open

    try:
        try:
            return safe_open(str(path), framework="pt", backend="pread")
        except TypeError:  # safetensors < 0.8 has no backend choice
            return safe_open(str(path), framework="pt")
    except Exception as exc:
        raise LensworksError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc


class _Reader:
    """Open weight files of one checkpoint and the tensors read from them (held weakly: a tensor
    stays cached only while the caller keeps it or a view of it)."""

    def __init__(self, found: WeightFiles, dtype: torch.dtype | None):
        self.found, self.dtype = found, dtype
        self._handles: dict[int, Any] = {}
        self._bins: dict[int, dict[str, Tensor]] = {}
        self._cache: weakref.WeakValueDictionary[tuple[int, str], Tensor] = weakref.WeakValueDictionary()
        self.reads = 0  # tensors read from the files (a tensor read twice counts twice)

    def handle(self, i: int) -> Any:
        if i not in self._handles:
            self._handles[i] = _safe_open(self.found.files[i])
        return self._handles[i]

    def bin_part(self, i: int) -> dict[str, Tensor]:
        """A ``.bin`` shard, memory-mapped (zip format): its tensors are paged in when used."""
        if i not in self._bins:
            f = self.found.files[i]
            part = torch_load(f, mmap=True)
            if not isinstance(part, dict) or not all(isinstance(v, Tensor) for v in part.values()):
                raise LensworksError(f"{f}: expected a mapping of parameter names to tensors")
            self._bins[i] = part
        return self._bins[i]

    def get(self, i: int, name: str) -> Tensor:
        t = self._cache.get((i, name))
        if t is not None:
            return t
        if self.found.kind == "safetensors":
            try:
                t = self.handle(i).get_tensor(name)
            except Exception as exc:
                raise LensworksError(f"{self.found.files[i]}: tensor {name} could not be read "
                                     f"({type(exc).__name__}: {str(exc)[:200]})") from exc
        else:
            t = self.bin_part(i)[name]
        self.reads += 1
        if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
            t = t.to(self.dtype)  # cast one tensor at a time; the stored one is freed here
        self._cache[(i, name)] = t
        return t

    def close(self) -> None:
        for h in self._handles.values():
            exit_ = getattr(h, "__exit__", None)
            if exit_ is not None:
                exit_(None, None, None)
        self._handles.clear()
        self._bins.clear()


class LazyWeights(Mapping[str, Tensor]):
    """The tensors of a Hugging Face checkpoint directory, read one at a time when asked for.

    The files are those :func:`weight_files` picks (the index's shards only); names, shapes and
    dtypes come from the safetensors headers without reading any tensor. ``weights[name]`` reads
    that tensor with ``safe_open`` (cast to ``dtype`` when given) and keeps it only as long as the
    caller does, so converting a checkpoint never holds a second copy of the weights. An index
    that puts a tensor in a shard lacking it is refused here, naming both.

    Example:
        >>> with LazyWeights(zoo.path("bpe-llama")) as weights:
        ...     weights.shapes()["model.embed_tokens.weight"], weights["model.norm.weight"].shape
        ((2048, 128), torch.Size([128]))
    """

    def __init__(self, path: Path, *, dtype: torch.dtype | None = None):
        found = weight_files(Path(path))
        self._reader = _Reader(found, dtype)
        self._loc: dict[str, tuple[int, str]] = {}
        self._meta: dict[str, tuple[tuple[int, ...], Any]] = {}  # stored shape, stored dtype
        held: dict[int, set[str]] = {}
        for i, f in enumerate(found.files):
            if found.kind == "safetensors":
                handle = self._reader.handle(i)
                try:
                    for k in handle.keys():
                        piece = handle.get_slice(k)
                        self._meta[k] = (tuple(piece.get_shape()), _ST_DTYPES.get(piece.get_dtype(), piece.get_dtype()))
                        self._loc[k] = (i, k)
                except Exception as exc:
                    raise LensworksError(f"{f}: not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from exc
                held[i] = set(handle.keys())
            else:
                part = self._reader.bin_part(i)
                for k, v in part.items():
                    self._meta[k] = (tuple(v.shape), v.dtype)
                    self._loc[k] = (i, k)
                held[i] = set(part)
        if found.index is not None:
            position = {f.name: i for i, f in enumerate(found.files)}
            for name, shard in found.weight_map.items():
                if name not in held[position[shard]]:
                    raise LensworksError(f"{found.index} puts the tensor {name} in {shard}, which holds no such tensor")

    @classmethod
    def _view(cls, reader: _Reader, loc: dict[str, tuple[int, str]], meta: dict[str, Any]) -> "LazyWeights":
        out = cls.__new__(cls)
        out._reader, out._loc, out._meta = reader, loc, meta
        return out

    def __getitem__(self, name: str) -> Tensor:
        i, stored = self._loc[name]
        return self._reader.get(i, stored)

    def __contains__(self, name: object) -> bool:  # never reads a tensor
        return name in self._loc

    def __iter__(self) -> Iterator[str]:
        return iter(self._loc)

    def __len__(self) -> int:
        return len(self._loc)

    def renamed(self, rename: Callable[[Mapping[str, Any]], dict[str, Any]]) -> "LazyWeights":
        """The same tensors under new names: ``rename`` maps ``{name: anything}`` to a dict with new
        keys and the same values (e.g. ``FamilySpec.with_base_prefix``). Nothing is read."""
        loc = rename(self._loc)
        by_loc = {v: self._meta[k] for k, v in self._loc.items()}
        return self._view(self._reader, loc, {k: by_loc[v] for k, v in loc.items()})

    def with_alias(self, name: str, existing: str) -> "LazyWeights":
        """These tensors plus ``name`` standing for ``existing`` (a tied head). Nothing is read."""
        return self._view(self._reader, {**self._loc, name: self._loc[existing]},
                          {**self._meta, name: self._meta[existing]})

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's stored shape, from the headers."""
        return {k: shape for k, (shape, _) in self._meta.items()}

    def dtypes(self) -> dict[str, Any]:
        """Every tensor's stored dtype, from the headers (a torch dtype, or safetensors' name of
        one this torch lacks)."""
        return {k: dt for k, (_, dt) in self._meta.items()}

    @property
    def files(self) -> tuple[Path, ...]:
        return self._reader.found.files

    @property
    def reads(self) -> int:
        """How many tensors were read from the files so far."""
        return self._reader.reads

    def close(self) -> None:
        """Close the files; tensors already handed out stay valid."""
        self._reader.close()

    def __enter__(self) -> "LazyWeights":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory, merged across the shards its index names, read
    without unpickling (tensor by tensor with ``safe_open``; see :class:`LazyWeights` to read
    only what is needed).

    Example:
        >>> sorted(read_state_dict(zoo.path("bpe-llama")))[:1]
        ['model.embed_tokens.weight']
    """
    with LazyWeights(path) as weights:
        return {k: weights[k] for k in weights}


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a checkpoint directory, across the shards its index names;
    safetensors headers are read without loading the tensors.

    Example:
        >>> stored_shapes(zoo.path("bpe-llama"))["model.embed_tokens.weight"]
        (2048, 128)
    """
    with LazyWeights(path) as weights:
        return weights.shapes()


def check_floating(sd: Mapping[str, Any], where: str) -> None:
    """Refuse integer or boolean weights (a quantised checkpoint, or a file of token ids), naming
    the tensor as the file names it. Masks and position-id buffers may be integers. ``sd`` maps
    names to tensors or to their dtypes (:meth:`LazyWeights.dtypes`, nothing read).

    Example:
        >>> check_floating({"wte.weight": torch.zeros(2, dtype=torch.long)}, "ckpt.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lensworks.errors.LensworksError: ckpt.pt: wte.weight holds torch.int64 values; expected floating-point weights ...
    """
    for k, v in sd.items():
        last = k.rsplit(".", 1)[-1]
        is_weight = last in ("weight", "w", "b") or last.startswith(("W_", "b_"))  # not masks or position ids
        dt = v.dtype if isinstance(v, Tensor) else v
        floating = dt.is_floating_point if isinstance(dt, torch.dtype) else str(dt).startswith(("F", "BF"))
        if is_weight and not floating:
            raise LensworksError(f"{where}: {k} holds {dt} values; expected floating-point weights "
                                 "(a quantised or integer checkpoint cannot be analysed)")
