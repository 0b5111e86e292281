"""Geometry: how the residual stream moves from layer to layer."""

from lensworks.geometry.dimension import EffectiveDimensionality, effective_dimensionality
from lensworks.geometry.ablation import AblationTable, BlockDecomposition, block_ablation, block_decomposition, hellinger
from lensworks.geometry.lens import LogitLens, logit_lens
from lensworks.geometry.neighbours import (
    NeighbourApproximation,
    NeighbourEvaluation,
    NeighbourPrediction,
    SimilarWindows,
    TuneResult,
)
from lensworks.geometry.subspaces import Alignment, TokenSubspaces, alignment, token_subspaces
from lensworks.geometry.stats import ResidualStats, UpdateAlignment, residual_stats, update_alignment

__all__ = [
    "residual_stats",
    "effective_dimensionality",
    "EffectiveDimensionality",
    "update_alignment",
    "block_ablation",
    "block_decomposition",
    "logit_lens",
    "hellinger",
    "NeighbourApproximation",
    "token_subspaces",
    "alignment",
    "ResidualStats",
    "UpdateAlignment",
    "AblationTable",
    "BlockDecomposition",
    "LogitLens",
    "TokenSubspaces",
    "Alignment",
    "NeighbourPrediction",
    "NeighbourEvaluation",
    "SimilarWindows",
    "TuneResult",
]
