"""lensworks: head scores, probes and residual-stream geometry for TransformerLens models."""

from lensworks.model import load_model, save_model

__version__ = "0.1.0"

__all__ = ["load_model", "save_model", "__version__"]
