"""Users' own checkpoints and vocabularies: nanoGPT ``ckpt.pt`` + ``meta.pkl``, "Let's build GPT"
state dicts, vocabularies in any order, configs that lie, and files from other tools.

Log-probabilities are compared with forwards written in tests/foreign.py from the raw tensors.
Runs on both TransformerLens lines."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import string
import sys

import pytest
import torch

from archs import NL_CHARS, arch_model, hf_dir
from foreign import CHARS, SHAKESPEARE, lbg_log_probs, lbg_state_dict, nanogpt_log_probs, write_nanogpt
from lensworks import load_model, save_model
from lensworks.cli import main
from lensworks.model import (TL_MAJOR, LensworksError, as_tokens, bos_token_id, check_encodable, encode_batch, model_vocab,
                             vocab_tokenizer)
from lensworks.model._vocabfile import read_meta_pkl

tl3_only = pytest.mark.skipif(TL_MAJOR >= 4, reason="save_model writes TransformerLens 3 checkpoints")
NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)


def _log_probs(model, tokens):
    with torch.no_grad():
        return model(tokens).double().log_softmax(-1)


# --------------------------------------------------------------------------- nanoGPT


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("processing", [True, False])
def test_nanogpt_checkpoint_equals_its_own_forward(tmp_path, bias, compiled, processing):
    ckpt = write_nanogpt(tmp_path / "out-shakespeare-char", bias=bias, compiled=compiled, seed=int(bias) + 2 * int(compiled))
    model = load_model(ckpt, **({} if processing else NO_PROCESSING))
    text = SHAKESPEARE[:60]
    toks = model.to_tokens(text, prepend_bos=False)
    assert toks[0].tolist() == [CHARS.index(c) for c in text]  # '\n' is id 0, and encodes as itself
    assert CHARS[0] == "\n" and model.to_string(toks[0]) == text
    sd = torch.load(ckpt, weights_only=True)["model"]
    torch.testing.assert_close(_log_probs(model, toks), nanogpt_log_probs(sd, 4, toks), atol=1e-5, rtol=0)
    assert model.cfg.default_prepend_bos is False and model_vocab(model) == CHARS


def test_nanogpt_out_directory_and_meta_beside(tmp_path):
    ckpt = write_nanogpt(tmp_path / "run", meta_beside=True)
    by_dir, by_file = load_model(tmp_path / "run"), load_model(ckpt)
    toks = by_file.to_tokens("All:\nSpeak", prepend_bos=False)
    torch.testing.assert_close(by_dir(toks), by_file(toks))


def test_nanogpt_without_meta_warns_and_loads_for_weight_analyses(tmp_path):
    ckpt = write_nanogpt(tmp_path / "out", meta=False)
    with pytest.warns(UserWarning, match="no meta.pkl .*vocab="):
        model = load_model(ckpt)
    assert model.tokenizer is None
    given = load_model(ckpt, vocab=CHARS)
    assert given.to_tokens("\n", prepend_bos=False).tolist() == [[0]]


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json+merges.txt"])
def test_nanogpt_gpt2_vocabulary_reads_local_tokenizer_files(tmp_path, monkeypatch, files):
    from hf_families import train_bpe_tokenizer
    from lensworks.model import _vocabfile
    from tokenizers import Tokenizer

    monkeypatch.setattr(_vocabfile, "_cached_gpt2_tokenizer", lambda: None)  # no Hugging Face cache here
    ckpt = write_nanogpt(tmp_path / "out", meta=False, vocab_size=50304, n_embd=8, n_head=2, n_layer=1, block_size=64)
    with pytest.warns(UserWarning, match="tokenizer.json, or vocab.json and merges.txt.*nothing is downloaded"):
        assert load_model(ckpt).tokenizer is None
    train_bpe_tokenizer(tmp_path / "bpe", family="gpt2")  # a GPT-2-style byte-level BPE, made offline
    if files == "tokenizer.json":
        shutil.copy(tmp_path / "bpe" / "tokenizer.json", tmp_path / "out")
        shutil.copy(tmp_path / "bpe" / "tokenizer_config.json", tmp_path / "out")
    else:  # the two files GPT-2's own repository ships
        Tokenizer.from_file(str(tmp_path / "bpe" / "tokenizer.json")).model.save(str(tmp_path / "out"))
    model = load_model(ckpt)
    assert model.cfg.d_vocab == 50304 and model.tokenizer is not None and model.cfg.default_prepend_bos is False
    text = "def parse(self):\n    return 1"
    toks = model.to_tokens(text, prepend_bos=False)
    assert toks.shape[1] >= 2 and int(toks.max()) < 50304 and model.to_string(toks[0]) == text


def test_pickled_module_is_refused_with_a_how_to(tmp_path):
    class TinyGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding_table = torch.nn.Embedding(5, 4)

    TinyGPT.__module__, TinyGPT.__qualname__ = "__main__", "TinyGPT"  # as when defined in a training script
    setattr(sys.modules["__main__"], "TinyGPT", TinyGPT)
    try:
        torch.save(TinyGPT(), tmp_path / "model.pth")
    finally:
        delattr(sys.modules["__main__"], "TinyGPT")
    with pytest.raises(LensworksError) as err:
        load_model(tmp_path / "model.pth")
    msg = str(err.value)
    assert "whole pickled module (__main__.TinyGPT" in msg and "torch.save(model.state_dict()" in msg and "\n" not in msg


# --------------------------------------------------------------------------- Let's build GPT


@pytest.mark.parametrize("vocab_kind", ["corpus", "list", "meta"])
def test_lets_build_gpt_state_dict_equals_its_own_forward(tmp_path, vocab_kind):
    sd = lbg_state_dict(seed=3)
    torch.save(sd, tmp_path / "gpt.pt")
    (tmp_path / "input.txt").write_text(SHAKESPEARE, encoding="utf-8")
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": {c: i for i, c in enumerate(CHARS)}}, f)
    vocab = {"corpus": tmp_path / "input.txt", "list": CHARS, "meta": tmp_path / "meta.pkl"}[vocab_kind]
    model = load_model(tmp_path / "gpt.pt", vocab=vocab)
    toks = model.to_tokens(SHAKESPEARE[10:70], prepend_bos=False)
    torch.testing.assert_close(_log_probs(model, toks), lbg_log_probs(sd, toks), atol=1e-5, rtol=0)
    compiled = {"_orig_mod." + k: v for k, v in sd.items()}
    torch.save(compiled, tmp_path / "compiled.pt")
    torch.testing.assert_close(load_model(tmp_path / "compiled.pt", vocab=CHARS)(toks), model(toks))


def test_lets_build_gpt_without_vocab_and_wrong_vocab(tmp_path):
    torch.save(lbg_state_dict(), tmp_path / "gpt.pt")
    with pytest.warns(UserWarning, match="stores no vocabulary"):
        assert load_model(tmp_path / "gpt.pt").tokenizer is None
    with pytest.raises(LensworksError, match="vocabulary has 3 entries but the model's embedding has d_vocab=.*rows"):
        load_model(tmp_path / "gpt.pt", vocab=["a", "b", "c"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LensworksError, match="latin1.txt: the training corpus is not UTF-8 text: byte 0xe9 on line 1"):
        load_model(tmp_path / "gpt.pt", vocab=tmp_path / "latin1.txt")


def test_cli_reads_a_lets_build_gpt_state_dict_with_vocab(tmp_path, capsys):
    torch.save(lbg_state_dict(), tmp_path / "gpt.pt")
    (tmp_path / "input.txt").write_text(SHAKESPEARE * 8, encoding="utf-8")
    code = main(["probes", str(tmp_path / "gpt.pt"), "--vocab", str(tmp_path / "input.txt"), "--text",
                 str(tmp_path / "input.txt"), "--max-tokens", "300", "--offsets", "0", "--json", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert json.loads((tmp_path / "p.json").read_text())


# --------------------------------------------------------------------------- meta.pkl


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize(("payload", "match"), [
    ({"itos": {0: "a"}, "stoi": {"a": 0}, "evil": _Boom()}, "refused: not a plain-data pickle .*names (posix|nt).system"),
    ({"itos": {0: "a"}, "stoi": {"a": 0}, "x": 1.5}, "refused: a meta.pkl may hold only .* holds a float"),
    ({"itos": {0: "a"}, "stoi": {"a": 0}, "x": {1, 2}}, "holds a set"),
    ({"itos": {0: "a", 2: "b"}}, "'itos' must map each id 0..n-1 exactly once"),
    ({"itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, "'stoi' and 'itos' disagree"),
    (["a", "b"], "expected nanoGPT's meta.pkl, a dict with 'stoi' and 'itos'"),
])
def test_meta_pkl_is_read_as_plain_data_only(tmp_path, monkeypatch, payload, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(LensworksError, match=match) as err:
        read_meta_pkl(tmp_path / "meta.pkl")
    assert str(tmp_path / "meta.pkl") in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def test_meta_pkl_round_trips_nanogpt_layout(tmp_path):
    chars = list(NL_CHARS)
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                                                      "stoi": {c: i for i, c in enumerate(chars)}}))
    assert read_meta_pkl(tmp_path / "meta.pkl") == chars


# --------------------------------------------------------------------------- vocabularies in any order


def _orders():
    base = sorted(set(string.ascii_letters + string.digits + " .,;:!?'\n-"))
    shuffled = base[:]
    random.Random(0).shuffle(shuffled)
    return {"newline-first": base, "space-first": [" "] + [c for c in base if c != " "],
            "letter-first": ["a"] + [c for c in base if c != "a"], "shuffled": shuffled,
            "bos-last": base + ["<bos>"], "multi-char": base + ["the", "\n\n"]}


@pytest.mark.parametrize("order", list(_orders()))
def test_any_vocabulary_order_encodes_and_decodes_every_entry(order):
    vocab = _orders()[order]
    tok = vocab_tokenizer(vocab)
    for i, s in enumerate(vocab):
        if s == "<bos>":
            continue
        assert tok(s, add_special_tokens=False)["input_ids"] == [i]  # longest entry first: "the" is one token
        assert tok.decode([i]) == s
    text = "The end.\n\nthe START: 42!\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and max(ids) < len(vocab)
    assert tok.pad_token_id is not None and (tok.pad_token_id >= len(vocab) or vocab[tok.pad_token_id] == "<bos>")


def test_pattern_cache_follows_the_vocabulary_not_the_object():
    """Two tokenizers made and dropped in turn (CPython often reuses the address) keep their own
    vocabularies: no cache keyed by id()."""
    from lensworks.model._tokens import _vocab_pattern

    for i in range(20):
        vocab = ["\n", "x"] if i % 2 else ["\n", "y"]
        tok = vocab_tokenizer(vocab)
        pattern = _vocab_pattern(tok)
        assert pattern.fullmatch("x" if i % 2 else "y") and not pattern.fullmatch("y" if i % 2 else "x")
        del tok


def test_text_with_newlines_runs_on_the_nanogpt_char_entry():
    model = arch_model("char-nl")
    assert model_vocab(model)[0] == "\n" and bos_token_id(model) is None
    check_encodable(model, "line one\nline two\n")
    toks, lengths = encode_batch(model, ["a\nb", "\n\n\nlonger"])
    assert lengths.tolist() == [3, 9] and toks[0, 1] == 0 and int(toks.max()) < model.cfg.d_vocab
    with pytest.raises(LensworksError, match="no padding token.*encode_batch"):
        as_tokens(model, ["a\nb", "\n\n\nlonger"])
    assert as_tokens(model, ["a\nb", "c\nd"]).shape == (2, 3)


# --------------------------------------------------------------------------- configs that lie


@pytest.mark.parametrize(("field", "value", "match"), [
    ("n_layer", 1, r"'n_layer' says 1 layers but the weights hold blocks \[0, 1\]"),
    ("n_layer", 3, r"'n_layer' says 3 layers but the weights hold blocks \[0, 1\]"),
    ("n_layer", 0, "'n_layer' must be a positive integer, got 0"),
    ("n_head", -1, "'n_head' must be a positive integer, got -1"),
    ("n_embd", "32", "'n_embd' must be a positive integer, got '32' .str."),
    ("n_layer", 2.0, r"'n_layer' must be a positive integer, got 2.0 \(float\)"),
    ("n_head", 2.7, "'n_head' must be a positive integer, got 2.7"),
    ("n_head", 5, "n_embd=32 is not divisible by n_head=5"),
    ("block_size", 0, "'block_size' must be a positive integer, got 0"),
    ("vocab_size", 10**7, r"transformer.wte.weight has shape \(\d+, 32\) but vocab_size x n_embd implies \(10000000, 32\)"),
    ("bias", False, "bias=False but the weights hold biases"),
])
def test_nanogpt_config_lies_are_refused(tmp_path, field, value, match):
    ckpt = write_nanogpt(tmp_path / "out")
    obj = torch.load(ckpt, weights_only=True)
    obj["model_args"][field] = value
    torch.save(obj, ckpt)
    with pytest.raises(LensworksError, match=match) as err:
        load_model(ckpt)
    assert str(ckpt) in str(err.value)


def test_integer_weights_are_refused(tmp_path):
    ckpt = write_nanogpt(tmp_path / "out")
    obj = torch.load(ckpt, weights_only=True)
    obj["model"]["transformer.wte.weight"] = obj["model"]["transformer.wte.weight"].round().long()
    torch.save(obj, ckpt)
    with pytest.raises(LensworksError, match="transformer.wte.weight holds torch.int64 values; expected floating-point"):
        load_model(ckpt)


def _hf_copy(tmp_path, family="gpt2"):
    out = tmp_path / family
    shutil.copytree(hf_dir(family), out)
    return out


@pytest.mark.parametrize(("edit", "match"), [
    ({"n_layer": 1}, r"config.json: config.json says 1 layers .* hold blocks \[0, 1\]"),
    ({"n_layer": 3}, r"says 3 layers .* hold blocks \[0, 1\] \(2 layers\)"),
    ({"n_layer": 0}, "'n_layer' must be a positive integer, got 0"),
    ({"n_layer": "2"}, "'n_layer' must be a positive integer, got '2'"),
    ({"n_head": 2.0}, r"'n_head' must be a positive integer, got 2.0"),
    ({"n_head": 3}, "width 64 is not divisible by the 3 attention heads"),
    ({"n_positions": 0}, "'n_positions' must be a positive integer, got 0"),
])
def test_hugging_face_config_lies_are_refused(tmp_path, edit, match):
    out = _hf_copy(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(edit)
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match=match):
        load_model(out)


def test_unreadable_config_files_say_why(tmp_path, monkeypatch):
    out = _hf_copy(tmp_path)
    raw = (out / "config.json").read_bytes()
    (out / "config.json").write_bytes(raw.replace(b'"gpt2"', b'"gpt\xe92"'))
    with pytest.raises(LensworksError, match=r"config.json: the config is not UTF-8 text: byte 0xe9 on line"):
        load_model(out)
    (out / "config.json").unlink()
    (out / "config.json").mkdir()
    with pytest.raises(LensworksError, match=r"config.json: is a directory; expected a config file"):
        load_model(out)
    (out / "config.json").rmdir()
    (out / "config.json").write_bytes(raw)
    import pathlib

    real = pathlib.Path.read_bytes

    def denied(self):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: denied(self).decode())
    with pytest.raises(LensworksError, match="config.json: permission denied"):
        load_model(out)


def test_n_ctx_must_be_a_positive_integer():
    for bad in (0, -5, 2.7, "8"):
        with pytest.raises(LensworksError, match="'n_ctx' must be a positive integer"):
            load_model(hf_dir("gpt2"), n_ctx=bad)


# --------------------------------------------------------------------------- names and saving


def test_local_path_wins_over_a_zoo_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hf_dir("gpt2"), tmp_path / "char-mlp")  # a user's directory that shares a demo's name
    local = load_model("char-mlp")
    assert local.cfg.d_model == 64  # the tiny GPT-2, not the bundled char-mlp
    assert main(["heads", "char-mlp", "--n-seqs", "2", "--top", "1"]) == 0
    err = capsys.readouterr().err
    assert f"model: local directory {(tmp_path / 'char-mlp').resolve()} (not the bundled demo model char-mlp)" in err
    shutil.rmtree(tmp_path / "char-mlp")
    assert main(["heads", "char-mlp", "--n-seqs", "2", "--top", "1"]) == 0
    assert "model: bundled demo model char-mlp" in capsys.readouterr().err


@tl3_only
def test_save_model_never_touches_other_files(tmp_path):
    model = arch_model("char-nl")
    out = tmp_path / "hf"
    shutil.copytree(hf_dir("gpt2"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LensworksError, match="already holds .*new or empty directory"):
        save_model(model, out)
    with pytest.raises(LensworksError, match="will not overwrite"):
        save_model(model, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LensworksError, match="will not overwrite .*notes.txt"):
        save_model(model, tmp_path / "mine", overwrite=True)
    saved = save_model(model, tmp_path / "new")
    save_model(model, saved, overwrite=True)  # an earlier save_model directory may be replaced
    reloaded = load_model(saved)
    assert model_vocab(reloaded) == NL_CHARS
    toks = reloaded.to_tokens("a\nb", prepend_bos=False)
    torch.testing.assert_close(reloaded(toks), model(toks), atol=1e-5, rtol=1e-5)
