"""Direct logit attribution (issue 24, item 4): TransformerLens's logit_attrs, the planted identity on
every architecture, a hand-set model, a reused cache and the refusals."""

from __future__ import annotations

import warnings

import pytest
import torch

from archs import ARCHS, arch_model, float_tol
from helpers import planted_induction_model
from lensworks.causal.dla import DirectLogitAttribution, direct_logit_attribution
from lensworks.model import TL_MAJOR, LensworksError, processing_state
from lensworks.model._compat import normalization_type


def _tokens(model, n=3, pos=7, seed=0):
    lo = 1 if model.cfg.d_vocab < 100 else 10
    return torch.randint(lo, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_components_add_up_to_the_logit_difference(arch):
    """Planted identity: embeddings + heads + attention biases + MLPs + final biases == the logit
    difference computed from the final residual with the same (the run's) final-norm scale."""
    model = arch_model(arch)
    toks = _tokens(model)
    dla = direct_logit_attribution(model, toks, [3, 4, 5], wrong_tokens=6)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert dla.attributions.shape == (len(dla.labels), 3) and len(dla.kinds) == len(dla.labels)
    assert dla.kinds.count("head") == L * H and dla.head_attributions().shape == (L, H)
    tol = float_tol(model, 1e-4)
    torch.testing.assert_close(dla.attributions.sum(0), dla.logit_diff, atol=tol, rtol=tol)
    assert dla.decomposition_error < float_tol(model, 1e-4)
    # the model's own logits: equal to logit_diff up to the output soft-cap (Gemma-2)
    with torch.no_grad():
        logits = model(toks)[:, -1].float()
    own = logits[torch.arange(3), torch.tensor([3, 4, 5])] - logits[:, 6]
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    expect = dla.logit_diff
    if cap > 0:  # the cap acts on each logit: attribute the two logits on their own
        a = direct_logit_attribution(model, toks, [3, 4, 5]).logit_diff
        w = direct_logit_attribution(model, toks, 6).logit_diff
        torch.testing.assert_close(a - w, dla.logit_diff, atol=tol, rtol=tol)
        expect = cap * torch.tanh(a / cap) - cap * torch.tanh(w / cap)
    torch.testing.assert_close(own, expect, atol=float_tol(model, 1e-4), rtol=float_tol(model, 1e-4))
    assert dla.processing == processing_state(model)
    frame = dla.to_frame()
    assert len(frame) == len(dla.labels) and frame["mean"].sum() == pytest.approx(float(dla.logit_diff.mean()), abs=5 * tol)
    assert dla.figure().data and dla.headline() and dla.caption()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("gemma2", "gemma3")])
def test_heads_equal_transformer_lens_logit_attrs(arch):
    """Per head: TransformerLens's ``cache.logit_attrs(cache.stack_head_results(...))`` within 1e-5 (both lines)
    where the final norm's weight is folded into W_U; where it is not, TransformerLens leaves the
    weight out of the direction, so ours equals its frozen-scale stack times ``w * direction``.
    (Gemma-2 and Gemma-3 are left out: stack_head_results ignores their norm after attention.)"""
    model = arch_model(arch)
    toks = _tokens(model)
    answer, wrong = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    ours = direct_logit_attribution(model, toks, answer, wrong_tokens=wrong)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, cache = model.run_with_cache(toks)
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L*H, batch, d_model]
        if normalization_type(model) in ("LN", "RMS"):  # unfolded: logit_attrs leaves ln_final.w out
            scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
            w = model.ln_final.w if TL_MAJOR < 4 else model.ln_final._original_component.weight
            direction = (model.W_U[:, answer] - model.W_U[:, wrong]).T * w
            ref = (scaled * direction).sum(-1)
        else:
            ref = cache.logit_attrs(stack, tokens=answer, incorrect_tokens=wrong, pos_slice=-1)
    heads = torch.tensor([k == "head" for k in ours.kinds])
    tol = float_tol(model, 1e-5)
    torch.testing.assert_close(ours.attributions[heads], ref.float().detach(), atol=tol, rtol=tol)


def test_hand_set_model():
    """The planted induction model: W_U reads only the output slot, which only L1H0 writes (plus
    the noise heads' 1e-3 weights), so L1H0's attribution is the answer's logit and equals
    ``sum_j pattern[t, j] * [token_j == answer]``; the embeddings and L0H0 write nothing there."""
    model = planted_induction_model()
    g = torch.Generator().manual_seed(0)
    s = torch.randperm(15, generator=g)[:8] + 1
    toks = torch.cat([s, s])[None]
    answer = int(s[0])
    dla = direct_logit_attribution(model, toks, answer)
    row = dict(zip(dla.labels, dla.attributions[:, 0].tolist()))
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
    pattern = cache["blocks.1.attn.hook_pattern"][0, 0, -1]
    by_hand = float((pattern * (toks[0] == answer).float()).sum())
    assert row["L1H0"] == pytest.approx(by_hand, abs=1e-5)
    assert row["L1H0"] == pytest.approx(float(logits[0, -1, answer]), abs=1e-2)
    assert row["embed"] == 0.0 and row["pos_embed"] == 0.0 and row["L0H0"] == 0.0
    assert "final norm bias" not in row and dla.target == "logit"
    assert dla.headline().startswith("L1H0 writes")


def test_reuses_an_activation_cache(mlp_model):
    toks = torch.randint(1, mlp_model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(1))
    direct = direct_logit_attribution(mlp_model, toks, 3, wrong_tokens=4, position=-2)
    with torch.no_grad():
        _, cache = mlp_model.run_with_cache(toks)
    reused = direct_logit_attribution(mlp_model, cache, 3, wrong_tokens=4, position=-2)
    torch.testing.assert_close(reused.attributions, direct.attributions)
    assert reused.labels == direct.labels
    one_by_one = direct_logit_attribution(mlp_model, toks, 3, wrong_tokens=4, position=-2, batch_size=1)
    torch.testing.assert_close(one_by_one.attributions, direct.attributions, atol=1e-5, rtol=1e-5)
    strings = direct_logit_attribution(mlp_model, ["ab cd", "xyz"], 3)  # each read at its own last token
    alone = direct_logit_attribution(mlp_model, ["xyz"], 3)
    torch.testing.assert_close(strings.attributions[:, 1], alone.attributions[:, 0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        _, partial = mlp_model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_z"))
    with pytest.raises(LensworksError, match="lacks"):
        direct_logit_attribution(mlp_model, partial, 3)


def test_refusals(attn_model):
    toks = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(LensworksError, match="answer_tokens"):
        direct_logit_attribution(attn_model, toks, attn_model.cfg.d_vocab_out)
    with pytest.raises(LensworksError, match="one per prompt"):
        direct_logit_attribution(attn_model, toks, [1, 2])
    with pytest.raises(LensworksError, match="wrong_tokens"):
        direct_logit_attribution(attn_model, toks, 1, wrong_tokens=-1)
    with pytest.raises(LensworksError, match="position"):
        direct_logit_attribution(attn_model, toks, 1, position=2.5)
    with pytest.raises(LensworksError, match="answer_tokens"):
        direct_logit_attribution(attn_model, toks, None)
    for bad in (dict(batch_size=0), dict(position=10**12), dict(position=float("inf"))):
        with pytest.raises(LensworksError):
            direct_logit_attribution(attn_model, toks, 1, **bad)
    with torch.no_grad():
        _, cache = attn_model.run_with_cache(toks)
    as_dict = {k: v.clone() for k, v in cache.items()}
    torch.testing.assert_close(direct_logit_attribution(attn_model, as_dict, 1).attributions,
                               direct_logit_attribution(attn_model, toks, 1).attributions)
    as_dict["blocks.1.attn.hook_z"][0, 2, 1, 0] = float("nan")
    with pytest.raises(LensworksError, match="hook_z"):
        direct_logit_attribution(attn_model, as_dict, 1)


def test_result_contract(attn_model):
    dla = direct_logit_attribution(attn_model, torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]]), 5, wrong_tokens=6)
    assert isinstance(dla, DirectLogitAttribution)
    assert dla.mlp_attributions().shape == (attn_model.cfg.n_layers,)
    assert dla.to_dict()["labels"][0] == "embed"
    assert "tensor(" not in repr(dla) and "DirectLogitAttribution" in repr(dla)
    assert normalization_type(attn_model) is not None or "final norm bias" not in dla.labels
