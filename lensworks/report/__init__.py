"""One self-contained, offline HTML page from many lensworks results.

:func:`build` writes a single file: plotly.js inlined once, every figure as escaped JSON, a
table of contents, one section per area (circuits, geometry, probes, causal), a caption and a data
table under each figure, and a head picker that outlines one head's row and column in the
composition heatmaps. :func:`analyse` runs the analyses that apply to a model and returns
results ready for :func:`build`.

Escaping: every string that reaches the page goes through :func:`html.escape`; strings inside
figures are made safe for plotly.js (a ``<`` that does not open one of plotly's few formatting
tags becomes ``&lt;``), and the figure JSON escapes ``<``, ``>`` and ``/`` so ``</script>`` in a
token cannot close the script element.

Sections: the report is a registry of :class:`Section` objects (name, group, ``applies(model)``,
``run(ctx)``), listed in page order by :func:`registry`; :func:`run_sections` runs the ones that
apply on one :class:`Context` (the model, its facts, the text and windows each group reads, seed,
options) and records the others with their reason. :func:`analyse` and the CLI commands run them.

Layout: :mod:`._page` builds the page (:func:`build`), :mod:`._analyse` checks the report's
arguments and runs the registry (:func:`analyse`, :class:`Analyses`), :mod:`._context` holds
:class:`Context` and :class:`DataRead`, :mod:`._sections` :class:`Section` and
:func:`run_sections`, :mod:`._registry` the list; the sections themselves are in
:mod:`._circuit_sections`, :mod:`._geometry_sections` and :mod:`._probe_sections`;
:mod:`._markup` makes strings safe; the CSS and scripts are files in ``lensworks/assets``.
"""

from lensworks.report._analyse import Analyses, analyse
from lensworks.report._context import FALLBACK_NOTE, FALLBACK_SOURCE, Context, DataRead
from lensworks.report._markup import safe_markup
from lensworks.report._page import SECTIONS, build
from lensworks.report._registry import registry, section
from lensworks.report._sections import Entry, Section, SectionRun, Skipped, run_sections

__all__ = ["build", "analyse", "Analyses", "DataRead", "SECTIONS", "safe_markup", "FALLBACK_SOURCE", "FALLBACK_NOTE",
           "Section", "Context", "registry", "section", "run_sections", "SectionRun", "Entry", "Skipped"]
