"""Where a model's layers go: one device, or split over several (``device_map``, ``n_devices``).

A model that does not fit one GPU is split by layers. Under TransformerLens 4 lensworks hands
``device_map`` / ``max_memory`` / ``n_devices`` to ``TransformerBridge.boot_transformers``,
which loads through Hugging Face's dispatcher (``accelerate``); under TransformerLens 3,
``n_devices`` splits a ``HookedTransformer``'s blocks over that many CUDA devices, as
``HookedTransformer.from_pretrained(n_devices=...)`` does. Everything is checked here, before
any weight is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from lensworks.errors import LensworksError

__all__ = ["Placement", "check_placement", "DEVICE_MAP_STRATEGIES"]

#: The strategies Hugging Face's dispatcher accepts as a ``device_map`` string.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclasses.dataclass(frozen=True)
class Placement:
    """A checked request to split the model (all None: load on one device as usual).

    Attributes:
        device_map: A strategy of :data:`DEVICE_MAP_STRATEGIES`, or module name -> device.
        max_memory: Device -> memory budget (``{0: "20GiB", "cpu": "60GiB"}``) for the strategies.
        n_devices: Split over this many CUDA devices (TransformerLens's own option).

    Example:
        >>> Placement().split, Placement(device_map="auto").split
        (False, True)
    """

    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, Any] | None = None
    n_devices: int | None = None

    @property
    def split(self) -> bool:
        """Whether anything other than one device was asked for."""
        return self.device_map is not None or self.max_memory is not None or (self.n_devices or 1) > 1

    def bridge_options(self) -> dict[str, Any]:
        """The keyword arguments for ``TransformerBridge.boot_transformers`` (only those given)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def check_placement(device: Any, device_map: Any = None, max_memory: Any = None, n_devices: Any = None, *,
                    line: int) -> Placement:
    """Check the split options of ``load_model`` for TransformerLens ``line`` (3 or 4).

    Example:
        >>> check_placement(None, "auto", line=4).device_map
        'auto'
        >>> check_placement(None, "auto", line=3)
        Traceback (most recent call last):
        lensworks.errors.LensworksError: device_map needs TransformerLens 4 (its bridge loads through Hugging Face's dispatcher); under TransformerLens 3, split a model over CUDA devices with n_devices=N
    """
    if device_map is not None:
        if line < 4:
            raise LensworksError("device_map needs TransformerLens 4 (its bridge loads through Hugging Face's "
                                 "dispatcher); under TransformerLens 3, split a model over CUDA devices with n_devices=N")
        if device is not None:
            raise LensworksError(f"give device= or device_map=, not both (got device={device!r} and "
                                 f"device_map={device_map!r}): device_map places every layer itself")
        if isinstance(device_map, str):
            if device_map not in DEVICE_MAP_STRATEGIES:
                raise LensworksError(f"device_map must be one of {list(DEVICE_MAP_STRATEGIES)} or a dict of module name "
                                     f"-> device, got {device_map!r}")
        elif isinstance(device_map, Mapping):
            bad = [(k, v) for k, v in device_map.items()
                   if not isinstance(k, str) or not isinstance(v, (str, int, torch.device)) or isinstance(v, bool)]
            if bad or not device_map:
                raise LensworksError("device_map as a dict maps module names (str) to devices ('cuda:0', 0, 'cpu', "
                                     f"'disk'), got {dict(list(device_map.items())[:4])!r}")
            meta = [k for k, v in device_map.items() if str(v) == "meta"]
            if meta:
                raise LensworksError(f"device_map puts {meta[:3]} on 'meta': meta tensors hold no weights; use 'cpu' or "
                                     "'disk' for layers that do not fit a GPU")
            device_map = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in device_map.items()}
        else:
            raise LensworksError(f"device_map must be a strategy string or a dict, got {type(device_map).__name__}")
    if max_memory is not None:
        if not isinstance(max_memory, Mapping) or not max_memory:
            raise LensworksError(f"max_memory maps devices to budgets, e.g. {{0: '20GiB', 'cpu': '60GiB'}}; got "
                                 f"{max_memory!r}")
        if device_map is None and n_devices is None:
            raise LensworksError("max_memory budgets a split: give device_map= (or n_devices=) with it")
        if line < 4:
            raise LensworksError("max_memory needs TransformerLens 4; under TransformerLens 3 use n_devices=N")
        max_memory = dict(max_memory)
    if n_devices is not None:
        if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
            raise LensworksError(f"n_devices must be a positive integer, got {n_devices!r}")
        if n_devices > 1:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if have < n_devices:
                raise LensworksError(f"n_devices={n_devices} splits the model over {n_devices} CUDA devices; this "
                                     f"machine has {have}")
            if device is not None and torch.device(device).type != "cuda":
                raise LensworksError(f"n_devices={n_devices} splits over CUDA devices; device={device!r} is not one")
    return Placement(device_map=device_map, max_memory=max_memory, n_devices=n_devices)
