"""Circuits: composition, copying and behavioural head scores, and induction-head detection."""

from lensworks.circuits.composition import CompositionScores, composition_scores
from lensworks.circuits.eigen import CopyingScores, copying_scores
from lensworks.circuits.scores import HeadScores
from lensworks.circuits.heads import BehaviourScores, head_scores, repeated_tokens
from lensworks.circuits.induction import InductionReport, find_induction_heads
from lensworks.circuits.trigrams import SkipTrigrams, skip_trigrams
from lensworks.circuits.graph import CircuitGraph, circuit_graph

__all__ = [
    "composition_scores",
    "copying_scores",
    "head_scores",
    "find_induction_heads",
    "repeated_tokens",
    "skip_trigrams",
    "circuit_graph",
    "CircuitGraph",
    "SkipTrigrams",
    "CompositionScores",
    "HeadScores",
    "CopyingScores",
    "BehaviourScores",
    "InductionReport",
]
