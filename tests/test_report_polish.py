"""Report polish seen in a browser (issue 23, item 7): composition heatmaps mark the pairs that
stand above the random baseline, every figure and panel title is in sentence case, and the
verdict box wraps its long lines instead of overflowing sideways."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from helpers import planted_induction_model

from lensworks import report, zoo
from lensworks.circuits import circuit_graph, composition_scores
from lensworks.circuits.composition import SIGNIFICANT_Z
from lensworks.cli import main


def _marks(fig) -> set[tuple[str, str]]:
    """(writer, reader) of every starred cell: the scatter traces drawn over the heatmap."""
    assert fig.data[0].type == "heatmap", "the heatmap stays trace 0 (the report's head picker reads it)"
    return {(y, x) for t in fig.data[1:] if t.type == "scatter" for x, y in zip(t.x, t.y)}


def _expected(comp, z_min: float) -> set[tuple[str, str]]:
    """Every pair (layer_a < layer_b) whose z against the random-factor baseline is at least z_min."""
    z = ((comp.scores - comp.baseline.mean) / comp.baseline.std).tolist()
    L, H = comp.n_layers, comp.n_heads
    return {(f"L{la}H{ha}", f"L{lb}H{hb}") for la in range(L) for ha in range(H) for lb in range(la + 1, L)
            for hb in range(H) if z[la][ha][lb][hb] >= z_min}


@pytest.fixture(scope="module")
def induction_2l():
    return zoo.load("induction-2l")


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_marked_cells_are_exactly_the_pairs_above_the_threshold(induction_2l, mode):
    comp = composition_scores(induction_2l, mode)
    want = _expected(comp, SIGNIFICANT_Z)
    assert _marks(comp.figure()) == want
    assert {(p.src.label, p.dst.label) for p in comp.significant()} == want
    if mode == "K":  # each layer-1 head reads both previous-token heads through its keys; Q and V: nothing
        assert {("L0H0", f"L1H{h}") for h in range(4)} | {("L0H1", f"L1H{h}") for h in range(4)} <= want
    else:
        assert want == set()
    assert f"{len(want)} of 16 pairs" in comp.caption() and "white star" in comp.caption()


def test_the_marks_are_the_circuit_graph_edges(induction_2l):
    comp = composition_scores(induction_2l, "K")
    graph = circuit_graph(induction_2l, modes=("K",), precomputed={"K": comp})
    assert graph.z_min == SIGNIFICANT_Z
    assert {(a, b) for a, b, mode, *_ in graph.edges} == _marks(comp.figure())


def test_marks_follow_z_min_on_a_planted_model():
    """Planted: only L0H0 -> L1H0 composes by construction; a threshold between its z and the rest
    marks it alone, one above every z marks nothing, and the hover gives the score and z."""
    model = planted_induction_model()
    comp = composition_scores(model, "K")
    z = comp.z()
    top = comp.top(1)[0]
    z_top = float(z[top.src_layer, top.src_head, top.dst_layer, top.dst_head])
    others = [float(v) for v in z[comp.mask()].flatten() if float(v) != z_top]
    assert (top.src.label, top.dst.label) == ("L0H0", "L1H0") and z_top > max(others) + 1
    between = dataclasses.replace(comp, z_min=(z_top + max(others)) / 2)
    fig = between.figure()
    assert _marks(fig) == {("L0H0", "L1H0")} == _expected(comp, between.z_min)
    assert fig.data[1].customdata[0][1] == pytest.approx(z_top)
    assert _marks(dataclasses.replace(comp, z_min=z_top + 1).figure()) == set()


def test_no_baseline_no_marks(induction_2l):
    comp = composition_scores(induction_2l, "K", baseline=False)
    fig = comp.figure()
    assert len(fig.data) == 1 and "star" not in comp.caption()


def test_z_min_is_checked(induction_2l):
    comp = composition_scores(induction_2l, "K")
    with pytest.raises(Exception, match="z_min"):
        dataclasses.replace(comp, z_min=float("nan"))


def test_heads_html_marks_at_its_z_min(tmp_path):
    out = tmp_path / "heads.html"
    assert main(["heads", "induction-2l", "--n-seqs", "4", "--z-min", "12", "--html", str(out)]) == 0
    page = out.read_text()
    k = composition_scores(zoo.load("induction-2l"), "K")
    want = _expected(k, 12.0)
    assert 0 < len(want) < len(_expected(k, SIGNIFICANT_Z))
    figures = [json.loads(m) for m in re.findall(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", page, re.S)]
    marked = [{(y, x) for t in data[1:] for x, y in zip(t.get("x", []), t.get("y", []))}
              for data in figures if data and data[0].get("type") == "heatmap" and len(data) > 1]
    assert want in marked


def _titles(fig) -> list[str]:
    title = fig.layout.title.text or ""
    panels = [a.text for a in fig.layout.annotations if a.xref == "paper" and a.yref == "paper" and a.showarrow is False]
    return [t for t in [title, *panels] if t and t.strip()]


def test_every_figure_and_section_title_is_in_sentence_case(tmp_path, induction_2l):
    results = report.analyse(induction_2l, n_prompts=2, prompt_len=8, progress=False)
    seen = 0
    for items in results.values():
        for item in items:
            res = item[0] if isinstance(item, tuple) else item
            fig = res.figure() if hasattr(res, "figure") else res  # a drawn section brings its figure
            for title in _titles(fig):
                first = re.sub(r"<[^>]+>", "", title).lstrip()[:1]
                assert not first.islower(), f"{type(res).__name__}: title {title!r} is not in sentence case"
                seen += 1
    assert seen >= 20
    page = report.build(results, tmp_path / "r.html", model=induction_2l).read_text()
    for h2 in re.findall(r"<h2>(.*?)</h2>", page):
        assert h2[:1].isupper() and h2[1:] == h2[1:].lower(), f"section title {h2!r} is not in sentence case"


def test_the_verdict_box_wraps_long_lines(tmp_path, induction_2l):
    from lensworks.circuits import find_induction_heads

    page = report.build([find_induction_heads(induction_2l, n_seqs=4)], tmp_path / "v.html").read_text()
    css = re.search(r"pre\.summary\{([^}]*)\}", page).group(1)
    assert "white-space:pre-wrap" in css and "overflow-wrap:anywhere" in css and "max-width:100%" in css
    assert "<pre class='summary'>" in page
