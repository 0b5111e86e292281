"""Probes: what each layer still knows about its input, and in which basis."""

from lensworks.probes.bases import Basis, embedding_basis
from lensworks.probes.compare import Comparison, compare_to_embedding
from lensworks.probes.linear import ProbeResults, probe_inputs
from lensworks.probes.usage import UnlikelyTokenUsage, unlikely_token_usage

__all__ = [
    "probe_inputs",
    "ProbeResults",
    "embedding_basis",
    "Basis",
    "compare_to_embedding",
    "Comparison",
    "unlikely_token_usage",
    "UnlikelyTokenUsage",
]
