"""Circuits: composition, copying and behavioural head scores, induction heads, skip-trigrams, the
circuit graph and term importance."""

from lensworks._heads import HeadId
from lensworks.circuits.composition import CompositionScores, composition_scores
from lensworks.circuits.eigen import CopyingScores, copying_scores
from lensworks.circuits.scores import HeadScores
from lensworks.circuits.heads import BehaviourScores, head_scores, repeated_tokens
from lensworks.circuits.induction import InductionReport, find_induction_heads
from lensworks.circuits.trigrams import SkipTrigrams, skip_trigrams
from lensworks.circuits.graph import CircuitGraph, circuit_graph
from lensworks.circuits.terms import TermImportance, term_importance
from lensworks.circuits.attention import AttentionPatterns, attention_patterns

__all__ = [
    "HeadId",
    "composition_scores",
    "copying_scores",
    "head_scores",
    "find_induction_heads",
    "repeated_tokens",
    "skip_trigrams",
    "circuit_graph",
    "term_importance",
    "attention_patterns",
    "CircuitGraph",
    "TermImportance",
    "SkipTrigrams",
    "CompositionScores",
    "HeadScores",
    "CopyingScores",
    "BehaviourScores",
    "InductionReport",
    "AttentionPatterns",
]
