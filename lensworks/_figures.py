"""Plotly building blocks every area's ``_plots.py`` uses (labels, references, head heatmaps, the
offline page). Imports nothing of lensworks, so any plotting module can use it; the public
:mod:`lensworks.plotting` re-exports it. Nothing here displays a figure itself."""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["head_heatmap", "figures_to_html", "escape_label", "add_reference", "reference_title", "sentence_case",
           "method_name"]

#: How method names read in titles (acronyms in capitals).
_METHOD_NAMES = {"pca": "PCA", "nmf": "NMF", "svd": "SVD", "lda": "LDA"}


def sentence_case(text: str) -> str:
    """``text`` with its first letter in capitals and the rest as it is: every figure and panel
    title of lensworks reads in sentence case.

    Example:
        >>> sentence_case("previous-token score per head"), sentence_case("W_E rows")
        ('Previous-token score per head', 'W_E rows')
    """
    return text[:1].upper() + text[1:]


def method_name(method: str) -> str:
    """A method's name as a title shows it: acronyms in capitals (``"pca"`` -> ``"PCA"``).

    Example:
        >>> method_name("pca"), method_name("frequency")
        ('PCA', 'frequency')
    """
    return _METHOD_NAMES.get(method, method)


def escape_label(text: str) -> str:
    """HTML-escape a token string or label for use in hover text, tick labels and titles.

    ``&``, ``<`` and ``>`` are escaped, so a token such as ``<script>`` shows as text; quotes are
    left alone because plotly.js writes labels as text content (never into attributes) and
    would show ``&quot;`` literally.

    Example:
        >>> escape_label('<b>"x"')
        '&lt;b&gt;"x"'
    """
    return html.escape(str(text), quote=False)


def reference_title(title: str, references: Iterable[Any]) -> str:
    """A figure title followed by the references it is read against, each as ``describe()`` says
    (a reference several parts share, such as one baseline for Q, K and V, once).

    Example:
        >>> from lensworks._results import Reference
        >>> reference_title("Induction score per head", [Reference.exact(0.05), Reference.exact(0.05)])
        'Induction score per head (chance 0.050)'
    """
    notes = list(dict.fromkeys(escape_label(ref.describe()) for ref in references))
    return f"{title} ({'; '.join(notes)})" if notes else title


def add_reference(
    fig: go.Figure,
    ref: Any,
    *,
    x: Sequence[Any] | None = None,
    orientation: str = "h",
    name: str | None = None,
    color: str = "grey",
    dash: str = "dash",
    fmt: str = ".3f",
    hover_text: Sequence[str] | None = None,
    row: int | None = None,
    col: int | None = None,
) -> go.Figure:
    """Draw a :class:`~lensworks._results.Reference` the one way every figure draws one.

    A dashed line at the reference's mean and, when it has an interval, a grey band from ``lo``
    to ``hi``, named ``ref.describe(fmt)``. A scalar reference without ``x`` spans the plot
    (``orientation="h"``: a horizontal line at ``y = mean``; ``"v"``: a vertical line at
    ``x = mean``), with the description as the line's annotation; otherwise the line and band
    are traces along ``x`` (a legend entry, and the description in the hover text), one
    position per entry for a reference with one value per entry.

    Args:
        fig: The figure to draw on (returned, drawn in place).
        ref: The reference.
        x: Positions along the x axis (for a per-entry reference, or to limit a scalar one).
        orientation: "h" or "v", for a scalar reference without ``x``.
        name: Legend name (default: ``ref.describe(fmt)``).
        color: Line colour.
        dash: Line style (plotly's ``line.dash``); "dash" unless two references share a plot.
        fmt: Number format of the description.
        hover_text: Hover text per position of ``x`` (HTML-escaped already), instead of the default
            ``"<x><br><name>: <value>"``.
        row: Subplot row of a ``make_subplots`` figure.
        col: Subplot column of a ``make_subplots`` figure.

    Example:
        >>> from lensworks._results import Reference
        >>> ref = Reference(mean=0.1, std=0.02, lo=0.07, hi=0.14, n=50, label="random")
        >>> [t.name for t in add_reference(go.Figure(), ref, x=[0, 1, 2]).data]
        ['random: interval', 'random 0.100 ± 0.020, n=50']
        >>> add_reference(go.Figure(), ref).layout.annotations[0].text
        'random 0.100 ± 0.020, n=50'
    """
    text = escape_label(ref.describe(fmt))
    name = escape_label(name) if name is not None else text
    where = {"row": row, "col": col} if row is not None else {}
    line = dict(color=color, dash=dash, width=1.5)
    band = dict(fill="toself", fillcolor="rgba(150,150,150,0.25)", line=dict(width=0), hoverinfo="skip")
    band_name = f"{escape_label(ref.name) if name == text else name}: interval"
    if ref.is_scalar and x is None:
        if orientation not in ("h", "v"):
            raise ValueError(f"orientation must be 'h' or 'v', got {orientation!r}")
        if ref.has_interval and ref.lo != ref.hi:
            adder = fig.add_hrect if orientation == "h" else fig.add_vrect
            span = dict(y0=ref.lo, y1=ref.hi) if orientation == "h" else dict(x0=ref.lo, x1=ref.hi)
            adder(**span, fillcolor="rgba(150,150,150,0.25)", line_width=0, layer="below", **where)
        adder = fig.add_hline if orientation == "h" else fig.add_vline
        pos = dict(y=float(ref.mean)) if orientation == "h" else dict(x=float(ref.mean))
        adder(**pos, line=line, annotation_text=name, annotation_font_color=color, **where)
        return fig
    xs = list(x) if x is not None else []
    means = [float(ref.mean)] * len(xs) if ref.is_scalar else ref.mean.tolist()
    if len(means) != len(xs):
        raise ValueError(f"x has {len(xs)} positions for a reference with {len(means)} entries")
    hover = f"%{{x}}<br>{name}: %{{y:{fmt}}}"
    custom = None
    lo = [float(ref.lo)] * len(xs) if ref.is_scalar else ref.lo.tolist()
    hi = [float(ref.hi)] * len(xs) if ref.is_scalar else ref.hi.tolist()
    if ref.has_interval and lo != hi:  # an exact level has no band
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], name=band_name, **band), **where)
        custom = list(zip(lo, hi))
        hover += f" [%{{customdata[0]:{fmt}}}, %{{customdata[1]:{fmt}}}]"
    if hover_text is not None:
        if len(hover_text) != len(xs):
            raise ValueError(f"hover_text has {len(hover_text)} entries for {len(xs)} positions")
        hover = "%{text}"
    fig.add_trace(go.Scatter(x=xs, y=means, mode="lines", name=name, line=line, customdata=custom,
                             text=list(hover_text) if hover_text is not None else None,
                             hovertemplate=hover + "<extra></extra>"), **where)
    return fig


def head_heatmap(
    values,
    *,
    title: str,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    x_title: str,
    y_title: str,
    colorbar_title: str,
    zmin: float | None = None,
    zmax: float | None = None,
    colorscale: str = "Viridis",
    hover_name: str = "score",
) -> go.Figure:
    """A labelled heatmap with hover text ``y, x: value``.

    Example:
        >>> fig = head_heatmap([[0.1]], title="t", x_labels=["H0"], y_labels=["L0"],
        ...                    x_title="head", y_title="layer", colorbar_title="score")
    """
    z = values.tolist() if hasattr(values, "tolist") else values
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[escape_label(s) for s in x_labels],
            y=[escape_label(s) for s in y_labels],
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            colorbar=dict(title=colorbar_title),
            hovertemplate=f"%{{y}} → %{{x}}<br>{hover_name}: %{{z:.4f}}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, yaxis_autorange="reversed")
    return fig


def figures_to_html(figures: Sequence[Any], *, title: str) -> str:
    """One self-contained HTML page (plotly.js inlined) holding the figures in order.

    Example:
        >>> page = figures_to_html([go.Figure()], title="demo")
        >>> "<html" in page
        True
    """
    parts = []
    for i, fig in enumerate(figures):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if i == 0 else False))
    body = "\n".join(f'<section class="figure">{p}</section>' for p in parts)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{escape_label(title)}</title></head>\n<body><h1>{escape_label(title)}</h1>\n{body}\n</body></html>\n"
    )
