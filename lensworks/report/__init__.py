"""One self-contained, offline HTML page from many lensworks results.

:func:`build` writes a single file: plotly.js inlined once, every figure as escaped JSON, a
table of contents, one section per area (circuits, geometry, probes), a caption and a data
table under each figure, and a head picker that outlines one head's row and column in the
composition heatmaps. :func:`analyse` runs the analyses that apply to a model and returns
results ready for :func:`build`.

Escaping: every string that reaches the page goes through :func:`html.escape`; strings inside
figures are made safe for plotly.js (a ``<`` that does not open one of plotly's few formatting
tags becomes ``&lt;``), and the figure JSON escapes ``<``, ``>`` and ``/`` so ``</script>`` in a
token cannot close the script element.

Layout: :mod:`._page` builds the page (:func:`build`), :mod:`._analyse` runs the analyses
(:func:`analyse`, :class:`Analyses`, :class:`DataRead`), :mod:`._markup` makes strings safe;
the CSS and scripts are files in ``lensworks/assets``.
"""

from lensworks.report._analyse import FALLBACK_NOTE, FALLBACK_SOURCE, Analyses, DataRead, analyse
from lensworks.report._markup import safe_markup
from lensworks.report._page import SECTIONS, build

__all__ = ["build", "analyse", "Analyses", "DataRead", "SECTIONS", "safe_markup", "FALLBACK_SOURCE", "FALLBACK_NOTE"]
