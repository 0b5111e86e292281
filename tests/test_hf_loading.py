"""Local Hugging Face checkpoints: lensworks' forward equals Hugging Face's own on the same
directory, token ids equal the checkpoint tokenizer's, the processing record is truthful, and
broken directories get one clear error naming the file and what disagrees."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from archs import arch_model, hf_dir
from hf_families import FAMILIES, FAMILY_CASES, build_hf_checkpoint, hf_log_probs, sample_tokens
from lensworks import load_model, save_model
from lensworks.model import TL_MAJOR, LensworksError, SUPPORTED_ARCHITECTURES, encode_text, processing_state, uses_bos

tl3_only = pytest.mark.skipif(TL_MAJOR >= 4, reason="save_model writes TransformerLens 3 checkpoints")
#: Every family this line reads: TransformerLens 3 reads the registered ones, 4 every one here.
READ_HERE = tuple(f for f in FAMILIES if TL_MAJOR >= 4 or not FAMILY_CASES[f].bridge_only)

_TEXT = "def parse(self, args):\n    return self._parse_known(args)  # ok"
_RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)


def _log_probs(model, toks):
    with torch.no_grad():
        return model(toks.to(model.cfg.device)).float().log_softmax(-1)


@pytest.mark.parametrize("family", READ_HERE)
@pytest.mark.parametrize("processed", [True, False], ids=["processed", "raw"])
def test_log_probs_equal_hugging_face(family, processed):
    path = hf_dir(family)
    toks = sample_tokens(path, n_seqs=2, seq_len=40, random=True)
    model = load_model(path) if processed else load_model(path, **_RAW)
    ref = hf_log_probs(path, toks)
    assert (_log_probs(model, toks) - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", READ_HERE)
def test_token_ids_equal_the_checkpoint_tokenizer(family):
    from transformers import AutoTokenizer

    path = hf_dir(family)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = load_model(path)
    ids = tok(_TEXT)["input_ids"]
    body = ids[1:] if ids and ids[0] == tok.bos_token_id and len(tok("")["input_ids"]) == 1 else ids
    ours = encode_text(model, _TEXT, prepend_bos=False).tolist()
    assert ours == body
    with_bos = encode_text(model, _TEXT).tolist()
    assert with_bos == ([model.tokenizer.bos_token_id] + body if uses_bos(model) else body)


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILY_CASES[f].bridge_only])
def test_unregistered_families_are_read_by_the_bridge_and_refused_by_the_hooked_line(family, tmp_path):
    """Under TransformerLens 4 a family lensworks has no spec for boots through the bridge (the
    log-prob test above compares it with Hugging Face); under TransformerLens 3 it is refused
    naming the architecture and the line that reads it. A config that lies about its layer count
    is refused before booting on both."""
    path = hf_dir(family)
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    if TL_MAJOR < 4:
        with pytest.raises(LensworksError, match=f"unsupported architecture {arch}.*under TransformerLens 4"):
            load_model(path)
    else:
        assert load_model(path).cfg.n_layers == 2
    lie = tmp_path / "lie"
    shutil.copytree(path, lie)
    cfg = json.loads((lie / "config.json").read_text())
    cfg["n_layer" if "n_layer" in cfg else "num_hidden_layers"] = 3
    (lie / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match="3 layers" if TL_MAJOR >= 4 else "unsupported architecture"):
        load_model(lie)


def test_an_architecture_the_bridge_cannot_boot_is_refused_naming_it(tmp_path):
    bad = tmp_path / "mamba"
    shutil.copytree(hf_dir("llama"), bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["NoSuchForCausalLM"], "no-such"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match="NoSuchForCausalLM"):
        load_model(bad)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_processing_flags_are_recorded_truthfully(family):
    path = hf_dir(family)
    raw, processed = load_model(path, **_RAW), load_model(path)
    r, p = processing_state(raw), processing_state(processed)
    assert (r["fold_ln"], r["center_writing_weights"], r["center_unembed"]) == (False, False, False)
    assert p["fold_ln"] is True
    # centring writing weights is a LayerNorm-only operation; a soft-capped unembedding is never centred
    assert p["center_writing_weights"] is (family == "gpt2")
    assert p["center_unembed"] is (family != "gemma2")
    only_unembed = processing_state(load_model(path, fold_ln=False, center_writing_weights=False, center_unembed=True))
    assert only_unembed["center_unembed"] is (family != "gemma2") and only_unembed["fold_ln"] is False


@pytest.mark.parametrize("variant", ["shards", "bin", "bin-shards"])
def test_sharded_and_bin_checkpoints(tmp_path, variant):
    kwargs = {"shards": dict(shards=3), "bin": dict(safetensors=False), "bin-shards": dict(safetensors=False, shards=2)}[variant]
    path = build_hf_checkpoint("llama", tmp_path / variant, **kwargs)
    toks = sample_tokens(path, random=True)
    one = load_model(hf_dir("llama"))
    torch.testing.assert_close(_log_probs(load_model(path), toks), _log_probs(one, toks))


def test_bf16_is_close_to_hugging_face():
    path = hf_dir("llama")
    toks = sample_tokens(path, n_seqs=2, seq_len=40, random=True)
    model = load_model(path, dtype=torch.bfloat16)
    assert model.W_Q.dtype == torch.bfloat16 and processing_state(model)["dtype"] == "bfloat16"
    assert (_log_probs(model, toks) - hf_log_probs(path, toks)).abs().max().item() < 0.1


@tl3_only
def test_save_model_keeps_the_tokenizer(tmp_path):
    model = load_model(hf_dir("gpt2"))
    out = save_model(model, tmp_path / "saved")
    assert (out / "tokenizer.json").is_file() and not (out / "vocab.json").exists()
    back = load_model(out)
    assert back.tokenizer is not None
    assert torch.equal(back.to_tokens(_TEXT), model.to_tokens(_TEXT))
    toks = model.to_tokens(_TEXT)
    torch.testing.assert_close(_log_probs(back, toks), _log_probs(model, toks))
    # TransformerLens-format checkpoints load as stored: the record survives the round trip
    assert processing_state(back) == processing_state(model)


@tl3_only
def test_save_model_removes_a_stale_vocabulary(tmp_path, mlp_model):
    out = save_model(mlp_model, tmp_path / "ckpt")
    assert (out / "vocab.json").is_file()
    save_model(load_model(hf_dir("gpt2")), out, overwrite=True)
    assert not (out / "vocab.json").exists()
    assert load_model(out).cfg.d_vocab == load_model(hf_dir("gpt2")).cfg.d_vocab


def test_offline_name_lookup_never_needs_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model(str(hf_dir("neox"))).cfg.parallel_attn_mlp


# --------------------------------------------------------------------------- bad input


def _copy(tmp_path, family="llama"):
    dst = tmp_path / family
    shutil.copytree(hf_dir(family), dst)
    return dst


def test_unknown_architecture_lists_supported(tmp_path):
    path = _copy(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match="MambaForCausalLM") as err:
        load_model(path)
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in str(err.value)
    assert "config.json" in str(err.value)


def test_missing_weight_files(tmp_path):
    path = _copy(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(LensworksError, match="no weight files"):
        load_model(path)


def test_shapes_disagreeing_with_config(tmp_path):
    path = _copy(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match=str(path)) as err:
        load_model(path)
    assert "mlp" in str(err.value) and "96" in str(err.value)


def test_missing_tensor_is_named(tmp_path):
    path = _copy(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    del sd["model.layers.1.self_attn.q_proj.weight"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(LensworksError, match="layers.1.self_attn.q_proj"):
        load_model(path)


def test_tokenizer_larger_than_embedding(tmp_path):
    path = _copy(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    sd = load_file(str(path / "model.safetensors"))
    n = 200
    cfg["vocab_size"] = n
    sd = {k: (v[:n] if k in ("model.embed_tokens.weight", "lm_head.weight") else v) for k, v in sd.items()}
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LensworksError, match="tokenizer has ids up to 299 but the embedding .* only 200"):
        load_model(path)


def test_untied_checkpoint_without_head(tmp_path):
    path = _copy(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    del sd["lm_head.weight"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(LensworksError, match="lm_head.weight"):
        load_model(path)


def test_bad_dtype_and_model_with_options():
    with pytest.raises(LensworksError, match="floating torch.dtype"):
        load_model(hf_dir("gpt2"), dtype=torch.int8)
    with pytest.raises(LensworksError, match="model object"):
        load_model(arch_model("attn-only"), fold_ln=True)


@pytest.mark.skipif(TL_MAJOR < 4, reason="TransformerBridge checks need TransformerLens 4")
def test_bridge_not_in_compatibility_mode_and_other_objects(tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    from lensworks.circuits import copying_scores
    from lensworks.geometry import residual_stats

    raw = TransformerBridge.boot_transformers(str(hf_dir("gpt2")), device="cpu")
    for fn in (lambda m: copying_scores(m), lambda m: residual_stats(m, {"a": torch.ones(2, 4, dtype=torch.long)})):
        with pytest.raises(LensworksError, match="enable_compatibility_mode"):
            fn(raw)
    with pytest.raises(LensworksError, match="TransformerBridge"):
        copying_scores(torch.nn.Linear(2, 2))
    with pytest.raises(LensworksError, match="save_pretrained"):
        save_model(arch_model("llama"), tmp_path / "x")


@pytest.mark.parametrize("where", ["W_U", "W_V", "W_E"])
def test_non_finite_weights_are_named(tmp_path, where):
    from lensworks.circuits import composition_scores, copying_scores

    path = _copy(tmp_path, "gpt2")
    sd = load_file(str(path / "model.safetensors"))
    key = {"W_U": "transformer.wte.weight", "W_V": "transformer.h.1.attn.c_attn.weight", "W_E": "transformer.wte.weight"}[where]
    bad = sd[key].clone()
    bad.view(-1)[-1] = float("nan") if where != "W_V" else float("inf")
    sd[key] = bad
    save_file(sd, str(path / "model.safetensors"))
    model = load_model(path, **_RAW)
    with pytest.raises(LensworksError, match="holds 1 (NaN|inf)"):
        copying_scores(model, baseline=False)
    if where == "W_V":
        with pytest.raises(LensworksError, match="W_V of block 1 holds 1 inf"):
            composition_scores(model, "V", baseline=False)


def test_bundled_bpe_llama_directory_on_this_line():
    """The subword demo model is a Hugging Face directory: it loads on either TransformerLens line,
    matches Hugging Face's forward, and its induction heads are found with default arguments."""
    from lensworks import zoo
    from lensworks.circuits import find_induction_heads

    path = zoo.path("bpe-llama")
    model = load_model("bpe-llama")
    toks = sample_tokens(path, n_seqs=2, seq_len=64, random=True)
    assert (_log_probs(model, toks) - hf_log_probs(path, toks)).abs().max().item() < 1e-4
    report = find_induction_heads(model)
    assert report.heads and {layer for layer, _ in report.heads} == {1}, report.summary()
