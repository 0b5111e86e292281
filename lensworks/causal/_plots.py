"""Plotly figures and notebook HTML of the causal results (plotly is imported only in plotting modules)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from lensworks._heads import HeadId
from lensworks._figures import escape_label
from lensworks.causal._metrics import PATCH_TARGETS

__all__ = ["patching_figure", "result_html"]


def _axes(result, target: str, values) -> tuple[list[str], list[str], str, str]:
    """(x labels, y labels, x title, y title) of one target's heatmap."""
    L = values.shape[0]
    layers = [f"L{l}" for l in range(L)]
    pos = list(result.positions) if result.positions is not None else None

    def pos_labels(n: int) -> list[str]:
        ps = pos if pos is not None else list(range(n))
        toks = result.tokens
        return [f"{p} {toks[p]}" if p < len(toks) else str(p) for p in ps]

    if PATCH_TARGETS[target][1] == "pos":
        return pos_labels(values.shape[1]), layers, "position (token)", "layer"
    if values.ndim == 2:
        return [f"H{h}" for h in range(values.shape[1])], layers, "head", "layer"
    heads = [HeadId(l, h).label for l in range(L) for h in range(values.shape[2])]
    return pos_labels(values.shape[1]), heads, "position (token)", "head"


def patching_figure(result, *, title: str = "Activation patching") -> go.Figure:
    """One heatmap per target of an :class:`ActivationPatching` or :class:`AttributionPatching`
    (values normalised: 1 = no change from the unpatched run's metric... 0 = the other run's), a
    menu to switch between targets."""
    fig = go.Figure()
    targets = list(result.scores)
    gap = result.clean_metric - result.corrupted_metric
    for i, target in enumerate(targets):
        values = result.scores[target]
        z = (values - result.corrupted_metric) / gap if gap != 0.0 else values
        x, y, xt, yt = _axes(result, target, values)
        if values.ndim == 3:  # [layer, pos, head] -> rows are heads, columns positions
            z = z.permute(0, 2, 1).reshape(-1, values.shape[1])
        fig.add_trace(go.Heatmap(
            z=z.tolist(), x=[escape_label(s) for s in x], y=[escape_label(s) for s in y], visible=i == 0,
            colorscale="RdBu", zmid=0.5 if gap != 0.0 else None, name=target,
            colorbar=dict(title="normalised" if gap != 0.0 else "metric"),
            hovertemplate=f"{target}<br>%{{y}}, %{{x}}<br>value: %{{z:.4f}}<extra></extra>"))
    buttons = [dict(label=t, method="update",
                    args=[{"visible": [j == i for j in range(len(targets))]},
                          {"xaxis.title.text": _axes(result, t, result.scores[t])[2],
                           "yaxis.title.text": _axes(result, t, result.scores[t])[3]}])
               for i, t in enumerate(targets)]
    first = _axes(result, targets[0], result.scores[targets[0]]) if targets else ([], [], "", "")
    fig.update_layout(
        title=f"{title}: {result.metric}, clean {result.clean_metric:.4g}, corrupted {result.corrupted_metric:.4g}"
              + (" (1 = clean, 0 = corrupted)" if gap != 0.0 else ""),
        xaxis_title=first[2], yaxis_title=first[3], yaxis_autorange="reversed",
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")]
        if len(targets) > 1 else [],
    )
    return fig


def result_html(result, rows: int = 5) -> str:
    """A notebook's view of a patching result: the headline and its strongest sites."""
    frame = result.to_frame()
    base = result.clean_metric if result.direction == "noise" else result.corrupted_metric
    frame = frame.assign(change=(frame["metric"] - base).abs()).sort_values("change", ascending=False).head(rows)
    head = html.escape(result.headline() or "")
    table = frame.drop(columns=["change"]).to_html(index=False, float_format=lambda v: f"{v:.4g}")
    return f"<div><p><b>{html.escape(type(result).__name__)}</b>: {head}</p>{table}</div>"
