"""Plotly figures for the probes results (the only probes module that imports plotly)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lensworks._results import Reference
from lensworks._figures import add_reference, escape_label, method_name, sentence_case
from lensworks.probes._streams import STREAM_DEPTH

__all__ = ["probe_accuracy_figure", "comparison_figure", "basis_figure", "unlikely_usage_figure"]

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
_SYMBOLS = {"resid_pre": "circle", "resid_mid": "diamond", "resid_post": "square", "attn_out": "x", "mlp_out": "cross"}


def probe_accuracy_figure(res: Any) -> go.Figure:
    """Held-out accuracy against depth along the residual stream, one colour per offset.

    The x axis places ``resid_pre`` of layer ``l`` at ``l``, ``resid_mid`` at ``l + 0.5`` and
    ``resid_post`` at ``l + 1``. Solid: the probe; dashed: random-model control; dotted:
    shuffled-label control; grey: majority-class chance.
    """
    fig = go.Figure()
    refs = res.references()
    points = sorted(
        ((layer + STREAM_DEPTH[s], i, j, layer, s) for i, layer in enumerate(res.layers) for j, s in enumerate(res.streams)),
        key=lambda t: t[0],
    )
    xs = [p[0] for p in points]
    order = torch.tensor([[i, j] for _, i, j, _, _ in points]).reshape(-1, 2)

    def hover(name: str, ys: list[float], offset: int) -> list[str]:
        return [f"layer {layer}, {escape_label(s)}<br>offset {offset}<br>{name}: {y:.3f}"
                for (_, _, _, layer, s), y in zip(points, ys)]

    for k, offset in enumerate(res.offsets):
        color = _COLORS[k % len(_COLORS)]
        ys = [float(res.accuracy[i, j, k]) for _, i, j, _, _ in points]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"offset {offset}: probe",
                line=dict(color=color, width=2),
                marker=dict(symbol=[_SYMBOLS.get(p[4], "circle") for p in points], size=8),
                text=hover("probe", ys, offset),
                hovertemplate="%{text}<extra></extra>",
            )
        )
        for key, dash in (("control_random_model", "dash"), ("control_shuffled", "dot")):
            ref = refs.get(key)  # absent when the controls were off
            if ref is None:
                continue
            # a control is one measurement per cell (no spread or interval): its values along the x axis
            along = Reference(mean=ref.mean[order[:, 0], order[:, 1], k], n=ref.n, kind=ref.kind, label=ref.label)
            add_reference(fig, along, x=xs, color=color, dash=dash, name=f"offset {offset}: {ref.label}",
                          hover_text=hover(ref.label, along.mean.tolist(), offset))
        add_reference(fig, res.references()["chance"].at(k), x=[min(xs), max(xs)], dash="longdashdot",
                      name=f"offset {offset}: chance (majority token)")
    tickvals = sorted(set(xs))
    ticktext = []
    for v in tickvals:
        names = [f"L{p[3]} {p[4]}" for p in points if p[0] == v]
        ticktext.append("<br>".join(escape_label(n) for n in names[:2]))
    kind = "shared probe" if res.shared else "one probe per layer/stream"
    fig.update_layout(
        title=f"Recovering input tokens from the residual stream ({res.method}, {kind})",
        xaxis=dict(title="depth (block index; resid_pre at l, resid_mid at l+0.5, resid_post at l+1)", tickvals=tickvals, ticktext=ticktext),
        yaxis=dict(title="held-out top-1 accuracy (fraction)", range=[0, 1.02]),
        legend_title="offset: series",
    )
    return fig


def _method_of(text: str) -> str:
    """``"pca of W_E"`` -> ``"PCA of W_E"``: the method's name as titles write it."""
    head, _, rest = text.partition(" ")
    return method_name(head) + (f" {rest}" if rest else "")


def comparison_figure(cmp: Any) -> go.Figure:
    """Weight-mass share per basis component and principal-angle cosines, each against the null."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"Probe weight mass per component ({escape_label(_method_of(cmp.basis_method))})",
            "Principal-angle cosines with W_E / W_U",
        ),
    )
    k = len(cmp.basis_labels)
    labels = [escape_label(s) for s in cmp.basis_labels]
    x = list(range(k))
    fig.add_trace(
        go.Bar(
            x=x,
            y=cmp.mass_share.tolist(),
            name="probe",
            text=labels,
            hovertemplate="%{text}<br>share of probe weight: %{y:.4f}<extra></extra>",
            marker_color="#1f77b4",
        ),
        row=1,
        col=1,
    )
    refs = cmp.references()
    add_reference(fig, refs["mass"], x=x, fmt=".4f", row=1, col=1,
                  name=f"random, same spectrum (mean; {int(cmp.options['interval'] * 100)}% interval shaded)")
    fig.add_trace(
        go.Scatter(
            x=x,
            y=cmp.embed_mass_share.tolist(),
            mode="lines",
            name="W_E's own share",
            line=dict(color="black", dash="dash"),
            text=labels,
            hovertemplate="%{text}<br>share of W_E weight: %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for name, cos, lo, hi, color in (
        ("W_E", cmp.cosines_embed, cmp.cosines_embed_null_lo, cmp.cosines_embed_null_hi, "#d62728"),
        ("W_U", cmp.cosines_unembed, cmp.cosines_unembed_null_lo, cmp.cosines_unembed_null_hi, "#2ca02c"),
    ):
        r = list(range(1, len(cos) + 1))
        fig.add_trace(
            go.Scatter(
                x=r, y=cos.tolist(), mode="lines+markers", name=f"probe vs {name}", line=dict(color=color),
                hovertemplate=f"{name} angle %{{x}}: cos %{{y:.4f}}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        ref = refs.get(f"cosines_{'embed' if name == 'W_E' else 'unembed'}")
        if ref is not None:
            add_reference(fig, ref, x=r, color=color, fmt=".4f", row=1, col=2, name=f"random vs {name}")
        else:  # a result built before the null means were recorded: the band alone
            fig.add_trace(
                go.Scatter(
                    x=r + r[::-1], y=hi.tolist() + lo.tolist()[::-1], fill="toself", line=dict(width=0),
                    fillcolor="rgba(150,150,150,0.25)", name=f"random vs {name}", hoverinfo="skip",
                ),
                row=1,
                col=2,
            )
    fig.update_xaxes(title_text="basis component (ordered by importance, index)", row=1, col=1)
    fig.update_yaxes(title_text="share of squared weight (fraction)", row=1, col=1)
    fig.update_xaxes(title_text="principal angle (index, smallest first)", row=1, col=2)
    fig.update_yaxes(title_text="cosine of principal angle (unitless)", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="Probe weights against the embedding: closer or farther than chance?")
    return fig


def basis_figure(basis: Any) -> go.Figure:
    """Importance of each basis component."""
    labels = [escape_label(s) for s in basis.labels]
    fig = go.Figure(
        go.Bar(
            x=list(range(len(labels))),
            y=basis.importance.tolist(),
            text=labels,
            hovertemplate="%{text}<br>importance: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{escape_label(sentence_case(method_name(basis.method)))} basis of {escape_label(basis.source)}",
        xaxis_title="component (index, most important first)",
        yaxis_title=f"importance ({escape_label(basis.importance_name)})",
    )
    return fig


def unlikely_usage_figure(res: Any) -> go.Figure:
    """Share of the residual in the span of the least likely tokens' unembeddings, by depth."""
    x = list(res.depth_labels)
    xs = [escape_label(s) for s in x]
    fig = go.Figure()
    add_reference(fig, res.references()["random"], x=xs, fmt=".4f",
                  name=f"random {res.k} tokens (mean; {int(res.options['interval'] * 100)}% interval shaded)")
    for name, ys, color in (
        (f"{res.k} least likely tokens", res.share_unlikely, "#d62728"),
        (f"{res.k} most likely tokens", res.share_likely, "#1f77b4"),
    ):
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys.tolist(), mode="lines+markers", name=name, line=dict(color=color),
                hovertemplate=f"%{{x}}<br>{escape_label(name)}: %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Residual energy in the unembedding span of unlikely next tokens",
        xaxis_title="depth (residual stream after each block)",
        yaxis_title="share of squared residual norm (fraction)",
    )
    return fig
