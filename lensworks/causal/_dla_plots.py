"""Figures of direct logit attribution and path patching (each reads its result and builds nothing else)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lensworks.plotting import escape_label, head_heatmap

__all__ = ["dla_figure", "path_figure"]


def dla_figure(res: Any) -> go.Figure:
    """Heads as a layer x head heatmap (diverging, centred on 0) beside bars for every other row."""
    grid = res.head_attributions()
    lim = float(res.mean().abs().max()) or 1.0
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.15,
                        subplot_titles=("Heads", "MLPs, embeddings, biases"))
    fig.add_trace(go.Heatmap(
        z=grid.tolist(), x=[f"H{h}" for h in range(res.n_heads)], y=[f"L{l}" for l in range(res.n_layers)],
        zmin=-lim, zmax=lim, colorscale="RdBu", reversescale=True, colorbar=dict(title=res.target, x=0.45),
        hovertemplate="%{y}%{x}: %{z:.4f}<extra></extra>"), row=1, col=1)
    others = [(label, float(v)) for label, kind, v in zip(res.labels, res.kinds, res.mean()) if kind != "head"]
    fig.add_trace(go.Bar(x=[escape_label(l) for l, _ in others], y=[v for _, v in others], showlegend=False,
                         hovertemplate="%{x}: %{y:.4f}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(title=f"Direct logit attribution to the {res.target} (total {float(res.logit_diff.mean()):.3f})")
    return fig


def path_figure(res: Any) -> go.Figure:
    """A sweep: the normalised effect of each sender head on the receiver (layer x head); a set of
    senders: bars of the clean, corrupted and path-patched metric."""
    if res.sweep:
        grid = res.effect_grid()
        return head_heatmap(grid, title=f"Path patching into {escape_label(res.receiver)}: change of the "
                            f"{res.metric_words} when one sender head's path is patched",
                            x_labels=[f"H{h}" for h in range(grid.shape[1])],
                            y_labels=[f"L{l}" for l in range(grid.shape[0])], x_title="sender head",
                            y_title="sender layer", colorbar_title="patched - clean", colorscale="RdBu",
                            hover_name="change")
    names = ["clean", "corrupted"] + [escape_label(s) for s in res.sender_labels]
    values = [res.clean_metric, res.corrupted_metric] + [float(v) for v in res.patched]
    fig = go.Figure(go.Bar(x=names, y=values, hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"Path patching into {escape_label(res.receiver)}", yaxis_title=res.metric_words)
    return fig
