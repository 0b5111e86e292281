"""lensworks: head scores, probes and residual-stream geometry for TransformerLens models.

``load_model``, ``save_model``, ``write`` and ``HeadId`` are imported on first use, so that
``import lensworks`` (and the command line's ``--help``) does not load torch and TransformerLens.
"""

from __future__ import annotations

from typing import Any

from lensworks.errors import LensworksError, NonFiniteError

__version__ = "0.1.0"

__all__ = ["load_model", "save_model", "write", "HeadId", "LensworksError", "NonFiniteError", "__version__"]


_SUBPACKAGES = ("model", "circuits", "geometry", "probes", "causal", "report", "zoo", "plotting", "cli")

#: Public names defined in a private module: name -> module.
_LAZY = {"write": "lensworks._output", "HeadId": "lensworks._heads"}


def __getattr__(name: str) -> Any:
    if name in ("load_model", "save_model"):
        from lensworks import model

        return getattr(model, name)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"lensworks.{name}")
    raise AttributeError(f"module 'lensworks' has no attribute {name!r}")
