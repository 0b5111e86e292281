"""Loading and saving checkpoints, vocabulary tokenizers, hook names and input checks."""

from __future__ import annotations

import pickle

import pytest
import torch

from helpers import CHAR_VOCAB, tiny_model, tl_state_dict
from lensworks import load_model, save_model
from lensworks.model import (
    TL_MAJOR,
    LensworksError,
    as_tokens,
    attention_weights,
    check_head,
    check_layer,
    hook_name,
    model_vocab,
    vocab_tokenizer,
)


#: save_model refuses TransformerBridge objects (it writes TransformerLens 3 checkpoints).
tl3_save = pytest.mark.skipif(TL_MAJOR >= 4, reason="save_model writes TransformerLens 3 checkpoints only; "
                              "a TransformerBridge is refused by design")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        if k.endswith(("IGNORE", ".mask")):
            continue
        assert torch.equal(v, sb[k]), k


def test_model_object_is_returned_as_is(attn_model):
    assert load_model(attn_model) is attn_model


@tl3_save
def test_directory_round_trip_with_vocab(tmp_path, mlp_model):
    path = save_model(mlp_model, tmp_path / "ckpt")
    assert (path / "vocab.json").is_file()
    loaded = load_model(path)
    _same_weights(mlp_model, loaded)
    text = "hello world"
    assert loaded.to_str_tokens(text) == ["<bos>"] + list(text)
    assert torch.equal(loaded.to_tokens(text), mlp_model.to_tokens(text))
    toks = mlp_model.to_tokens(text)
    torch.testing.assert_close(loaded(toks), mlp_model(toks))


def test_pt_file_with_fp16_weights_is_upcast(tmp_path, attn_model):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in tl_state_dict(attn_model).items()}
    cfg = {"n_layers": 2, "d_model": 32, "n_ctx": 64, "d_head": 8, "n_heads": 4, "d_vocab": 50,
           "attn_only": True, "act_fn": "gelu", "normalization_type": "LN", "dtype": "float16"}
    torch.save({"cfg": cfg, "state_dict": sd}, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.W_Q.dtype == torch.float32
    torch.testing.assert_close(loaded.W_Q, attn_model.W_Q.half().float())
    loaded64 = load_model(tmp_path / "m.pt", dtype=torch.float64)
    assert loaded64.W_Q.dtype == torch.float64


def test_pt_file_with_vocab_gets_tokenizer(tmp_path, char_model):
    cfg = {"n_layers": 2, "d_model": 32, "n_ctx": 64, "d_head": 8, "n_heads": 4, "d_vocab": len(CHAR_VOCAB),
           "attn_only": True, "act_fn": "gelu", "normalization_type": "LN"}
    torch.save({"cfg": cfg, "state_dict": tl_state_dict(char_model), "vocab": CHAR_VOCAB}, tmp_path / "c.pth")
    loaded = load_model(str(tmp_path / "c.pth"))
    assert loaded.to_str_tokens("ab") == ["<bos>", "a", "b"]
    assert model_vocab(loaded) == CHAR_VOCAB


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_payload_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"cfg": _Evil(), "state_dict": {}}, f)
    with pytest.raises(LensworksError, match="weights-only"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"state_dict": {}}, "a dict with 'cfg', 'state_dict'"),
        pytest.param({"cfg": {"n_layers": 1, "bogus": 3}, "state_dict": {}}, "unknown HookedTransformerConfig fields",
                     marks=pytest.mark.skipif(TL_MAJOR >= 4, reason="TransformerLens 4 has no HookedTransformerConfig "
                                              "to check field names against (the config is still refused, for d_model)")),
        ([1, 2, 3], "checkpoint .a dict with.*got list"),
    ],
)
def test_wrong_checkpoint_contents(tmp_path, payload, match):
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(LensworksError, match=match):
        load_model(tmp_path / "bad.pt")


def test_state_dict_mismatch_is_named(tmp_path, attn_model):
    cfg = {"n_layers": 3, "d_model": 32, "n_ctx": 64, "d_head": 8, "n_heads": 4, "d_vocab": 50, "attn_only": True}
    torch.save({"cfg": cfg, "state_dict": tl_state_dict(attn_model)}, tmp_path / "m.pt")
    with pytest.raises(LensworksError, match=r"n_layers=3 but the weights hold blocks \[0, 1\]"):
        load_model(tmp_path / "m.pt")


def test_bad_paths(tmp_path):
    with pytest.raises(LensworksError, match="no checkpoint"):
        load_model(tmp_path / "nothing.pt")
    (tmp_path / "weights.bin").write_bytes(b"123")
    with pytest.raises(LensworksError, match=r"\.pt/\.pth"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(LensworksError, match="config.json"):
        load_model(tmp_path / "emptydir")
    with pytest.raises(LensworksError, match="HookedTransformer"):
        load_model(42)


@tl3_save
def test_gqa_round_trip_and_expanded_weights(tmp_path, gqa_model):
    loaded = load_model(save_model(gqa_model, tmp_path / "gqa"))
    _same_weights(gqa_model, loaded)
    w = attention_weights(loaded)
    assert w["W_K"].shape == (3, 4, 32, 8)
    # query heads 0,1 share kv head 0; 2,3 share kv head 1
    torch.testing.assert_close(w["W_K"][:, 0], w["W_K"][:, 1])
    torch.testing.assert_close(w["W_V"][:, 2], w["W_V"][:, 3])
    for layer in range(3):
        torch.testing.assert_close(w["W_K"][layer, 3], loaded.blocks[layer].attn._W_K[1])


def test_vocab_tokenizer_longest_match_and_specials():
    tok = vocab_tokenizer(["<bos>", "a", "b", "ab", "<script>"])
    assert tok("abba<script>")["input_ids"] == [0, 3, 2, 1, 4]
    assert tok.decode([3, 4]) == "ab<script>"
    with pytest.raises(LensworksError, match="repeated"):
        vocab_tokenizer(["a", "a"])
    no_bos = tiny_model(vocab=["a", "b", "c"], d_vocab=3)
    assert no_bos.to_tokens("abc", prepend_bos=False).tolist() == [[0, 1, 2]]


def test_hooks_and_indices(attn_model):
    assert hook_name("resid_pre", 1) == "blocks.1.hook_resid_pre"
    assert hook_name("ln_final") == "ln_final.hook_normalized"
    with pytest.raises(LensworksError, match="unknown stream"):
        hook_name("resid_middle", 0)
    assert check_layer(attn_model, -1) == 1
    with pytest.raises(LensworksError, match="out of range.*2 layers"):
        check_layer(attn_model, 2)
    with pytest.raises(LensworksError, match="head 4 is out of range"):
        check_head(attn_model, 0, 4)


def test_as_tokens_checks(attn_model, char_model):
    with pytest.raises(LensworksError, match="n_ctx"):
        as_tokens(attn_model, torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(LensworksError, match="empty"):
        as_tokens(attn_model, torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(LensworksError, match=r"\[0, 50\)"):
        as_tokens(attn_model, torch.tensor([[1, 50]]))
    with pytest.raises(LensworksError, match="no tokenizer"):
        as_tokens(attn_model, ["abc"])
    with pytest.raises(LensworksError, match="empty"):
        as_tokens(char_model, [])
    assert as_tokens(char_model, "ab").tolist() == [[0, 1, 2]]


def test_shared_token_helpers(attn_model, char_model):
    from lensworks.model import bos_token_id, check_token_tensor

    assert bos_token_id(char_model) == 0 and bos_token_id(attn_model) is None
    assert check_token_tensor(attn_model, torch.tensor([1, 2], dtype=torch.int32)).dtype == torch.long
    assert check_token_tensor(attn_model, torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(LensworksError, match="integer token ids"):
        check_token_tensor(attn_model, torch.zeros(1, 3))
    with pytest.raises(LensworksError, match="no positions"):
        check_token_tensor(attn_model, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(LensworksError, match=r"\[batch, pos\]"):
        check_token_tensor(attn_model, torch.zeros(1, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_centring_check_reads_in_slices(dtype):
    """The centring record streams large matrices in float32 slices (no full float32 copy of a
    128k-token embedding) and decides exactly as the one-shot computation does."""
    from lensworks.model._facts import _centred

    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(300, 48, generator=gen)
    centred_rows = (raw - raw.mean(-1, keepdim=True)).to(dtype)  # zero mean along the last axis
    centred_cols = (raw - raw.mean(0, keepdim=True)).to(dtype)  # zero mean along the first axis
    for chunk in (1, 7, 48 * 5, 1 << 24):  # one row per slice, a ragged last slice, one slice
        assert _centred([centred_rows], -1, chunk_elements=chunk)
        assert not _centred([raw.to(dtype)], -1, chunk_elements=chunk)
        assert _centred([centred_cols], 0, chunk_elements=chunk)
        assert not _centred([centred_cols], -1, chunk_elements=chunk)
        assert _centred([torch.zeros(5, 3, dtype=dtype), centred_rows], -1, chunk_elements=chunk)
    # one uncentred row among 300 is found in whichever slice holds it
    planted = centred_rows.float().clone()
    planted[217] += 0.5
    assert not _centred([planted.to(dtype)], -1, chunk_elements=48 * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_check_reads_in_slices(dtype):
    """The weight check reads slices (no float32 copy of a bf16 embedding) and still finds a
    NaN or inf in any slice, the last and a ragged one included."""
    from lensworks.model._compat import all_finite, require_finite_weight

    w = torch.randn(50, 7).to(dtype)
    for chunk in (1, 8, 7 * 50, 1 << 24):
        assert all_finite(w, chunk_elements=chunk)
        for flat_index, bad in ((0, float("nan")), (7 * 50 - 1, float("inf")), (123, -float("inf"))):
            v = w.clone()
            v.view(-1)[flat_index] = bad
            assert not all_finite(v, chunk_elements=chunk)
    # finite entries whose sum overflows are still finite (checked entry by entry)
    huge = torch.full((100,), 3e38).to(dtype)
    assert not bool(torch.isfinite(huge.sum())) and all_finite(huge, chunk_elements=64)
    v = w.clone()
    v[49, 6] = float("nan")
    with pytest.raises(Exception, match="W_E of the embedding holds 1 NaN"):
        require_finite_weight(v, "W_E of the embedding")
