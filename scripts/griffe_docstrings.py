"""Griffe extension for the API reference (mkdocs.yml): read lensworks's docstrings as written.

Two habits of lensworks's Google-style docstrings that griffe reads differently from Sphinx:

- doctests are headed ``Example:`` (Google style allows the singular); griffe knows only
  ``Examples:`` as a section and renders the singular as an admonition whose ``>>>`` lines
  Markdown reads as nested quotes;
- Sphinx roles (``:class:`HeadId```, ``:func:`~lensworks.model.load_model```) would show
  literally, and a ``Returns:`` line such as ``A :class:`SkipTrigrams`.`` parses as a value named
  ``A``. They become code spans (``~`` keeps the last dotted part, as in Sphinx).

Both are rewritten in the copy of the docstring griffe renders, before it is parsed; the sources
and their doctests are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class SphinxHabits(griffe.Extension):
    """Rename ``Example:`` headings to ``Examples:`` and turn Sphinx roles into code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, _HEADING.sub(r"\1Examples:", obj.docstring.value))
