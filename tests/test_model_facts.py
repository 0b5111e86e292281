"""ModelFacts: one home for streams, BOS, device, dtype and layout, on every architecture and both
TransformerLens lines; cached per model by weak reference and recomputed when the model changes."""

from __future__ import annotations

import gc

import pytest
import torch

from archs import ARCHS, arch_checkpoint, arch_model
from lensworks import load_model
from lensworks.model import (TL_MAJOR, ALL_STREAMS, ModelFacts, bos_token_id, has_resid_mid, model_facts, model_streams,
                             uses_bos, vocab_tokenizer)
from lensworks.model._modelfacts import _CACHE


@pytest.mark.parametrize("arch", ARCHS)
def test_facts_agree_with_the_config_and_the_helpers(arch):
    model = arch_model(arch)
    facts = model_facts(model)
    cfg = model.cfg
    assert isinstance(facts, ModelFacts) and model_facts(model) is facts  # cached
    assert (facts.n_layers, facts.n_heads, facts.d_model, facts.d_head, facts.n_ctx) == (
        cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_ctx)
    expected = [s for s in ALL_STREAMS if s in ("resid_pre", "attn_out", "resid_post")
                or (s == "mlp_out" and not cfg.attn_only)
                or (s == "resid_mid" and not cfg.attn_only and not getattr(cfg, "parallel_attn_mlp", False))]
    assert list(facts.streams) == expected and facts.has_resid_mid == has_resid_mid(model)
    assert model_streams(model, ALL_STREAMS) == facts.streams
    # hooks that exist in the model for every stream the facts list
    for s in facts.streams:
        assert facts.hook(s, 0) in model.hook_dict
    assert facts.bos_id == bos_token_id(model) and facts.prepend_bos == uses_bos(model)
    assert facts.dtype == next(model.parameters()).dtype and facts.device == next(model.parameters()).device
    assert facts.working_dtype == torch.float32
    assert facts.pos_embed_in_residual == (cfg.positional_embedding_type == "standard")
    assert (facts.output_logits_soft_cap is not None) == (arch == "gemma2")
    assert facts.backend.startswith("TransformerLens ")


def test_the_nanogpt_char_entry_has_no_bos_and_reads_newlines():
    facts = model_facts(arch_model("char-nl"))
    assert facts.bos_id is None and facts.prepend_bos is False and facts.bos_offset() == 0
    toks = torch.tensor([[0, 1, 2]])
    assert torch.equal(facts.add_bos(toks), toks)
    with pytest.raises(Exception, match="no tokenizer with a BOS token"):
        facts.add_bos(toks, True)


def test_add_bos_on_one_sequence_and_a_batch():
    facts = model_facts(arch_model("attn-only"))  # character vocabulary with <bos> at 0
    assert facts.bos_id == 0 and facts.prepend_bos
    assert facts.add_bos(torch.tensor([5, 6])).tolist() == [0, 5, 6]
    assert facts.add_bos(torch.tensor([[5, 6], [7, 8]])).tolist() == [[0, 5, 6], [0, 7, 8]]
    assert facts.add_bos(torch.tensor([[5, 6]]), False).tolist() == [[5, 6]]


def test_leading_bos_reads_the_first_column_not_the_length():
    facts = model_facts(arch_model("attn-only"))  # <bos> at 0
    assert facts.leading_bos(torch.tensor([[0, 5, 6, 5, 6]])) == 1
    # an even length no longer means "no BOS": the first column decides
    assert facts.leading_bos(torch.tensor([[0, 5, 0, 5]])) == 1
    assert facts.leading_bos(torch.tensor([[0, 5], [7, 5]])) == 0
    assert facts.leading_bos(torch.tensor([[0, 5, 0, 5]]), False) == 0
    assert model_facts(arch_model("char-nl")).leading_bos(torch.tensor([[0, 1, 0, 1]])) == 0  # '\n' is id 0, no BOS


def test_head_scores_take_the_bos_offset_from_the_facts():
    from lensworks.circuits import head_scores
    from lensworks.errors import LensworksError

    model = arch_model("attn-only")
    rep = torch.tensor([[0, 5, 0, 5, 0, 5, 0, 5]])  # no BOS: "0 5 0 5" twice, but it starts with the BOS id
    with pytest.raises(LensworksError, match="prepend_bos=False"):
        head_scores(model, "induction", tokens=rep)
    explicit = head_scores(model, "induction", tokens=rep, prepend_bos=False)
    assert explicit.scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    with_bos = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])
    assert torch.equal(head_scores(model, "induction", tokens=with_bos).scores,
                       head_scores(model, "induction", tokens=with_bos, prepend_bos=True).scores)


@pytest.mark.skipif(TL_MAJOR >= 4, reason="set_tokenizer and .to(dtype) of a HookedTransformer")
def test_facts_follow_changes_to_the_model():
    model = load_model(arch_checkpoint("char-nl", None)[0])
    before = model_facts(model)
    assert before.bos_id is None
    model.set_tokenizer(vocab_tokenizer(["<bos>"] + list(before_vocab(model))[1:]))
    model.cfg.default_prepend_bos = True
    after = model_facts(model)
    assert after is not before and after.bos_id == 0 and after.prepend_bos
    model.to(torch.float64)
    assert model_facts(model).dtype == torch.float64 and model_facts(model).working_dtype == torch.float64


def before_vocab(model):
    from lensworks.model import model_vocab

    return model_vocab(model)


def test_facts_do_not_keep_a_model_alive():
    model = load_model(arch_checkpoint("char-nl", None)[0])
    model_facts(model)
    n = len(_CACHE)
    del model
    gc.collect()
    assert len(_CACHE) == n - 1


@pytest.mark.parametrize("arch", ARCHS)
def test_pattern_editable_says_whether_a_pattern_edit_changes_the_output(arch):
    """The fact is read from the attention modules' code (no forward pass); checked here by
    behaviour: zeroing block 0's pattern through hook_pattern changes the logits exactly when the
    fact says edits apply (under TransformerLens 4, GPT-J's attention discards them)."""
    import warnings

    model = arch_model(arch)
    toks = torch.arange(1, 8)[None].to(model_facts(model).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that the edit was discarded
        plain = model(toks)
        edited = model.run_with_hooks(toks, fwd_hooks=[(model_facts(model).hook("pattern", 0), lambda x, hook: x * 0)])
    assert model_facts(model).pattern_editable == (not torch.equal(plain, edited))
