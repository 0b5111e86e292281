"""Sections: one named place on the report page, the analysis that fills it, and when it applies.

A :class:`Section` has a ``name`` (its place on the page), a ``group`` (circuits, geometry,
probes, causal), ``applies(model)`` (True, or False / a string saying why it does not apply) and
``run(ctx)``, which returns one result or a list of results. :func:`run_sections` runs the
sections that apply, in registry order, and records the others with their reason; the report
(:func:`lensworks.report.analyse`) and the CLI commands both run sections this way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from lensworks.model import LensworksError
from lensworks.report._context import Context, DataRead

__all__ = ["Section", "Entry", "Skipped", "SectionRun", "run_sections", "always"]


def always(model: Any) -> bool:
    """``applies`` of a section that applies to every model."""
    return True


@dataclasses.dataclass(frozen=True)
class Section:
    """One place on the report page and the analysis that fills it.

    Attributes:
        name: The place on the page (e.g. ``"Q composition"``); unique in the registry.
        group: The page section it belongs to: ``"circuits"``, ``"geometry"``, ``"probes"`` or ``"causal"``.
        run: ``run(ctx) -> Result | list[Result]``; a note for the reader goes in the result's
            ``note`` field (shown by the page under the caption).
        applies: ``applies(model) -> True``, or ``False`` / a string saying why the section does
            not apply (the reason is recorded in :attr:`SectionRun.skipped`).
        pair: In :func:`~lensworks.report.analyse`'s dict, list the result as a ``(result,
            caption)`` pair, as the report did before sections (the caption includes the note).
        drawn: In that dict, list the result's figure instead of the result (the attention
            explorer, as before).

    Example:
        >>> from lensworks.circuits import copying_scores
        >>> s = Section("copying", "circuits", lambda ctx: copying_scores(ctx.model))
        >>> s.applies(None), s.group
        (True, 'circuits')
    """

    name: str
    group: str
    run: Callable[[Context], Any]
    applies: Callable[[Any], "bool | str"] = always
    pair: bool = False
    drawn: bool = False

    def why_not(self, model: Any) -> str | None:
        """None when the section applies to ``model``, else the reason it does not.

        Example:
            >>> Section("x", "circuits", print, applies=lambda m: "needs two layers").why_not(None)
            'needs two layers'
        """
        verdict = self.applies(model)
        if verdict is True:
            return None
        if isinstance(verdict, str) and verdict:
            return verdict
        if verdict is False:
            return "does not apply to this model"
        raise LensworksError(f"section {self.name!r}: applies() must return True, False or a reason string, "
                             f"got {verdict!r}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One result a section produced.

    Attributes:
        section: The section's name.
        group: Its group (page section).
        result: The result (``note`` included where the section set one).
    """

    section: str
    group: str
    result: Any

    @property
    def note(self) -> str:
        """The result's note, or ``""``."""
        return str(getattr(self.result, "note", "") or "")

    @property
    def caption(self) -> str:
        """The result's caption followed by its note."""
        caption = self.result.caption()
        return f"{caption} {self.note}" if self.note else caption


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A section that did not run, and why.

    Attributes:
        section: The section's name.
        group: Its group.
        reason: Why it does not apply (from ``applies``).
    """

    section: str
    group: str
    reason: str


@dataclasses.dataclass(frozen=True)
class SectionRun:
    """What :func:`run_sections` returns.

    Attributes:
        entries: Every result, in registry order.
        skipped: The sections that did not apply, with their reason.
        data: The "Data read" records, in the order the data was first read.
    """

    entries: tuple[Entry, ...]
    skipped: tuple[Skipped, ...]
    data: tuple[DataRead, ...]

    def result(self, section: str) -> Any:
        """The (first) result of the named section; raises if it did not run.

        Example:
            >>> from lensworks.report import Context, registry
            >>> run = run_sections(Context.of(model), registry(names=["copying"]))
            >>> run.result("copying").caption().startswith("Copying score per head")
            True
        """
        for e in self.entries:
            if e.section == section:
                return e.result
        why = next((s.reason for s in self.skipped if s.section == section), "it was not run")
        raise LensworksError(f"no result for section {section!r}: {why}")


def run_sections(ctx: Context, sections: Sequence[Section], *, progress: bool = False) -> SectionRun:
    """Run every section that applies to ``ctx.model``, in order; record the others with their reason.

    Args:
        ctx: The context every section reads.
        sections: The sections to run (e.g. :func:`lensworks.report.registry` or part of it).
        progress: Show a progress bar over the sections.

    Returns:
        A :class:`SectionRun`.

    Example:
        >>> from lensworks.report import Context, registry
        >>> run = run_sections(Context.of(model), registry(names=["copying"]))
        >>> [e.section for e in run.entries]
        ['copying']
    """
    from tqdm.auto import tqdm

    entries: list[Entry] = []
    skipped: list[Skipped] = []
    bar = tqdm(list(sections), desc="lensworks report", unit="analysis", disable=not progress)
    for section in bar:
        bar.set_postfix_str(f"{section.group}: {section.name}")
        reason = section.why_not(ctx.model)
        if reason is not None:
            skipped.append(Skipped(section.name, section.group, reason))
            continue
        out = section.run(ctx)
        for result in (out if isinstance(out, (list, tuple)) else [out]):
            entries.append(Entry(section.name, section.group, result))
    bar.close()
    return SectionRun(tuple(entries), tuple(skipped), tuple(ctx.data_read))
