"""Option values shared by the library and the command line, in a module that imports nothing,
so the command line can build its parser (``--help``, argument errors) without loading torch."""

from __future__ import annotations

__all__ = ["PROBE_METHODS"]

#: Probe solvers, in the order the docs list them (``lensworks.probes.linear.METHODS``).
PROBE_METHODS: tuple[str, ...] = ("ridge", "lda", "auto", "logistic", "fast-logistic")
