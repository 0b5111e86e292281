"""`lensworks patch` (issue 24): the printed and JSON numbers are the library's, on the built-in
pair and on text prompts; the options reach the library; bad input gets one clear line."""

from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import CHAR_VOCAB, save_checkpoint, tiny_model
from lensworks import zoo
from lensworks.causal import (activation_patching, attribution_patching, direct_logit_attribution, induction_pair)
from lensworks.cli import main


def _table(text: str, title: str) -> list[list[str]]:
    """The rows of the table printed under the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3:]:  # title, header, dashes
        if not line.strip() or line.startswith("wrote "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def _scores(payload: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in payload["scores"].items()}


def test_builtin_pair_equals_the_library(tmp_path, capsys):
    """Only the model given: the built-in induction pair; every number in the JSON is the library
    call's, bit for bit, and the printed tables are those numbers rounded."""
    out = tmp_path / "p.json"
    assert main(["patch", "induction-2l", "--attribution", "--dla", "--top", "6", "--json", str(out),
                 "--html", str(tmp_path / "p.html")]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    model = zoo.load("induction-2l")
    pair = induction_pair(model)
    assert data["clean"] == pair.clean.tolist() and data["corrupted"] == pair.corrupted.tolist()
    assert data["answer_tokens"] == pair.answer.tolist() and data["wrong_tokens"] == pair.wrong.tolist()
    args = dict(answer_tokens=pair.answer, wrong_tokens=pair.wrong)
    exact = activation_patching(model, pair.clean, pair.corrupted, "logit_diff", **args)
    approx = attribution_patching(model, pair.clean, pair.corrupted, "logit_diff", exact=exact, **args)
    dla = direct_logit_attribution(model, pair.clean, pair.answer, wrong_tokens=pair.wrong)

    got = data["activation_patching"]
    assert got["type"] == "ActivationPatching" and set(got["scores"]) == set(exact.scores)
    for target, values in _scores(got).items():
        assert torch.equal(values, exact[target]), target
    assert (got["clean_metric"], got["corrupted_metric"]) == (exact.clean_metric, exact.corrupted_metric)
    for target, values in _scores(data["attribution_patching"]).items():
        assert torch.equal(values, approx[target]), target
    assert data["attribution_patching"]["correlation"] == pytest.approx(approx.correlation, abs=1e-12)
    assert torch.equal(torch.tensor(data["direct_logit_attribution"]["attributions"]), dla.attributions)

    # the printed header and tables
    assert f"clean {exact.clean_metric:.3f}, corrupted {exact.corrupted_metric:.3f}" in text
    frame = exact.to_frame().assign(estimate=approx.to_frame()["metric"].to_numpy())
    frame = frame.assign(change=(frame["metric"] - exact.clean_metric).abs()).sort_values("change", ascending=False,
                                                                                        kind="stable").head(6)
    rows = _table(text, "activation patching")
    assert len(rows) == 6 == len(data["top"])
    for row, want, top in zip(rows, frame.itertuples(), data["top"]):
        assert row[0] == want.target == top["target"]
        assert [float(v) for v in row[2:]] == pytest.approx([want.metric, want.normalised, want.estimate], abs=5e-4)
        assert (top["metric"], top["estimate"]) == (want.metric, want.estimate)
    assert rows[0][:2] == ["resid_pre", f"L0 pos {pair.changed}"]  # the changed token carries everything
    corr = dict(_table(text, "attribution patching"))
    assert {k: float(v) for k, v in corr.items()} == pytest.approx(approx.correlation, abs=5e-4)
    dla_rows = _table(text, "direct logit attribution")
    best = dla.to_frame().assign(a=lambda f: f["mean"].abs()).sort_values("a", ascending=False, kind="stable")
    assert [r[0] for r in dla_rows] == best["component"].head(6).tolist()
    assert float(dla_rows[0][1]) == pytest.approx(float(best["mean"].iloc[0]), abs=5e-4)
    page = (tmp_path / "p.html").read_text()
    assert "Activation patching" in page and not re.search(r"<script[^>]*src=", page)  # offline


def test_text_prompts_equal_the_library(tmp_path, capsys):
    """Prompt files (one per line), one answer per prompt, the options passed through: --what,
    --each-position, --direction, --position."""
    model = tiny_model(seed=2, n_layers=2, attn_only=False, d_mlp=32, vocab=CHAR_VOCAB)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", vocab=CHAR_VOCAB)
    clean, corrupted = ["the cat sat on a mat", "a dog ran far"], ["the cat sat on a hat", "a fog ran far"]
    (tmp_path / "clean.txt").write_text("\n".join(clean) + "\n\n")
    (tmp_path / "corrupted.txt").write_text("\n".join(corrupted) + "\n")
    out = tmp_path / "p.json"
    argv = ["patch", str(ckpt), "--clean-file", str(tmp_path / "clean.txt"), "--corrupted-file",
            str(tmp_path / "corrupted.txt"), "--answer", "t", "--answer", "a", "--wrong", "h", "--wrong", "o",
            "--what", "attn_out", "head_z", "--each-position", "--direction", "denoise", "--position", "-2",
            "--json", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    data = json.loads(out.read_text())
    ids = {c: CHAR_VOCAB.index(c) for c in "taho"}
    want = activation_patching(model, clean, corrupted, "logit_diff", answer_tokens=[ids["t"], ids["a"]],
                               wrong_tokens=[ids["h"], ids["o"]], what=("attn_out", "head_z"), positions="each",
                               direction="denoise", position=-2)
    assert data["answer_tokens"] == [ids["t"], ids["a"]] and data["clean"] == clean
    got = _scores(data["activation_patching"])
    assert set(got) == {"attn_out", "head_z"} and got["head_z"].ndim == 3
    for target in got:
        assert torch.equal(got[target], want[target]), target
    assert data["activation_patching"]["direction"] == "denoise"
    # --clean / --corrupted on the line, the answer once for every prompt
    assert main(["patch", str(ckpt), "--clean", clean[0], "--corrupted", corrupted[0], "--answer", "t", "--wrong", "h",
                 "--what", "resid_pre", "--json", str(out)]) == 0
    capsys.readouterr()
    one = activation_patching(model, clean[:1], corrupted[:1], "logit_diff", answer_tokens=ids["t"],
                              wrong_tokens=ids["h"], what="resid_pre")
    assert torch.equal(_scores(json.loads(out.read_text())["activation_patching"])["resid_pre"], one["resid_pre"])


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("patch") / "ckpt"
    return str(save_checkpoint(tiny_model(seed=4, vocab=CHAR_VOCAB), path, vocab=CHAR_VOCAB))


@pytest.mark.parametrize(("extra", "message"), [
    (["--clean", "the cat", "--corrupted", "the hat", "--answer", "ab", "--wrong", "c"],
     "--answer 'ab' is 2 tokens ['a', 'b'] for this tokenizer; expected a single token"),
    (["--clean", "the cat", "--corrupted", "the hat", "--answer", "a", "--wrong", ""],
     "--wrong '' is 0 tokens [] for this tokenizer; expected a single token"),
    (["--clean", "the cat", "--corrupted", "the cats", "--answer", "a", "--wrong", "b"],
     "clean and corrupted inputs must line up token for token: clean has shape (1, 8) (lengths [8]), corrupted "
     "(1, 9) (lengths [9]); prompt 0 is 8 tokens clean and 9 corrupted"),
    (["--clean", "the cat", "--clean", "a dog", "--corrupted", "the hat", "--answer", "a", "--wrong", "b"],
     "2 clean prompts but 1 corrupted ones"),
    (["--clean", "the cat", "--corrupted", "the hat", "--wrong", "b"], "--answer is needed with --clean/--corrupted"),
    (["--clean", "the cat", "--corrupted", "the hat", "--answer", "a", "--answer", "b", "--answer", "c", "--wrong", "b"],
     "--answer was given 3 times for 1 prompt; give it once for every prompt or once per prompt"),
    (["--clean", "the cat", "--answer", "a", "--wrong", "b"], "give both clean and corrupted prompts"),
    (["--answer", "a"], "--answer/--wrong go with --clean/--corrupted"),
    (["--clean", "the cat", "--corrupted", "the hät", "--answer", "a", "--wrong", "b"],
     "corrupted[0]: 1 character the vocabulary lacks: 'ä'"),
    (["--seq-len", "40"], "seq_len=40 does not fit the model's n_ctx=64"),
    (["--what", "mlp_out"], "what='mlp_out': this model has no mlp_out"),
])
def test_bad_input_is_one_line(char_ckpt, capsys, extra, message):
    assert main(["patch", char_ckpt] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_bad_files_and_arguments(char_ckpt, tmp_path, capsys):
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "c.txt").write_text("the cat\n")
    assert main(["patch", char_ckpt, "--clean-file", str(tmp_path / "blank.txt"), "--corrupted-file",
                 str(tmp_path / "c.txt"), "--answer", "a", "--wrong", "b"]) == 2
    assert "has no non-empty line" in capsys.readouterr().err
    assert main(["patch", char_ckpt, "--clean", "x", "--clean-file", str(tmp_path / "c.txt")]) == 2
    assert "give --clean or --clean-file, not both" in capsys.readouterr().err
    assert main(["patch", "--what", "resid"]) == 2
    assert "argument --what: invalid choice: 'resid'" in capsys.readouterr().err
    assert main(["patch", "--clean-file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["patch", "--top", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_a_model_without_tokenizer(attn_model, tmp_path, capsys):
    """Text needs a tokenizer (refused by name); the built-in pair is token ids and runs on any model."""
    ckpt = str(save_checkpoint(attn_model, tmp_path / "attn"))
    assert main(["patch", ckpt, "--clean", "ab", "--corrupted", "ac", "--answer", "b", "--wrong", "c"]) == 2
    assert "this model has no tokenizer" in capsys.readouterr().err
    assert main(["patch", ckpt, "--seq-len", "5", "--n-seqs", "2", "--seed", "3", "--json", str(tmp_path / "p.json")]) == 0
    assert "2 random sequences of 5 tokens" in capsys.readouterr().out
    data = json.loads((tmp_path / "p.json").read_text())
    pair = induction_pair(attn_model, seq_len=5, n_seqs=2, seed=3)
    assert data["clean"] == pair.clean.tolist()
    want = activation_patching(attn_model, pair.clean, pair.corrupted, "logit_diff", answer_tokens=pair.answer,
                               wrong_tokens=pair.wrong)
    for target, values in _scores(data["activation_patching"]).items():
        assert torch.equal(values, want[target]), target


def test_induction_pair(attn_model):
    """The pair differs at one position, the answer is what induction predicts there, and the
    wrong token is not in the sequence; bad sizes are refused."""
    from lensworks.model import LensworksError

    pair = induction_pair(attn_model, seq_len=6, n_seqs=3, seed=1)
    o = pair.clean.shape[1] - 11  # 2 * 6 - 1 tokens after the optional BOS
    assert (pair.clean != pair.corrupted).nonzero()[:, 1].unique().tolist() == [pair.changed] == [o + 5]
    s = pair.clean[:, o:o + 6]
    assert torch.equal(pair.clean[:, o + 6:], s[:, :-1]) and torch.equal(pair.answer, s[:, -1])
    assert not bool((s == pair.wrong[:, None]).any()) and torch.equal(pair.corrupted[:, pair.changed], pair.wrong)
    assert torch.equal(induction_pair(attn_model, seq_len=6, n_seqs=3, seed=1).clean, pair.clean)  # seeded
    for bad in (1, 1000, 2.5):
        with pytest.raises(LensworksError, match="seq_len"):
            induction_pair(attn_model, seq_len=bad)
    zoo_model = zoo.load("induction-2l")
    zp = induction_pair(zoo_model)
    res = activation_patching(zoo_model, zp.clean, zp.corrupted, "logit_diff", answer_tokens=zp.answer,
                              wrong_tokens=zp.wrong, what="resid_pre")
    assert res.clean_metric > 2 and res.corrupted_metric < -2  # the demo model does induction
