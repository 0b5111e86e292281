"""`lensworks heads` end to end on a saved checkpoint: table, verdict, JSON and HTML."""

from __future__ import annotations

import json
import re

import pytest

from helpers import planted_induction_model, save_checkpoint
from lensworks.cli import main


def test_heads_cli_on_planted_checkpoint(tmp_path, capsys):
    ckpt = save_checkpoint(planted_induction_model(), tmp_path / "planted")
    out_json, out_html = tmp_path / "h.json", tmp_path / "h.html"
    code = main(["heads", str(ckpt), "--seq-len", "15", "--n-seqs", "4", "--top", "2",
                 "--json", str(out_json), "--html", str(out_html)])
    assert code == 0
    text = capsys.readouterr().out
    assert "induction heads: L1H0" in text
    assert re.search(r"previous_token +L0H0 +1\.000", text)
    data = json.loads(out_json.read_text())
    assert data["induction_heads"] == ["L1H0"]
    assert data["head_scores"]["copying"]["scores"][1][0] == pytest.approx(1.0)
    assert set(data["composition"]) == {"Q", "K", "V"}
    page = out_html.read_text()
    assert "Induction heads" in page and not re.search(r"<script[^>]*src=", page)  # plotly.js inlined


def test_heads_cli_errors(tmp_path, capsys):
    assert main(["heads", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["heads", str(tmp_path), "--top", "0"]) == 2
    capsys.readouterr()
    assert main(["heads", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err == "lensworks: error: unrecognized arguments: --no-such-flag (see lensworks --help)\n"


def test_heads_cli_graph_and_trigrams(tmp_path, capsys):
    save_checkpoint(planted_induction_model(), tmp_path / "planted")
    out_json = tmp_path / "heads.json"
    assert main(["heads", str(tmp_path / "planted"), "--graph", "--trigrams", "L1H0", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"circuit graph: \d+ edges at z >= 3", text)
    assert re.search(r"L0H0\s+L1H0\s+K", text)  # the planted K-composition is an edge
    assert "skip-trigrams of L1H0" in text
    payload = json.loads(out_json.read_text())
    assert payload["circuit_graph"]["edges"][0][:3] == ["L0H0", "L1H0", "K"]
    tri = payload["skip_trigrams"]
    assert tri["source"] == tri["out"]  # the planted induction head copies the token it attends to
    assert main(["heads", str(tmp_path / "planted"), "--trigrams", "head-1"]) == 2
    assert "--trigrams expects a head such as L1H2" in capsys.readouterr().err


def test_heads_cli_terms(tmp_path, capsys):
    from lensworks import load_model
    from lensworks.circuits import find_induction_heads, repeated_tokens, term_importance

    save_checkpoint(planted_induction_model(), tmp_path / "planted")
    out_json = tmp_path / "heads.json"
    assert main(["heads", str(tmp_path / "planted"), "--terms", "--n-seqs", "4", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "term importance on 4 repeated random sequences" in text
    got = json.loads(out_json.read_text())["term_importance"]
    model = load_model(tmp_path / "planted")
    t = find_induction_heads(model, n_seqs=4, seed=0).thresholds  # the sequences the CLI reads
    want = term_importance(model, repeated_tokens(model, seq_len=t["seq_len"], n_seqs=4, seed=0,
                                                  prepend_bos=t["prepend_bos"]))
    assert got["loss_by_order"] == pytest.approx(want.loss_by_order.tolist(), rel=1e-5)
    assert got["terms"] == list(want.terms)
    assert main(["heads", str(tmp_path / "planted"), "--terms-text", str(tmp_path / "missing.txt")]) == 2
    assert "--terms-text: no such file" in capsys.readouterr().err
