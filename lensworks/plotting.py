"""Plotly figure builders shared by the results. Library code imports plotly only in plotting
modules (this one and ``lensworks/<area>/_plots.py``); nothing here displays a figure itself."""

from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["head_heatmap", "figures_to_html", "escape_label", "attention_explorer"]


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


def attention_explorer(
    model: Any,
    data: Any,
    *,
    max_tokens: int = 48,
    max_prompts: int = 4,
    heads: Sequence[tuple[int, int]] | None = None,
    prepend_bos: bool | None = None,
) -> Any:
    """The attention pattern of any head on any of the given prompts, chosen from a dropdown.

    One heatmap (destination tokens down, source tokens across, token strings on both axes;
    hover shows both tokens and the weight) and a dropdown over every (prompt, layer, head).
    Self-contained plotly: it works offline in Jupyter, VS Code and the HTML report.

    Args:
        model: The model.
        data: Strings or a ``[batch, pos]`` token tensor.
        max_tokens: Tokens kept per prompt (the first ones).
        max_prompts: Prompts kept.
        heads: ``(layer, head)`` pairs to offer (default: every head).
        prepend_bos: Prepend BOS to strings (default: the model's setting).

    Returns:
        A plotly Figure: :func:`lensworks.circuits.attention_patterns` computes the patterns (an
        ``AttentionPatterns`` result) and its ``figure()`` draws them.

    Example:
        >>> fig = attention_explorer(model, ["def f(x):", "import os"])  # doctest: +SKIP
    """
    from lensworks.circuits.attention import attention_patterns

    return attention_patterns(model, data, max_tokens=max_tokens, max_prompts=max_prompts, heads=heads,
                              prepend_bos=prepend_bos).figure()
