"""The output layer (issue 22, item 4): ``lensworks.write`` in every format, read back and compared
with the results' own numbers; ``HeadId`` labels and parsing; ``CompositionScores.z()`` against a
naive computation. Built on the attention-only entry of the architecture list, which loads under
both TransformerLens lines."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
import torch

import lensworks
from archs import arch_model
from lensworks import circuits
from lensworks._heads import HeadId, head_label
from lensworks._output import FORMATS, SUFFIXES, write
from lensworks.errors import LensworksError


@pytest.fixture(scope="module")
def model():
    return arch_model("attn-only")


@pytest.fixture(scope="module")
def comp(model):
    return circuits.composition_scores(model, "K", baseline_samples=30, progress=False)


@pytest.fixture(scope="module")
def results(model, comp):
    """Three results of different shapes: a 4-d heatmap, a per-head score, a bar chart."""
    return [comp, circuits.copying_scores(model, baseline=False), circuits.skip_trigrams(model, 1, 0, k=4)]


# --------------------------------------------------------------------------- HeadId


def test_head_id_label_and_parse_round_trip():
    for layer, head in [(0, 0), (1, 3), (12, 7), (95, 63), (999_999_999, 1)]:
        h = HeadId(layer, head)
        assert h.label == f"L{layer}H{head}" == str(h) == head_label(layer, head)
        assert HeadId.parse(h.label) == h == (layer, head)
        assert HeadId.parse(f"  {h.label}\n") == h  # the command line's spelling: whitespace around
    assert HeadId.parse("L01H002") == (1, 2)  # leading zeros, as the old parser read them
    layer, head = HeadId.parse("L2H5")
    assert (layer, head) == (2, 5) and isinstance(layer, int)
    assert lensworks.HeadId is HeadId and circuits.HeadId is HeadId


@pytest.mark.parametrize("text", [
    "", " ", "L", "H", "L1", "H1", "L1H", "LH1", "l1h2", "L1h2", "L1 H2", "L-1H2", "L1H-2", "L+1H2", "L1.0H2",
    "L1H2x", "xL1H2", "L1H2H3", "L1_0H2", "L١H٣", "L１H２", "L\u00b2H1", "L0x1H2", "L1H2 -> L2H3", "L1H2\x00",
    "L" + "9" * 10_000 + "H1", "<script>L1H2</script>", "L1H2; rm -rf /", "L1H2\nL3H4",
])
def test_head_id_refuses_hostile_strings(text):
    with pytest.raises(LensworksError, match=r"expected a head label such as L1H2 \(L<layer>H<head>\), got"):
        HeadId.parse(text)


@pytest.mark.parametrize("value", [None, 12, 1.5, b"L1H2", ("L1", "H2"), HeadId(1, 2)])
def test_head_id_parse_refuses_non_strings(value):
    with pytest.raises(LensworksError, match="expected a head label such as L1H2"):
        HeadId.parse(value)


@pytest.mark.parametrize("layer, head", [(-1, 0), (0, -3), (True, 0), (0, False), (1.0, 2), ("1", 2), (None, 1)])
def test_head_id_refuses_bad_numbers(layer, head):
    with pytest.raises(LensworksError, match="must be a non-negative integer"):
        HeadId(layer, head)


def test_every_head_label_comes_from_head_id(model, comp):
    from lensworks.model import head_labels

    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert head_labels(model) == [HeadId(l, h).label for l in range(L) for h in range(H)]
    pair = comp.top(1)[0]
    assert pair.label == f"{pair.src.label} -> {pair.dst.label}"
    assert (pair.src, pair.dst) == ((pair.src_layer, pair.src_head), (pair.dst_layer, pair.dst_head))
    row = comp.to_frame().iloc[0]
    assert HeadId.parse(row["src"]) == (row["src_layer"], row["src_head"])
    tri = circuits.skip_trigrams(model, 1, 2, k=3)
    assert tri.head_id == (1, 2) and "L1H2" in tri.figure().layout.title.text and "L1H2" in tri.headline()


# --------------------------------------------------------------------------- CompositionScores.z()


def test_composition_z_against_a_naive_computation(model, comp):
    z = comp.z()
    assert z.shape == comp.scores.shape and z.dtype == comp.scores.dtype
    L, H = comp.n_layers, comp.n_heads
    mean, std = comp.baseline.mean, comp.baseline.std
    for la in range(L):
        for ha in range(H):
            for lb in range(L):
                for hb in range(H):
                    want = (float(comp.scores[la, ha, lb, hb]) - mean) / std if la < lb else 0.0
                    assert float(z[la, ha, lb, hb]) == pytest.approx(want, rel=1e-5, abs=1e-5)
    with pytest.raises(LensworksError, match="no baseline"):
        circuits.composition_scores(model, "K", baseline=False, progress=False).z()


def test_composition_z_is_what_the_graph_and_the_verdict_read(model):
    g = circuits.circuit_graph(model, modes=("K",), z_min=-100.0, baseline_samples=30)
    comp = circuits.composition_scores(model, "K", baseline_samples=30, progress=False)
    z = comp.z()
    assert g.edges and len(g.edges) == int(comp.mask().sum())
    for a, b, mode, score, ze in g.edges:
        (la, ha), (lb, hb) = HeadId.parse(a), HeadId.parse(b)
        assert ze == float(z[la, ha, lb, hb]) and score == float(comp.scores[la, ha, lb, hb])
    report = circuits.find_induction_heads(model, seq_len=8, n_seqs=2, previous_threshold=0.0)
    kz = report.k_composition.z()
    for e in report.evidence:
        if e.previous_partner is not None:
            lp, hp = HeadId.parse(e.previous_partner)
            assert e.k_composition_z == float(kz[lp, hp, e.layer, e.head])


# --------------------------------------------------------------------------- write()


def test_write_json_round_trip(results, tmp_path):
    comp = results[0]
    one = json.loads(write(comp, tmp_path / "one.json").read_text())
    assert one["type"] == "CompositionScores" and one["mode"] == "K"
    assert torch.tensor(one["scores"]).tolist() == comp.scores.tolist()
    assert one["baseline"]["mean"] == comp.to_dict()["baseline"]["mean"]
    many = json.loads(write(results, tmp_path / "many.json").read_text())
    assert [d["type"] for d in many] == [type(r).__name__ for r in results]
    for d, r in zip(many, results):
        assert {k: v for k, v in d.items() if k != "type"} == json.loads(json.dumps(r.to_dict()))
    named = json.loads(write({"K": comp, "model": "attn-only", "n": 3}, tmp_path / "named.json").read_text())
    assert named["K"]["scores"] == one["scores"] and named["model"] == "attn-only" and named["n"] == 3


def _plotly_data(page: str) -> list[list[dict]]:
    """The trace lists of every ``Plotly.newPlot(id, data, layout)`` call on a page."""
    out, decoder = [], json.JSONDecoder()
    for m in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page):
        data, _ = decoder.raw_decode(page, m.end())
        out.append(data)
    return out


def test_write_html_round_trip(results, tmp_path):
    page = write(results, tmp_path / "r.html", title="three <results>").read_text()
    assert page.startswith("<!DOCTYPE html>") and "three &lt;results&gt;" in page
    assert not re.search(r"<script[^>]*src=", page)  # plotly.js inlined: the page works offline
    drawn = _plotly_data(page)
    assert len(drawn) == len(results)
    comp, copying, tri = results
    n = comp.n_layers * comp.n_heads
    heat = drawn[0][0]["z"]
    want = comp.figure().data[0].z
    assert len(heat) == n and all(
        (a is None and b != b) or a == pytest.approx(b) for ra, rb in zip(heat, want) for a, b in zip(ra, rb))
    assert sum(drawn[1][0]["z"], []) == pytest.approx(copying.scores.flatten().tolist())
    assert drawn[2][0]["x"] == pytest.approx(tri.ov.tolist()[::-1])
    # figures as given, and a single result titled by its type
    assert len(_plotly_data(write([tri.figure()], tmp_path / "f.htm").read_text())) == 1
    assert "<title>lensworks: SkipTrigrams</title>" in write(tri, tmp_path / "t.html").read_text()


def test_write_csv_round_trip(results, tmp_path):
    comp, copying, tri = results
    back = pd.read_csv(write(comp, tmp_path / "k.csv"))
    ref = comp.to_frame()
    assert list(back.columns) == list(ref.columns)
    assert back["score"].tolist() == pytest.approx(ref["score"].tolist(), rel=1e-12)
    assert back["src"].tolist() == ref["src"].tolist()
    stacked = pd.read_csv(write({"K": comp, "copying": copying, "trigrams": tri}, tmp_path / "all.csv"))
    assert stacked.columns[0] == "result" and list(dict.fromkeys(stacked["result"])) == ["K", "copying", "trigrams"]
    part = stacked[stacked["result"] == "copying"]
    assert part["score"].tolist() == pytest.approx(copying.to_frame()["score"].tolist(), rel=1e-12)
    assert part["label"].tolist() == copying.labels
    part = stacked[stacked["result"] == "trigrams"]
    assert part["ov"].tolist() == pytest.approx(tri.ov.tolist(), rel=1e-6)
    listed = pd.read_csv(io.StringIO(write([comp, comp], tmp_path / "two.csv").read_text()))
    assert list(dict.fromkeys(listed["result"])) == ["CompositionScores", "CompositionScores (2)"]


def test_write_format_and_refusals(results, tmp_path):
    comp, _, tri = results
    assert json.loads(write(comp, tmp_path / "no_suffix", "json").read_text())["type"] == "CompositionScores"
    assert write(comp, tmp_path / "UPPER.JSON").read_text().startswith("{")
    assert write(comp, tmp_path / "x.txt", format="CSV").read_text().startswith("src,")
    assert set(FORMATS) == {"json", "html", "csv"} and set(SUFFIXES.values()) <= set(FORMATS)
    assert lensworks.write is write
    with pytest.raises(LensworksError, match=r"cannot tell the output format of .*'\.txt'.*\.csv, \.htm, \.html, \.json"):
        write(comp, tmp_path / "x.txt")
    with pytest.raises(LensworksError, match=r"format must be one of \['csv', 'html', 'json'\].*got 'xml'"):
        write(comp, tmp_path / "x.json", "xml")
    with pytest.raises(LensworksError, match="at least one result"):
        write([], tmp_path / "x.json")
    with pytest.raises(LensworksError, match="is the path given first"):
        write(str(tmp_path / "x.json"), comp)
    with pytest.raises(LensworksError, match="not a plotly figure"):
        write([tri.figure()], tmp_path / "x.json")
    with pytest.raises(LensworksError, match="HTML takes results"):
        write({"model": "name"}, tmp_path / "x.html")
    with pytest.raises(LensworksError, match="CSV takes results"):
        write({"K": comp, "model": "name"}, tmp_path / "x.csv")
    # a failed write leaves the old file as it was, and no temporary file beside it
    old = write(comp, tmp_path / "keep.csv").read_text()
    with pytest.raises(LensworksError):
        write([comp, "not a result"], tmp_path / "keep.csv")
    assert (tmp_path / "keep.csv").read_text() == old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keep.csv")]


def test_cli_outputs_go_through_write(results, tmp_path, capsys):
    import argparse

    from lensworks.cli._common import write_outputs

    comp = results[0]
    args = argparse.Namespace(json=str(tmp_path / "out"), html=str(tmp_path / "page"))
    write_outputs(args, {"model": "m", "composition": {"K": comp.to_dict()}, "bad": float("nan")}, [comp.figure()],
                  title="lensworks heads: m")
    data = json.loads((tmp_path / "out").read_text())  # JSON whatever the suffix, NaN written as null
    assert data == {"model": "m", "composition": {"K": json.loads(json.dumps(comp.to_dict()))}, "bad": None}
    assert len(_plotly_data((tmp_path / "page").read_text())) == 1
    assert capsys.readouterr().out.count("wrote ") == 2
