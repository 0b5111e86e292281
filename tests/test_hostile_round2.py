"""Hostile input, second round: the problems a new user found, one test each (they failed before
the fix). Runs on both TransformerLens lines; the models come from the architecture list."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from archs import arch_checkpoint, arch_model, hf_dir
from lensworks import LensworksError, NonFiniteError, load_model
from lensworks.cli import main
from lensworks.model._io import write_atomic

TEXTS = ["the cat sat on the mat.\nthe dog ran", "a bird flew over\nthe tree", "one two three\nfour five"]


# --------------------------------------------------------------------------- silently wrong numbers


@pytest.fixture()
def nan_model():
    """The char-nl entry, freshly loaded, with one NaN in one query weight (TransformerLens would
    turn the NaN attention scores into zero attention and give finite, wrong activations)."""
    model = load_model(arch_checkpoint("char-nl", None)[0])
    with torch.no_grad():
        model.blocks[1].attn.W_Q[0, 0, 0] = float("nan")
    return model


@pytest.mark.parametrize("analysis", ["residual_stats", "block_ablation", "logit_lens", "probe_inputs", "head_scores",
                                      "neighbours", "attention_explorer", "unlikely_token_usage", "term_importance"])
def test_one_nan_weight_is_refused_by_every_forward_analysis(nan_model, analysis):
    from lensworks import circuits, geometry, probes
    from lensworks.plotting import attention_explorer

    calls = {
        "residual_stats": lambda: geometry.residual_stats(nan_model, {"a": TEXTS}, streams=("resid_post",), progress=False),
        "block_ablation": lambda: geometry.block_ablation(nan_model, TEXTS, progress=False),
        "logit_lens": lambda: geometry.logit_lens(nan_model, TEXTS, progress=False),
        "probe_inputs": lambda: probes.probe_inputs(nan_model, TEXTS, controls=False, progress=False),
        "head_scores": lambda: circuits.head_scores(nan_model, "induction", seq_len=8, n_seqs=2),
        "neighbours": lambda: geometry.NeighbourApproximation(window=4).fit(nan_model, TEXTS[0] * 5, progress=False),
        "attention_explorer": lambda: attention_explorer(nan_model, TEXTS),
        "unlikely_token_usage": lambda: probes.unlikely_token_usage(nan_model, TEXTS, n_random=3, progress=False),
        "term_importance": lambda: circuits.term_importance(nan_model, TEXTS[:1], max_order=1, progress=False),
    }
    # TransformerLens 3 names the parameter blocks.1.attn.W_Q, a TL 4 bridge layers.1.attn.q.weight
    with pytest.raises(NonFiniteError, match=r"(blocks\.1\.attn\.W_Q|layers\.1\.attn\.q\.weight) holds 1 NaN"):
        calls[analysis]()


def test_non_finite_errors_are_lensworks_errors_and_exported_at_the_top():
    import lensworks

    assert issubclass(NonFiniteError, LensworksError) and issubclass(NonFiniteError, FloatingPointError)
    assert lensworks.LensworksError is LensworksError and "LensworksError" in lensworks.__all__
    from lensworks.model import LensworksError as from_model

    assert from_model is LensworksError


def test_meta_device_is_refused():
    with pytest.raises(LensworksError, match="'meta' holds no data"):
        load_model(hf_dir("gpt2"), device="meta")


@pytest.mark.parametrize(("value", "match"), [(0, "prompt_len must be >= 4"), (-5, "prompt_len must be >= 4"), (100000, "longer than the model's n_ctx=64")])
def test_report_prompt_len_is_never_replaced_silently(value, match):
    from lensworks import report

    with pytest.raises(LensworksError, match=match):
        report.analyse(arch_model("char-nl"), text=TEXTS[0] * 20, prompt_len=value, progress=False)


@pytest.mark.parametrize("flag", ["--text", "--corpus", "--positive", "--negative"])
def test_report_refuses_non_utf8_text_files(tmp_path, capsys, flag):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("the cat\ncaf\xe9 au lait\nmore\n".encode("latin-1"))
    other = tmp_path / "other.txt"
    other.write_text("a b\nc d\n")
    argv = ["report", str(arch_checkpoint("char-nl", tmp_path)[0]), "-o", str(tmp_path / "r.html"), flag, str(latin1)]
    if flag == "--positive":
        argv += ["--negative", str(other)]
    if flag == "--negative":
        argv += ["--positive", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text: byte 0xe9 on line 2" in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- unclear messages


def test_code_carrying_pytorch_model_bin_is_refused_plainly(tmp_path):
    import shutil

    out = tmp_path / "gpt2"
    shutil.copytree(hf_dir("gpt2"), out)
    for f in out.glob("*.safetensors"):
        f.unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"transformer.wte.weight": torch.zeros(2), "evil": Payload()}, out / "pytorch_model.bin")
    with pytest.raises(LensworksError) as err:
        load_model(out)
    msg = str(err.value)
    assert "refused: this file needs unpickling code" in msg and "convert it to safetensors" in msg and "\n" not in msg
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(("argv", "match"), [
    (["probes", "--max-tokens", "-10"], "argument --max-tokens: expected a positive integer, got '-10'"),
    (["neighbours", "--prompts", "0"], "argument --prompts: expected a positive integer, got '0'"),
    (["report", "--prompt-len", "100000x"], "argument --prompt-len: expected an integer of at least 4"),
    (["heads", "--z-min", "nan"], "argument --z-min: expected a finite number, got 'nan'"),
    (["probes", "--text", "."], "argument --text: '.' is a directory; expected a text file"),
    (["neighbours", "--corpus", "."], "argument --corpus: '.' is a directory; expected a text file"),
])
def test_argument_errors_are_one_line_and_come_first(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_probes_text_in_latin1_is_refused_not_replaced(tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(("caf\xe9 " * 200).encode("latin-1"))
    assert main(["probes", str(arch_checkpoint("char-nl", tmp_path)[0]), "--text", str(latin1)]) == 2
    err = capsys.readouterr().err
    assert "--text" in err and "is not UTF-8 text: byte 0xe9 on line 1" in err and "\ufffd" not in err


def test_the_cli_answers_version_help_and_argument_errors_without_torch():
    code = ("import sys\nfrom lensworks.cli import main\n"
            "for argv in (['--version'], ['--help'], ['report', '--help'], ['heads', '--top', 'x']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:] + out.stderr[-500:]


# --------------------------------------------------------------------------- output files


def test_outputs_through_symlinks_keep_the_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, '{"a": 1}')
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}


def test_outputs_to_a_character_device_write_through():
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    write_atomic("/dev/null", "x" * 1000)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_writable_file_in_a_read_only_directory_is_written_in_place(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("{}")
    real_access = os.access

    def read_only_dir(path, mode, *args, **kwargs):  # as root every directory is writable: pretend
        if os.fspath(path) == os.fspath(tmp_path) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", read_only_dir)
    from lensworks.model._io import check_writable

    check_writable(target)
    write_atomic(target, '{"b": 2}')
    assert json.loads(target.read_text()) == {"b": 2} and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_files_and_their_directory_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    write_atomic(tmp_path / "a.json", "{}")
    assert len(synced) == 2  # the temporary file, then the directory after the rename


def test_json_and_html_naming_one_file_are_refused(tmp_path, capsys):
    out = str(tmp_path / "same.out")
    assert main(["heads", "--json", out, "--html", out]) == 2
    err = capsys.readouterr().err
    assert "--json and --html name the same file" in err and not os.path.exists(out)


def test_a_missing_stream_is_named_not_its_first_letter():
    from lensworks.geometry import effective_dimensionality

    with pytest.raises(LensworksError, match=r"streams \['resid_mid'\] do not exist in this attention-only model"):
        effective_dimensionality(arch_model("attn-only"), TEXTS, streams=("resid_mid",), progress=False)
    with pytest.raises(LensworksError, match=r"streams \['resid_mid'\] do not exist"):
        effective_dimensionality(arch_model("attn-only"), TEXTS, streams="resid_mid", progress=False)
