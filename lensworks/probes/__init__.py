"""Probes: what each layer still knows about its input, and in which basis."""

from lensworks.probes.linear import ProbeResults, probe_inputs

__all__ = ["probe_inputs", "ProbeResults"]
