"""`lensworks geometry` and `lensworks neighbours` on a tiny checkpoint saved into tmp_path."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import save_checkpoint, tiny_model
from lensworks.cli import main
from lensworks.geometry import block_ablation, effective_dimensionality, residual_stats
from lensworks.zoo.recipes import CHAR_VOCAB as ZOO_VOCAB


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny_model(seed=11, n_layers=2, attn_only=False, d_mlp=32, vocab=ZOO_VOCAB)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, path)
    return path, model


def test_geometry_builtin_sets(ckpt, tmp_path, capsys):
    path, model = ckpt
    out_json, out_html = tmp_path / "g.json", tmp_path / "g.html"
    rc = main(["geometry", str(path), "--json", str(out_json), "--html", str(out_html)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "built-in sets" in text and "block ablation" in text
    data = json.loads(out_json.read_text())
    assert data["builtin_sets"] and data["decomposition_ok"]
    from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

    both = list(BUILTIN_POSITIVE) + list(BUILTIN_NEGATIVE)
    ref = block_ablation(model, both).to_frame()
    assert [r["drop_mlp_hellinger_mean"] for r in data["block_ablation"]] == pytest.approx(
        ref.drop_mlp_hellinger_mean.tolist(), abs=1e-5)
    # effective dimensionality: printed, and the JSON holds exactly the library's numbers on both sets
    assert "effective dimensionality" in text and "participation_ratio" in text
    dim = effective_dimensionality(model, both).to_frame()
    assert data["effective_dimensionality_samples"] == len(both)
    assert [(r["layer"], r["stream"], r["n_components_90"]) for r in data["effective_dimensionality"]] == list(
        zip(dim.layer.tolist(), dim.stream.tolist(), dim.n_components_90.tolist()))
    assert [r["participation_ratio"] for r in data["effective_dimensionality"]] == pytest.approx(
        dim.participation_ratio.tolist(), rel=1e-5)
    assert f"rank at most {len(both) - 1}" in text  # 32 samples, d_model 32: the rank bound is said plainly
    page = out_html.read_text()
    assert "<html" in page[:200] and "Effective dimensionality of the residual stream" in page


def test_geometry_with_files(ckpt, tmp_path, capsys):
    path, model = ckpt
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("x = 1\nprint(x)\n\nreturn y\n")
    neg.write_text("the sun is hot\nwe like tea\n")
    out_json = tmp_path / "g.json"
    assert main(["geometry", str(path), "--positive", str(pos), "--negative", str(neg), "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["n_positive"] == 3 and data["n_negative"] == 2 and not data["builtin_sets"]
    ref = residual_stats(model, {"positive": ["x = 1", "print(x)", "return y"], "negative": ["the sun is hot", "we like tea"]})
    assert data["cosine_of_means"]["resid_post"] == pytest.approx(ref.cosine("positive", "negative")["resid_post"].tolist(), abs=1e-5)


def test_geometry_errors(ckpt, tmp_path, capsys):
    path, _ = ckpt
    assert main(["geometry", str(path), "--positive", str(tmp_path / "missing.txt"), "--negative", "x"]) == 2
    assert "no such file" in capsys.readouterr().err
    one = tmp_path / "one.txt"
    one.write_text("only one line\n")
    assert main(["geometry", str(path), "--positive", str(one), "--negative", str(one)]) == 2
    assert "at least 2" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\nthe sun\n".encode("latin-1"))
    assert main(["geometry", str(path), "--positive", str(latin1), "--negative", str(latin1)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "0xe9" in err and err.count("\n") == 1


def test_neighbours_cli(ckpt, tmp_path, capsys):
    path, _ = ckpt
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 20 + "print(f(2))\n")
    out_json = tmp_path / "n.json"
    rc = main(["neighbours", str(path), "--corpus", str(corpus), "--window", "4", "--prompts", "30", "--tune",
               "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0 and "Hellinger" in text
    data = json.loads(out_json.read_text())
    h = torch.tensor([r["hellinger"] for r in data["per_prompt"]])
    assert data["mean"] == pytest.approx(float(h.mean()), abs=1e-5)
    assert len(data["thresholds"]) == 2 and data["tuned"] is not None
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    assert main(["neighbours", str(path), "--corpus", str(short), "--window", "20"]) == 2
    assert "longer than the corpus" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("x = 1\ncaf\xe9 = 2\n".encode("latin-1"))
    assert main(["neighbours", str(path), "--corpus", str(latin1)]) == 2  # was a crash reported as a bug
    err = capsys.readouterr().err
    assert "--corpus" in err and "not UTF-8 text: byte 0xe9 on line 2" in err and err.count("\n") == 1
