"""The two TransformerLens lines behind one interface, chosen once per process.

:func:`lensworks.model._load.load_model` reads and checks a checkpoint the same way on both
lines, then asks :func:`backend` to build the model object: a ``HookedTransformer`` under
TransformerLens 3 (:class:`lensworks.model._hooked.HookedBackend`), a ``TransformerBridge`` in
compatibility mode under TransformerLens 4 (:class:`lensworks.model._bridge.BridgeBackend`).
The loaders never test which line is installed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from lensworks.model._compat import TL_MAJOR
from lensworks.model._families import FamilySpec
from lensworks.model._placement import Placement

__all__ = ["Backend", "backend"]


class Backend(Protocol):
    """What each TransformerLens line provides to the loaders.

    ``processing`` is always the resolved flags ``fold_ln``, ``center_writing_weights`` and
    ``center_unembed``; ``device=None`` means the line's default (the CPU). Every method returns
    the model in eval mode, or raises :class:`~lensworks.errors.LensworksError` naming ``where``.
    """

    #: The TransformerLens major version this backend serves.
    line: int
    #: Whether Hugging Face directories of unregistered architectures are handed to the line's own
    #: loader (TransformerLens 4's bridge boots many more families than lensworks registers).
    reads_unregistered: bool

    def build_from_hf(self, path: Path, spec: FamilySpec | None, raw: dict[str, Any], fields: dict[str, Any], *,
                      tokenizer: Any, dtype: torch.dtype, device: Any, processing: dict[str, bool],
                      placement: Placement = Placement()) -> Any:
        """A model from a local Hugging Face directory whose config.json (``raw``, of family
        ``spec``) lensworks mapped to HookedTransformerConfig ``fields``; ``tokenizer`` is the
        directory's (already checked against the vocabulary) or None. ``spec`` is None for an
        unregistered architecture (only when :attr:`reads_unregistered`); ``fields`` then holds
        only ``n_layers``, ``d_vocab`` and ``n_ctx``. ``placement`` splits the layers over devices
        (checked for this line by :func:`~lensworks.model._placement.check_placement`)."""
        ...

    def build_from_tl(self, cfg: dict[str, Any], state_dict: dict[str, Tensor], *, tokenizer: Any, dtype: torch.dtype,
                      device: Any, processing: dict[str, bool], process: bool, where: str) -> Any:
        """A model from checked HookedTransformerConfig fields ``cfg`` (dtype set) and a
        TransformerLens state dict already cast to ``dtype``; ``process`` is whether any weight
        processing was asked for (else the weights load exactly as stored)."""
        ...

    def pretrained(self, name: str, *, dtype: torch.dtype | None, device: Any, processing: dict[str, bool],
                   placement: Placement = Placement()) -> Any:
        """A model by TransformerLens pretrained name (needs a network)."""
        ...


@functools.lru_cache(maxsize=None)
def backend() -> Backend:
    """The backend of the installed TransformerLens line (decided on first call, then cached).

    Example:
        >>> backend().line == TL_MAJOR
        True
    """
    if TL_MAJOR >= 4:
        from lensworks.model._bridge import BridgeBackend

        return BridgeBackend()
    from lensworks.model._hooked import HookedBackend

    return HookedBackend()
