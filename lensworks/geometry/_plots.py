"""Plotly figures for the geometry results (the only geometry module that imports plotly)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lensworks._figures import add_reference, escape_label

__all__ = [
    "residual_stats_figure",
    "ablation_figure",
    "logit_lens_figure",
    "decomposition_figure",
    "neighbour_figure",
    "alignment_figure",
    "subspaces_figure",
    "tune_figure",
    "similar_windows_figure",
    "neighbour_prediction_figure",
    "dimensionality_figure",
]

_DASH = {"resid_pre": "solid", "resid_mid": "dash", "resid_post": "dot", "attn_out": "dashdot", "mlp_out": "longdash"}
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def residual_stats_figure(stats: Any, a: str | None, b: str | None) -> go.Figure:
    """Seed 000's three panels: cosine of the class means, mean and max of the variance."""
    names = list(stats.datasets)
    layers = list(range(stats.n_layers))
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
        subplot_titles=("Cosine of the data sets' mean vectors", "Mean over features of the variance",
                        "Max over features of the variance"),
    )
    if len(names) >= 2 or (a and b):
        a = a or names[0]
        b = b or names[1]
        for s, cos in stats.cosine(a, b).items():
            fig.add_trace(go.Scatter(
                x=layers, y=cos.tolist(), mode="lines+markers", name=f"cos({escape_label(a)}, {escape_label(b)}) {s}",
                line=dict(dash=_DASH.get(s, "solid"), color="black"),
                hovertemplate=f"{s}<br>layer %{{x}}<br>cosine %{{y:.4f}}<extra></extra>"), row=1, col=1)
    for di, d in enumerate(names):
        color = _COLORS[di % len(_COLORS)]
        for panel, values in ((2, stats.var_mean(d)), (3, stats.var_max(d))):
            for si, s in enumerate(stats.streams):
                fig.add_trace(go.Scatter(
                    x=layers, y=values[si].tolist(), mode="lines+markers", name=f"{escape_label(d)} {s}",
                    legendgroup=f"{d}{s}", showlegend=panel == 2,
                    line=dict(dash=_DASH.get(s, "solid"), color=color),
                    hovertemplate=f"{escape_label(d)} · {s}<br>layer %{{x}}<br>variance %{{y:.4g}}<extra></extra>"),
                    row=panel, col=1)
    positive = all(float(stats.var_max(d).min()) > 0 for d in names)
    fig.update_yaxes(title_text="cosine (unitless)", row=1, col=1)
    fig.update_yaxes(title_text="variance (activation units²)", type="log" if positive else "linear", row=2, col=1)
    fig.update_yaxes(title_text="variance (activation units²)", type="log" if positive else "linear", row=3, col=1)
    fig.update_xaxes(title_text="layer (block index)", row=3, col=1)
    fig.update_xaxes(tickmode="linear", dtick=1)  # layers are whole numbers
    fig.update_layout(title=f"Residual-stream statistics at position {stats.position}", height=900)
    return fig


def ablation_figure(table: Any) -> go.Figure:
    """Grouped bars: Hellinger distance when dropping attention / MLP, per block, with std."""
    blocks = [f"block {i}" for i in range(len(table.drop_attn_hellinger))]
    fig = go.Figure()
    for key, label, color in (("drop_attn", "drop attention (x + mlp_out)", "#2ca02c"),
                              ("drop_mlp", "drop MLP (x + attn_out)", "#1f77b4")):
        h = getattr(table, f"{key}_hellinger")
        mean, std = h.mean(1).tolist(), table._std(h).tolist()
        fig.add_trace(go.Bar(
            x=blocks, y=mean, name=label, marker_color=color, error_y=dict(type="data", array=std),
            hovertemplate=f"{label}<br>%{{x}}<br>Hellinger mean %{{y:.4f}}<extra></extra>"))
    title = "Block ablation: Hellinger distance to the normal next-token distribution"
    if not table.decomposition_ok:
        title += " (warning: the residual decomposition does not add up)"
    fig.update_layout(title=title, barmode="group", xaxis_title="block (0-based)", xaxis_dtick=1,
                      yaxis_title="Hellinger distance (0 = same, 1 = disjoint)", yaxis_range=[0, 1])
    return fig


def _one_line(text: str, limit: int = 40) -> str:
    """A prompt as one escaped line for a title or hover: whitespace shown as ⏎ / → / a space,
    cut to ``limit`` characters."""
    flat = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", "→")
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return escape_label(flat)


def logit_lens_figure(lens: Any) -> go.Figure:
    """Heatmap of KL(final || layer) per layer and prompt, hover shows each layer's top token."""
    kl = lens.kl.tolist()
    labels = list(lens.layer_labels)
    texts = [_one_line(p) for p in lens.prompt_labels]
    top = [[[escape_label(t), texts[j]] for j, t in enumerate(row)] for row in lens.top_token_strings()]
    fig = go.Figure(go.Heatmap(
        z=kl, x=list(range(len(texts))), y=labels, customdata=top, colorscale="Viridis",
        colorbar=dict(title="KL (nats)"),
        hovertemplate="%{y}<br>prompt %{x}: %{customdata[1]}<br>KL(final ‖ layer) %{z:.4f} nats"
                      "<br>top token %{customdata[0]}<extra></extra>"))
    fig.update_layout(title="Logit lens: KL divergence of each layer's prediction from the final one",
                      xaxis_title="prompt (index; hover for its text)", yaxis_title="residual stream read (layer)",
                      yaxis_autorange="reversed", xaxis_dtick=1 if len(texts) <= 40 else None)
    return fig


def _path(vectors_norm: Sequence[float], cos_with_sum: Sequence[float], start: float = 0.0):
    """A 2-D tip-to-tail path: lengths equal the norms, and each arrow's angle to the running sum
    of the arrows before it equals its real cosine with the real running sum."""
    xs, ys = [0.0], [0.0]
    x = y = 0.0
    heading = start
    for i, (n, c) in enumerate(zip(vectors_norm, cos_with_sum)):
        if i == 0:
            angle = start
        else:
            heading = math.atan2(y, x) if (x or y) else heading
            angle = heading + math.acos(max(-1.0, min(1.0, c)))
        x += n * math.cos(angle)
        y += n * math.sin(angle)
        xs.append(x)
        ys.append(y)
    return xs, ys


def decomposition_figure(dec: Any, prompt: int) -> go.Figure:
    """Seed 004's tip-to-tail picture for one prompt: full path and FFN-only path, drawn to scale."""
    full = dec.path_full(prompt)
    ffn = dec.path_ffn_only(prompt)
    fig = go.Figure()
    for (labels, norms, coss), name, color in ((full, "embed + attn + MLP outputs", "#2ca02c"),
                                               (ffn, "embed + MLP outputs only", "#1f77b4")):
        xs, ys = _path(norms, coss, start=math.pi / 2)
        hover = ["start"] + [f"{escape_label(l)}<br>norm {n:.3f}<br>cos with running sum {c:.3f}"
                             for l, n, c in zip(labels, norms, coss)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=color),
                                 text=hover, hovertemplate="%{text}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[0, xs[-1]], y=[0, ys[-1]], mode="lines", name=f"sum ({name})",
                                 line=dict(color="gray", dash="dash"),
                                 hovertemplate=f"final sum, norm {math.hypot(xs[-1], ys[-1]):.3f}<extra></extra>"))
    fig.update_layout(
        title=f"Block outputs tip to tail (prompt {prompt}: {_one_line(dec.prompt_labels[prompt])}); "
              f"cos(final, embed + MLP only) = {float(dec.ffn_only_cosine[prompt]):.3f}",
        xaxis_title="2-D layout (activation units)", yaxis_title="2-D layout (activation units)",
        yaxis_scaleanchor="x")
    return fig


def neighbour_figure(evaluation: Any) -> go.Figure:
    """Histogram of per-prompt Hellinger distances between the approximation and the model."""
    h = evaluation.hellinger.tolist()
    fig = go.Figure(go.Histogram(x=h, nbinsx=40, marker_color="#1f77b4",
                                 hovertemplate="Hellinger %{x}<br>prompts %{y}<extra></extra>"))
    fig.update_layout(
        title=f"FFN-neighbour approximation vs model: Hellinger distance per prompt "
              f"(mean {evaluation.mean:.3f} ± {evaluation.std:.3f}, {evaluation.n_unmatched} without neighbours)",
        xaxis_title="Hellinger distance (0 = same, 1 = disjoint)", yaxis_title="prompts (count)",
        xaxis_range=[0, 1])
    for ref in evaluation.references().values():
        add_reference(fig, ref, orientation="v")
    return fig


def alignment_figure(al: Any, top: int = 20) -> go.Figure:
    """Heatmap of the cosine between each vector and its projection on each token subspace."""
    k = min(top, al.cosine.shape[1])
    order = al.cosine.mean(0).argsort(descending=True)[:k]
    z = al.cosine[:, order].tolist()
    x = [escape_label(al.token_labels[i]) for i in order.tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=[str(i) for i in range(len(z))], colorscale="Viridis",
                               colorbar=dict(title="cosine"),
                               hovertemplate="vector %{y}<br>token %{x}<br>cosine %{z:.4f}<extra></extra>"))
    fig.update_layout(title="Alignment of vectors with token subspaces", xaxis_title="token subspace",
                      yaxis_title="vector (index)")
    return fig


def subspaces_figure(subs: Any) -> go.Figure:
    """Per token: lowest probability reached by the learned embeddings, and by the first basis vector."""
    labels = [escape_label(repr(t)) for t in subs.token_labels]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=subs.final_prob.min(1).values.tolist(), name="learned embeddings (min over samples)",
                         hovertemplate="token %{x}<br>min probability %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Bar(x=labels, y=subs.basis_prob.tolist(), name="first singular direction",
                         hovertemplate="token %{x}<br>probability %{y:.4f}<extra></extra>"))
    fig.add_hline(y=subs.target_prob, line_dash="dash", annotation_text=f"target {subs.target_prob}")
    fig.update_layout(title=f"Token subspaces at {subs.at}: probability of the token", barmode="group",
                      xaxis_title="token", yaxis_title="probability of the token", yaxis_range=[0, 1])
    return fig


def tune_figure(res: Any) -> go.Figure:
    """Tuned threshold and weight per block."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Cosine threshold", "Weight"))
    blocks = [f"block {b}" for b in res.blocks]
    fig.add_trace(go.Bar(x=blocks, y=list(res.thresholds), name="threshold",
                         hovertemplate="%{x}<br>threshold %{y:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=blocks, y=list(res.weights), name="weight",
                         hovertemplate="%{x}<br>weight %{y:.3g}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="block (0-based)")
    fig.update_yaxes(title_text="cosine (unitless)", row=1, col=1)
    fig.update_yaxes(title_text="weight (unitless)", row=1, col=2)
    fig.update_layout(title=f"Tuned neighbour approximation (mean Hellinger {res.mean_hellinger:.3f})")
    return fig


def similar_windows_figure(sim: Any, top: int = 40) -> go.Figure:
    """Horizontal bars of the cosines of the closest windows, labelled by their text, closest on top."""
    k = min(top, len(sim.texts))
    labels = [f"{i}: {escape_label(repr(t))}" for i, t in zip(sim.indices[:k].tolist(), sim.texts[:k])]
    fig = go.Figure(go.Bar(
        x=sim.cosines[:k].tolist(), y=labels, orientation="h", marker_color="#1f77b4",
        customdata=sim.next_counts[:k].tolist(),
        hovertemplate="window %{y}<br>cosine %{x:.4f}<br>followed by %{customdata} tokens<extra></extra>"))
    shown = f"the {k} closest of {len(sim.texts):,}" if k < len(sim.texts) else f"{k:,}"
    fig.update_layout(
        title=f"Corpus windows with cosine > {sim.threshold:g} to {escape_label(repr(sim.prompt))} at block {sim.block} "
              f"({shown})",
        xaxis_title="cosine with the prompt's block output (unitless)", yaxis_title="window (index: text)",
        yaxis_autorange="reversed", xaxis_range=[min(0.0, sim.threshold), 1], height=max(300, 22 * k + 150))
    return fig


def neighbour_prediction_figure(pred: Any) -> go.Figure:
    """Bars of the per-prompt Hellinger distance, coloured by top-token agreement (grey: unmatched)."""
    h = pred.hellinger.tolist()
    frame = pred.to_frame()
    agree, matched = pred.top_agrees.tolist(), pred.matched.tolist()
    colors = ["#7f7f7f" if not m else ("#2ca02c" if a else "#d62728") for a, m in zip(agree, matched)]
    hover = [f"{escape_label(repr(r.prompt))}<br>predicted {escape_label(repr(r.top_token))} ({r.top_prob:.3f})"
             f"<br>model {escape_label(repr(r.model_top_token))} ({r.model_top_prob:.3f})"
             + ("" if m else "<br>no similar window: corpus frequencies")
             for r, m in zip(frame.itertuples(), matched)]
    fig = go.Figure(go.Bar(x=list(range(len(h))), y=h, marker_color=colors, text=hover, textposition="none",
                           hovertemplate="prompt %{x}<br>%{text}<br>Hellinger %{y:.4f}<extra></extra>"))
    fig.update_layout(
        title=f"Neighbour prediction vs model per prompt: top token agrees on {sum(agree)} of {len(h)} "
              f"(green agrees, red differs, grey no similar window)",
        xaxis_title="prompt (index)", yaxis_title="Hellinger distance (0 = same, 1 = disjoint)", yaxis_range=[0, 1])
    return fig


def dimensionality_figure(dim: Any) -> go.Figure:
    """An :class:`~lensworks.geometry.EffectiveDimensionality`: participation ratio and components
    for 90% of the variance against depth, one line per stream, one colour per stream in both panels."""
    import plotly.colors

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Participation ratio", "Components for 90% of variance"))
    palette = plotly.colors.qualitative.Plotly
    for si, s in enumerate(dim.streams):
        colour = palette[si % len(palette)]  # one colour per stream in both panels, as the legend says
        for col, values in ((1, dim.participation_ratio[si]), (2, dim.n_components_90[si])):
            fig.add_trace(go.Scatter(x=list(dim.layers), y=values.tolist(), mode="lines+markers", name=s,
                                     legendgroup=s, showlegend=col == 1, line={"color": colour},
                                     hovertemplate=f"{s}<br>layer %{{x}}<br>%{{y:.2f}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="layer", tickmode="linear", dtick=1)
    fig.update_layout(title=f"Effective dimensionality of the residual stream ({dim.n_samples} samples)",
                      template="plotly_white")
    return fig
