"""Plotly figures specific to circuits results (plotly is imported only in plotting modules)."""

from __future__ import annotations

import plotly.graph_objects as go

from lensworks.plotting import escape_label

__all__ = ["induction_scatter", "attention_figure"]


def induction_scatter(report) -> go.Figure:
    """Induction score (x) against copying score (y) for every head of an InductionReport."""
    fig = go.Figure()
    for verdict, color in ((True, "crimson"), (False, "steelblue")):
        rows = [e for e in report.evidence if e.is_induction == verdict]
        if not rows:
            continue
        fig.add_trace(
            go.Scatter(
                x=[e.induction for e in rows],
                y=[e.copying for e in rows],
                mode="markers+text" if verdict else "markers",
                text=[escape_label(e.label) for e in rows] if verdict else None,
                textposition="bottom center",
                marker=dict(size=[8 + 2 * max(0.0, min(e.k_composition_z, 10.0)) for e in rows], color=color, opacity=0.8),
                name="induction head" if verdict else "other head",
                customdata=[
                    [escape_label(e.label), escape_label(e.previous_partner or "none"), e.k_composition, e.k_composition_z,
                     escape_label("; ".join(e.reasons) or "all evidence agrees")]
                    for e in rows
                ],
                hovertemplate=(
                    "%{customdata[0]}<br>induction %{x:.3f}<br>copying %{y:+.3f}<br>"
                    "K-comp with %{customdata[1]}: %{customdata[2]:.3f} (z=%{customdata[3]:.1f})"
                    "<br>%{customdata[4]}<extra></extra>"
                ),
            )
        )
    t = report.thresholds
    fig.add_vline(x=t["induction"], line_dash="dash", line_color="gray")
    fig.add_hline(y=0.0, line_dash="dot", line_color="gray")
    fig.update_layout(
        title="Induction heads: behaviour (x) vs OV copying (y); size = K-composition z with a previous-token head",
        xaxis_title="induction score (mean attention to token after previous copy, 0-1)",
        yaxis_title="copying score (sum Re λ / sum |λ|, -1..1)",
        xaxis_range=[-0.02, 1.02],
        yaxis_range=[-1.05, 1.05],
    )
    return fig


def attention_figure(patterns) -> go.Figure:
    """The attention explorer of an :class:`~lensworks.circuits.attention.AttentionPatterns`: one
    heatmap (destination tokens down, source tokens across) and a dropdown over every (prompt, head).

    The future (above the diagonal) is NaN, never drawn as 0; token labels are escaped here.
    """
    views = []
    for p, tokens in enumerate(patterns.tokens):
        n = len(tokens)
        labels = [escape_label(f"{i}:{t}") for i, t in enumerate(tokens)]
        for v, (layer, head) in enumerate(patterns.heads):
            views.append((f"prompt {p} · L{layer}H{head}", labels, patterns.patterns[p, v, :n, :n]))
    first = views[0]
    fig = go.Figure(go.Heatmap(z=first[2].tolist(), x=first[1], y=first[1], zmin=0, zmax=1, colorscale="Blues",
                               colorbar=dict(title="attention"),
                               hovertemplate="destination %{y}<br>source %{x}<br>weight %{z:.3f}<extra></extra>"))
    buttons = [dict(label=label, method="update", args=[{"z": [z.tolist()], "x": [xs], "y": [xs]},
                                                        {"title.text": f"Attention pattern: {label}"}])
               for label, xs, z in views]
    fig.update_layout(title=f"Attention pattern: {first[0]}", template="plotly_white",
                      xaxis=dict(title="source (key) token", tickangle=-60),
                      yaxis=dict(title="destination (query) token", autorange="reversed"),
                      updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
                      height=620)
    return fig
