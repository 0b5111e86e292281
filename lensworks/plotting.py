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
        A plotly Figure.

    Example:
        >>> fig = attention_explorer(model, ["def f(x):", "import os"])  # doctest: +SKIP
    """
    import plotly.graph_objects as go
    import torch

    from lensworks.model import (LensworksError, check_head, check_token_tensor, encode_batch, hook_name, token_strings,
                                 uses_bos)
    from lensworks.model._compat import capture_hooks, require_finite_parameters

    from lensworks.model import check_int

    max_tokens = min(check_int(max_tokens, "max_tokens", low=1), model.cfg.n_ctx)
    max_prompts = min(check_int(max_prompts, "max_prompts", low=1), 2048)
    if isinstance(data, torch.Tensor):
        toks = check_token_tensor(model, data, what="data")
        lengths = torch.full((toks.shape[0],), toks.shape[1])
    else:
        texts = [data] if isinstance(data, str) else list(data)
        toks, lengths = encode_batch(model, texts[:max_prompts], prepend_bos=uses_bos(model, prepend_bos), what="data")
    toks, lengths = toks[:max_prompts, :max_tokens], lengths[:max_prompts].clamp(max=max_tokens)
    if toks.shape[0] == 0:
        raise LensworksError("data: no prompts given; expected at least one string or a non-empty token tensor")
    if heads is not None and len(list(heads)) == 0:
        raise LensworksError("heads is empty; pass None for every head or at least one (layer, head) pair")
    require_finite_parameters(model)
    pairs = [check_head(model, l, h) for l, h in heads] if heads is not None else [
        (l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    if len(pairs) * toks.shape[0] > 2048:
        raise LensworksError(f"{len(pairs) * toks.shape[0]} (prompt, head) views are too many for one page; "
                             "pass fewer prompts (max_prompts=) or heads=[(layer, head), ...]")
    layers = sorted({l for l, _ in pairs})
    patterns: dict[int, torch.Tensor] = {}

    def keep(name: str, act: torch.Tensor) -> None:
        patterns[int(name.split(".")[1])] = act.detach().float().cpu()

    with torch.inference_mode():
        model.run_with_hooks(toks.to(model.cfg.device), return_type=None,
                             fwd_hooks=capture_hooks([hook_name("pattern", l) for l in layers], keep))
    views = []
    for p in range(toks.shape[0]):
        ids, n = toks[p], int(lengths[p])
        labels = [escape_label(f"{i}:{t}") for i, t in enumerate(token_strings(model, ids[:n]))]
        for layer, head in pairs:
            z = patterns[layer][p, head, :n, :n]
            views.append((f"prompt {p} · L{layer}H{head}", labels, z.masked_fill(torch.ones(n, n).triu(1).bool(), float("nan"))))
    first = views[0]
    fig = go.Figure(go.Heatmap(z=first[2].tolist(), x=first[1], y=first[1], zmin=0, zmax=1, colorscale="Blues",
                               colorbar=dict(title="attention"),
                               hovertemplate="destination %{y}<br>source %{x}<br>weight %{z:.3f}<extra></extra>"))
    buttons = [dict(label=label, method="update", args=[{"z": [z.tolist()], "x": [xs], "y": [xs]},
                                                        {"title.text": f"Attention pattern: {label}"}])
               for label, xs, z in views]
    fig.update_layout(title=f"Attention pattern: {first[0]}", template="plotly_white",
                      xaxis=dict(title="source (key) token", tickangle=-60), yaxis=dict(title="destination (query) token",
                                                                                     autorange="reversed"),
                      updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
                      height=620)
    return fig
