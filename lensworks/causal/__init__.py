"""Causal analyses: activation patching and its gradient approximation, attribution patching."""

from lensworks.causal._metrics import METRIC_NAMES, Metric, resolve_metric
from lensworks.causal.patching import ActivationPatching, activation_patching
from lensworks.causal.attribution import AttributionPatching, attribution_patching

__all__ = [
    "activation_patching",
    "attribution_patching",
    "ActivationPatching",
    "AttributionPatching",
    "Metric",
    "METRIC_NAMES",
    "resolve_metric",
]
