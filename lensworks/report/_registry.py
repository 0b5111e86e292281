"""The report's sections, in page order: one list, written out (no import side effects).

Adding a section is one :class:`~lensworks.report.Section` in the group's module
(``_circuit_sections``, ``_geometry_sections``, ``_probe_sections``, ``_causal_sections``) and, to show it in the
report, its place in that module's ``SECTIONS`` tuple; :func:`analyse` and :func:`build` need
no edit. Sections only a CLI command runs go in the module's ``EXTRA`` tuple.
"""

from __future__ import annotations

from typing import Sequence

from lensworks.model import LensworksError
from lensworks.report import _causal_sections, _circuit_sections, _geometry_sections, _probe_sections
from lensworks.report._sections import Section

__all__ = ["registry", "section"]

#: Every section the report shows, in page order.
REPORT: tuple[Section, ...] = (_circuit_sections.SECTIONS + _geometry_sections.SECTIONS + _probe_sections.SECTIONS
                               + _causal_sections.SECTIONS)
#: Sections only CLI commands run.
EXTRA: tuple[Section, ...] = _geometry_sections.EXTRA


def _check_unique() -> None:
    names = [s.name for s in REPORT + EXTRA]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # pragma: no cover - a programming error caught at import
        raise LensworksError(f"section names must be unique, got {dup} more than once")


_check_unique()


def registry(group: str | None = None, *, names: Sequence[str] | None = None) -> tuple[Section, ...]:
    """The sections the report shows, in page order: all, one group's, or the named ones.

    Args:
        group: Only this group's (``"circuits"``, ``"geometry"``, ``"probes"``, ``"causal"``).
        names: Only these sections (any registered name, also those only a CLI command runs),
            in registry order.

    Returns:
        A tuple of :class:`Section`.

    Example:
        >>> [s.name for s in registry("probes")]
        ['input-token probes', 'comparison with W_E', 'embedding basis']
    """
    if names is not None:
        wanted = set(names)
        unknown = sorted(wanted - {s.name for s in REPORT + EXTRA})
        if unknown:
            raise LensworksError(f"unknown sections {unknown}; expected names from "
                                 f"{[s.name for s in REPORT + EXTRA]}")
        chosen = tuple(s for s in REPORT + EXTRA if s.name in wanted)
    else:
        chosen = REPORT
    if group is not None:
        groups = sorted({s.group for s in REPORT})
        if group not in groups:
            raise LensworksError(f"unknown group {group!r}; expected one of {groups}")
        chosen = tuple(s for s in chosen if s.group == group)
    return chosen


def section(name: str) -> Section:
    """The registered section called ``name``.

    Example:
        >>> section("logit lens").group
        'geometry'
    """
    return registry(names=[name])[0]
