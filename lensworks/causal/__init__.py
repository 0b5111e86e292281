"""Causal analyses: activation patching and its gradient approximation, attribution patching; path
patching (sender heads -> a receiver); direct logit attribution; a clean/corrupted pair any model can read."""

from lensworks.causal._metrics import METRIC_NAMES, Metric, resolve_metric
from lensworks.causal.patching import ActivationPatching, activation_patching
from lensworks.causal.attribution import AttributionPatching, attribution_patching
from lensworks.causal.dla import DirectLogitAttribution, direct_logit_attribution
from lensworks.causal.path import PathPatching, path_patching
from lensworks.causal._pairs import PromptPair, induction_pair

__all__ = [
    "activation_patching",
    "attribution_patching",
    "ActivationPatching",
    "AttributionPatching",
    "direct_logit_attribution",
    "DirectLogitAttribution",
    "path_patching",
    "PathPatching",
    "Metric",
    "METRIC_NAMES",
    "resolve_metric",
    "induction_pair",
    "PromptPair",
]
