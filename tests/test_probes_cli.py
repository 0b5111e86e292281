"""The ``lensworks probes`` subcommand on a tiny saved checkpoint."""

from __future__ import annotations

import json

import pytest

from helpers import CHAR_VOCAB, save_checkpoint, tiny_model

from lensworks.cli import main


def test_probes_cli(tmp_path, capsys):
    model = tiny_model(seed=7, n_layers=2, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    text = tmp_path / "text.txt"
    # upper-case letters and "!" are not in the vocabulary: refused, unless --skip-unknown
    text.write_text("the quick brown fox jumps over the lazy dog. Hello!\n" * 40)
    out_json, out_html = tmp_path / "p.json", tmp_path / "p.html"
    args = ["probes", str(ckpt), "--text", str(text), "--offsets", "0,-1", "--json", str(out_json), "--html", str(out_html)]
    assert main(args) == 2
    assert "'H' at 45, '!' at 50" in capsys.readouterr().err and not out_json.exists()
    with pytest.warns(UserWarning, match="skipped 80 characters"):
        rc = main(args + ["--skip-unknown"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "resid_mid" in printed and "control_random_model" in printed
    payload = json.loads(out_json.read_text())
    assert len(payload["table"]) == 2 * 3 * 2
    row = payload["table"][0]
    assert row["layer"] == 0 and row["stream"] == "resid_pre" and row["offset"] == 0
    assert 0 <= row["accuracy"] <= 1 and row["control_shuffled"] is not None
    assert payload["comparison"]["summary"]["overlap_embed"]["verdict"] in (
        "closer than chance", "farther than chance", "within chance"
    )
    assert "<html" in out_html.read_text()


def test_probes_cli_bad_input(tmp_path, capsys):
    model = tiny_model(seed=7, n_layers=1, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB)
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    short = tmp_path / "short.txt"
    short.write_text("abc")
    assert main(["probes", str(ckpt), "--text", str(short)]) == 2
    assert "fewer than two windows" in capsys.readouterr().err
    assert main(["probes", str(ckpt), "--text", str(tmp_path / "missing.txt")]) == 2
    assert main(["probes", str(ckpt), "--text", str(short), "--offsets", "a,b"]) == 2
