"""Plotly figures specific to circuits results (plotly is imported only in plotting modules)."""

from __future__ import annotations

import plotly.graph_objects as go

from lensworks._heads import HeadId
from lensworks._figures import escape_label, reference_title

__all__ = ["induction_scatter", "attention_figure", "attention_grid_figure", "circuit_graph_figure",
           "skip_trigrams_figure", "term_importance_figure", "mark_cells"]

#: Edge colour of each composition mode in the circuit graph.
_MODE_COLOURS = {"Q": "#1f77b4", "K": "#d62728", "V": "#2ca02c"}


def mark_cells(fig: go.Figure, x: list[str], y: list[str], customdata: list[list[float]], *, name: str,
               hover: str) -> go.Figure:
    """Draw a white star on the heatmap cells ``(x[i], y[i])`` of ``fig`` (labels unescaped), in place.

    One scatter trace after the heatmap (the report's head picker reads the heatmap as trace 0),
    named ``name``, out of the legend (the colour bar's title says what a star means), with
    ``hover`` as its hover template over ``customdata``. Nothing is added when there is no cell.
    """
    if not x:
        return fig
    fig.add_trace(go.Scatter(
        x=[escape_label(v) for v in x], y=[escape_label(v) for v in y], mode="markers", name=escape_label(name),
        marker=dict(symbol="star", size=13, color="white", line=dict(color="black", width=1)),
        customdata=customdata, hovertemplate=hover + "<extra></extra>", showlegend=False,
    ))
    return fig


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
        title="Induction heads: behaviour vs OV copying (marker size: K-composition z)",
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
            views.append((f"prompt {p} · {HeadId(layer, head).label}", labels, patterns.patterns[p, v, :n, :n]))
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


def _grid_hover(tokens) -> list[list[str]]:
    """``[query][key]`` hover lines naming both tokens (escaped); empty above the diagonal."""
    labels = [escape_label(repr(t)) for t in tokens]
    return [[f"query {q} {labels[q]}<br>key {k} {labels[k]}" if k <= q else "" for k in range(len(tokens))]
            for q in range(len(tokens))]


def attention_grid_figure(patterns, prompt: int = 0, layer: int | None = None, columns: int = 4) -> go.Figure:
    """Small multiples of an :class:`~lensworks.circuits.attention.AttentionPatterns`: one heatmap
    per head of a layer on one prompt (queries down, keys across, 0-1 on one colour scale), as
    CircuitsVis's ``attention_heads`` lays them out; hover names the query and key tokens and the
    weight. ``layer=None`` draws every layer that has heads, the first shown and a menu to switch
    (each trace is one head: ``len(fig.data) == len(patterns.heads)``). No token labels on the
    small axes; the hover carries them.
    """
    import math

    from plotly.subplots import make_subplots

    tokens = patterns.tokens[prompt]
    n = len(tokens)
    by_layer: dict[int, list[tuple[int, int]]] = {}  # layer -> [(view, head)]
    for v, (l, h) in enumerate(patterns.heads):
        if layer is None or l == layer:
            by_layer.setdefault(l, []).append((v, h))
    layers = sorted(by_layer)
    order = [(l, i) for l in layers for i in range(len(by_layer[l]))]  # the traces, in order
    cells = max(len(v) for v in by_layer.values())
    cols = min(columns, cells)
    rows = math.ceil(cells / cols)

    def labels(l: int) -> list[str]:
        return [HeadId(l, h).label for _, h in by_layer[l]] + [" "] * (rows * cols - len(by_layer[l]))  # one title each

    fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels(layers[0]), horizontal_spacing=0.04,
                        vertical_spacing=min(0.08, 0.3 / rows) if rows > 1 else 0.0)
    hover = _grid_hover(tokens)
    for l, i in order:
        v, h = by_layer[l][i]
        fig.add_trace(go.Heatmap(
            z=patterns.patterns[prompt, v, :n, :n].tolist(), text=hover, zmin=0, zmax=1, colorscale="Blues",
            showscale=l == layers[0] and i == 0, colorbar=dict(title="attention"), visible=l == layers[0],
            name=HeadId(l, h).label, hovertemplate=f"{HeadId(l, h).label}<br>%{{text}}<br>weight %{{z:.3f}}<extra></extra>"),
            row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed", constrain="domain")
    for k in range(rows * cols):  # square cells: each y axis keeps its own x axis's scale
        fig.update_yaxes(scaleanchor=f"x{k + 1 if k else ''}", row=k // cols + 1, col=k % cols + 1)
    titles = [a.to_plotly_json() for a in fig.layout.annotations]

    def title(l: int) -> str:
        return (f"Attention of every head of layer {l} on prompt {prompt} ({n} tokens): query (destination) down, "
                "key (source) across")

    buttons = [dict(label=f"layer {l}", method="update",
                    args=[{"visible": [tl == l for tl, _ in order], "showscale": [tl == l and i == 0 for tl, i in order]},
                          {"title.text": title(l), "annotations": [dict(a, text=t) for a, t in zip(titles, labels(l))]}])
               for l in layers]
    height, top, bottom = 130 + 230 * rows, 100, 30
    menu_y = 1 + 55 / (height - top - bottom)  # between the title and the heads' titles, in paper units
    fig.update_layout(title=title(layers[0]), template="plotly_white", height=height, margin=dict(t=top, b=bottom),
                      updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=menu_y,
                                        yanchor="middle")] if len(layers) > 1 else [])
    return fig


def circuit_graph_figure(graph) -> go.Figure:
    """A :class:`~lensworks.circuits.graph.CircuitGraph`: layers left to right, heads top to bottom;
    edges coloured by composition mode, width by z."""
    pos = {n["label"]: (n["layer"], -n["head"]) for n in graph.nodes}
    fig = go.Figure()
    z_top = max([e[4] for e in graph.edges], default=1.0)
    for a, b, mode, score, z in graph.edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
                                 line=dict(color=_MODE_COLOURS.get(mode, "#888"), width=1 + 5 * z / z_top),
                                 hovertemplate=f"{a} → {b}<br>{mode}-composition {score:.3f} (z {z:.1f})<extra></extra>"))
    for mode in graph.modes:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{mode}-composition",
                                 line=dict(color=_MODE_COLOURS.get(mode, "#888"), width=3)))
    hover = [f"{n['label']}<br>roles: {', '.join(n['roles']) or 'none'}<br>previous-token {n['previous_token']:.2f}, "
             f"duplicate {n['duplicate_token']:.2f}, induction {n['induction']:.2f}, copying {n['copying']:+.2f}"
             for n in graph.nodes]
    fig.add_trace(go.Scatter(x=[pos[n["label"]][0] for n in graph.nodes], y=[pos[n["label"]][1] for n in graph.nodes],
                             mode="markers+text", text=[n["label"] for n in graph.nodes], textposition="top center",
                             marker=dict(size=[16 if n["roles"] else 9 for n in graph.nodes],
                                         color=["#ff7f0e" if n["roles"] else "#bbb" for n in graph.nodes]),
                             hovertext=hover, hoverinfo="text", name="heads (orange: has a role)"))
    fig.update_layout(title=reference_title(f"Circuit graph: composition at least {graph.z_min:g} std above random factors",
                                            graph.references().values()),
                      xaxis=dict(title="layer", dtick=1), yaxis=dict(title="head", showticklabels=False),
                      template="plotly_white")
    return fig


def skip_trigrams_figure(tri) -> go.Figure:
    """A :class:`~lensworks.circuits.trigrams.SkipTrigrams`: bars of the OV entries, labelled
    ``destination … source → out``; hover shows the QK entry."""
    labels = [f"{d!r} … {s!r} → {o!r}" for d, s, o in zip(tri.destination_labels, tri.source_labels, tri.out_labels)]
    fig = go.Figure(go.Bar(x=tri.ov.tolist()[::-1], y=labels[::-1], orientation="h",
                           customdata=tri.qk.tolist()[::-1],
                           hovertemplate="%{y}<br>OV %{x:.3f}<br>QK %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=f"Skip-trigrams of {tri.head_id.label}: the {len(labels)} largest full-OV entries",
                      xaxis_title="W_E[source] W_OV W_U[:, out]", template="plotly_white",
                      height=max(320, 22 * len(labels) + 120))
    return fig


def term_importance_figure(ti, top: int = 20) -> go.Figure:
    """A :class:`~lensworks.circuits.terms.TermImportance`: loss against the largest path order
    kept (left); the ``top`` terms whose removal costs most (right)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6], horizontal_spacing=0.18,
                        subplot_titles=("Loss keeping paths through ≤ k heads",
                                        "Loss increase when one term is removed (colour: order)"))
    ks = list(range(len(ti.loss_by_order)))
    fig.add_trace(go.Scatter(x=ks, y=ti.loss_by_order.tolist(), mode="lines+markers", name="expansion",
                             hovertemplate="≤ %{x} heads<br>loss %{y:.4f} nats<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ks, y=[ti.model_loss] * len(ks), mode="lines", name="model",
                             line=dict(dash="dash", color="grey"),
                             hovertemplate="model loss %{y:.4f}<extra></extra>"), row=1, col=1)
    frame = ti.to_frame().head(top).iloc[::-1]
    colours = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]
    fig.add_trace(go.Bar(x=frame["loss_increase"], y=frame["term"], orientation="h", showlegend=False,
                         marker_color=[colours[o % len(colours)] for o in frame["order"]],
                         customdata=frame[["order", "loss_without"]].to_numpy(),
                         hovertemplate="%{y} (order %{customdata[0]})<br>loss without it %{customdata[1]:.4f}"
                                       "<br>increase %{x:.4f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="k (heads on a path)", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="mean next-token loss (nats)", row=1, col=1)
    fig.update_xaxes(title_text="nats", row=1, col=2)
    fig.update_layout(title=f"Term importance: paths through the heads, patterns and norms frozen ({ti.n_tokens:,} "
                            f"predictions)", template="plotly_white", height=max(400, 22 * len(frame) + 160),
                      legend=dict(x=0.33, y=0.98, xanchor="right"))
    return fig
