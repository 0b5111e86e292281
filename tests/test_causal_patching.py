"""Activation and attribution patching (issue 24, items 1 and 2): TransformerLens 3's get_act_patch_*
functions, a naive one-site-at-a-time loop with hooks on every architecture, planted cases."""

from __future__ import annotations

import pytest
import torch

from archs import ARCHS, arch_model, float_tol, refusal
from helpers import tiny_model
from lensworks.causal import ActivationPatching, AttributionPatching, activation_patching, attribution_patching
from lensworks.causal.patching import PATCH_TARGETS, build_sites
from lensworks.model import TL_MAJOR, LensworksError, hook_name, processing_state

N_POS = 6


def _pair(model, seed=0, n=2, pos=N_POS, differ=(2,)):
    """Clean prompts and corrupted ones that differ at the positions ``differ``."""
    g = torch.Generator().manual_seed(seed)
    lo = 1 if model.cfg.d_vocab < 100 else 10
    clean = torch.randint(lo, model.cfg.d_vocab, (n, pos), generator=g)
    corrupted = clean.clone()
    for p in differ:
        corrupted[:, p] = (clean[:, p] + 1 + torch.randint(0, 5, (n,), generator=g) - lo) % (model.cfg.d_vocab - lo) + lo
    return clean, corrupted


def _answers(model):
    return dict(answer_tokens=[3, 4], wrong_tokens=[5, 6])


def _logit_diff(answer, wrong):
    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return (logits[rows, -1, torch.tensor(answer)] - logits[rows, -1, torch.tensor(wrong)]).mean()
    return metric


def _naive(model, base, cache, target, layer, sl, metric):
    """One forward pass with one site patched, as TransformerLens's loop does it."""
    name = hook_name(PATCH_TARGETS[target][0], layer)
    src = cache[name]

    def patch(act, hook):
        act = act.clone()
        act[(slice(None),) + sl] = src[(slice(None),) + sl]
        return act

    with torch.inference_mode():
        return float(metric(model.run_with_hooks(base, fwd_hooks=[(name, patch)])))


# --------------------------------------------------------------------------- TransformerLens 3


@pytest.mark.skipif(TL_MAJOR >= 4, reason="TransformerLens 4 has no transformer_lens.patching module")
@pytest.mark.parametrize("arch", ["attn-only", "ln-mlp"])
def test_equals_transformer_lens_get_act_patch(arch):
    from transformer_lens import patching

    model = arch_model(arch)
    clean, corrupted = _pair(model, pos=4)
    metric = _logit_diff([3, 4], [5, 6])
    _, corrupted_cache = model.run_with_cache(corrupted)
    cases = [("resid_pre", None, patching.get_act_patch_resid_pre),
             ("head_z", None, patching.get_act_patch_attn_head_out_all_pos),
             ("head_pattern", None, patching.get_act_patch_attn_head_pattern_all_pos)]
    if arch == "attn-only":  # the per-position sweeps (TransformerLens's loop is slow: one model, not two)
        cases += [("attn_out", None, patching.get_act_patch_attn_out),
                  ("head_z", "each", patching.get_act_patch_attn_head_out_by_pos)]
    else:
        cases.append(("mlp_out", None, patching.get_act_patch_mlp_out))
    ours_named = activation_patching(model, clean, corrupted, "logit_diff", what=("resid_pre", "head_z"), **_answers(model))
    for target, positions, tl_fn in cases:
        ref = tl_fn(model, clean, corrupted_cache, metric).cpu()
        ours = activation_patching(model, clean, corrupted, metric, what=target, positions=positions, batch_size=5)
        torch.testing.assert_close(ours[target], ref, atol=1e-5, rtol=1e-5, msg=f"{target} {positions}")
        if positions is None and target in ours_named.scores:
            torch.testing.assert_close(ours_named[target], ref, atol=1e-5, rtol=1e-5)
    if arch != "attn-only":
        return
    # head pattern per query position: TransformerLens's [layer, head, dest_pos] is ours [layer, pos, head]
    ref = patching.get_act_patch_attn_head_pattern_by_pos(model, clean, corrupted_cache, metric).cpu()
    ours = activation_patching(model, clean, corrupted, metric, what="head_pattern", positions="each")
    torch.testing.assert_close(ours["head_pattern"], ref.permute(0, 2, 1), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_sweep_equals_naive_loop_and_planted_cases(arch):
    model = arch_model(arch)
    clean, corrupted = _pair(model)
    metric = _logit_diff([3, 4], [5, 6])
    tol = float_tol(model, 1e-5)
    chunks = 7 if arch == "attn-only" else 64  # chunks that cut across layers, on one entry
    res = activation_patching(model, clean, corrupted, metric, batch_size=chunks)
    heads = ("head_z", "head_pattern")
    if refusal(arch, "head_pattern"):  # asked for explicitly: refused; by default: left out
        with pytest.raises(LensworksError, match=refusal(arch, "head_pattern")):
            activation_patching(model, clean, corrupted, metric, what=heads)
        with pytest.raises(LensworksError, match=refusal(arch, "head_pattern")):
            attribution_patching(model, clean, corrupted, metric, what="head_pattern")
        assert "head_pattern" not in res.scores
        heads = ("head_z",)
    res_each = activation_patching(model, clean, corrupted, metric, what=heads, positions="each", batch_size=chunks)
    _, cache = model.run_with_cache(corrupted)
    assert res.processing == processing_state(model)
    with torch.inference_mode():
        clean_value = float(metric(model(clean)))
        corrupted_value = float(metric(model(corrupted)))
    assert res.clean_metric == pytest.approx(clean_value, abs=tol)
    assert res.corrupted_metric == pytest.approx(corrupted_value, abs=tol)
    g = torch.Generator().manual_seed(1)
    for result in (res, res_each):
        for target, scores in result.scores.items():
            sites = build_sites(model, target, N_POS, "each" if scores.ndim == 3 else None)
            for i in torch.randperm(len(sites.hooks), generator=g)[:2].tolist():
                naive = _naive(model, clean, cache, target, sites.layers[i], sites.slices[i], metric)
                assert float(scores[sites.cells[i]]) == pytest.approx(naive, abs=tol, rel=tol), (target, sites.cells[i])
    # planted: the prompts differ only at position 2, so layer 0's residual there is all the difference
    assert float(res["resid_pre"][0, 2]) == pytest.approx(res.corrupted_metric, abs=tol)
    others = torch.cat([res["resid_pre"][0, :2], res["resid_pre"][0, 3:]])
    torch.testing.assert_close(others, torch.full_like(others, res.clean_metric), atol=tol, rtol=0)
    same = activation_patching(model, clean, clean, metric, what=("resid_pre", "head_z"))
    for scores in same.scores.values():
        torch.testing.assert_close(scores, torch.full_like(scores, same.clean_metric), atol=tol, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_tracks_the_exact_sweep(arch):
    model = arch_model(arch)
    clean, corrupted = _pair(model, differ=(2, 4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    exact = activation_patching(model, clean, corrupted, "logit_diff", **_answers(model))
    approx = attribution_patching(model, clean, corrupted, "logit_diff", exact=exact, **_answers(model))
    assert set(approx.scores) == set(exact.scores)
    for target in exact.scores:
        assert approx[target].shape == exact[target].shape
        assert -1.0 <= approx.correlation[target] <= 1.0 or approx.correlation[target] != approx.correlation[target]
    assert approx.clean_metric == pytest.approx(exact.clean_metric, abs=float_tol(model, 1e-4))
    # sites the patch cannot reach (positions where the prompts agree, layer 0) are estimated exactly
    torch.testing.assert_close(approx["resid_pre"][0, :2], exact["resid_pre"][0, :2],
                               atol=float_tol(model, 1e-4), rtol=0)
    # the model is unchanged, its parameters carry no gradient
    for n, p in model.named_parameters():
        assert p.grad is None and torch.equal(p.detach(), before[n]), n


# --------------------------------------------------------------------------- planted and contract


def test_attribution_is_exact_where_the_metric_is_linear():
    """No final norm: the logit difference is linear in the last layer's head outputs and attn_out."""
    model = tiny_model(seed=5, normalization_type=None)
    clean, corrupted = _pair(model, differ=(1, 3))
    last = model.cfg.n_layers - 1
    for positions in (None, "each"):
        exact = activation_patching(model, clean, corrupted, "logit_diff", what=("head_z", "attn_out"),
                                    positions=positions, **_answers(model))
        approx = attribution_patching(model, clean, corrupted, "logit_diff", what=("head_z", "attn_out"),
                                      positions=positions, exact=exact, **_answers(model))
        for target in ("head_z", "attn_out"):
            torch.testing.assert_close(approx[target][last], exact[target][last], atol=1e-4, rtol=1e-4)


def test_metrics_by_name_and_denoising(attn_model):
    clean, corrupted = _pair(attn_model)
    rows = torch.arange(2)
    prob = activation_patching(attn_model, clean, corrupted, "prob", answer_tokens=[3, 4], what="resid_pre")
    with torch.inference_mode():
        p_clean = attn_model(clean)[rows, -1].softmax(-1)[rows, torch.tensor([3, 4])].mean()
        loss_clean = attn_model(clean, return_type="loss")
    assert prob.clean_metric == pytest.approx(float(p_clean), abs=1e-6)
    loss = activation_patching(attn_model, clean, corrupted, "loss", what="resid_pre")
    assert loss.clean_metric == pytest.approx(float(loss_clean), abs=1e-5)
    custom = activation_patching(attn_model, clean, corrupted, lambda logits: logits[:, -1, 3], what="resid_pre")
    with torch.inference_mode():
        assert custom.clean_metric == pytest.approx(float(attn_model(clean)[:, -1, 3].mean()), abs=1e-5)
    noise = activation_patching(attn_model, clean, corrupted, "logit_diff", what="resid_pre", **_answers(attn_model))
    denoise = activation_patching(attn_model, clean, corrupted, "logit_diff", what="resid_pre", direction="denoise",
                                  **_answers(attn_model))
    assert float(denoise["resid_pre"][0, 2]) == pytest.approx(denoise.clean_metric, abs=1e-5)
    assert float(noise.normalised("resid_pre")[0, 2]) == pytest.approx(0.0, abs=1e-5)
    assert float(denoise.normalised("resid_pre")[0, 2]) == pytest.approx(1.0, abs=1e-5)
    sub = activation_patching(attn_model, clean, corrupted, "logit_diff", what=("resid_pre", "head_z"), positions=[2, -1],
                              **_answers(attn_model))
    torch.testing.assert_close(sub["resid_pre"], noise["resid_pre"][:, [2, N_POS - 1]], atol=1e-6, rtol=0)
    assert sub["head_z"].shape == (2, 2, 4)


def test_results_follow_the_contract(attn_model):
    clean, corrupted = _pair(attn_model)
    exact = activation_patching(attn_model, clean, corrupted, "logit_diff", **_answers(attn_model))
    approx = attribution_patching(attn_model, clean, corrupted, "logit_diff", exact=exact, **_answers(attn_model))
    with torch.inference_mode():  # the gradient is taken all the same
        again = attribution_patching(attn_model, clean, corrupted, "logit_diff", **_answers(attn_model))
    torch.testing.assert_close(again["head_z"], approx["head_z"])
    for res, cls in ((exact, ActivationPatching), (approx, AttributionPatching)):
        assert isinstance(res, cls)
        frame = res.to_frame()
        assert len(frame) == sum(v.numel() for v in res.scores.values())
        assert list(frame.columns) == ["target", "layer", "position", "head", "metric", "normalised"]
        assert res.figure().data and isinstance(res.caption(), str) and res.headline().startswith("Patching")
        assert "tensor(" not in repr(res) and len(repr(res)) < 400
        assert "<table" in res._repr_html_()
        assert res.to_dict()["metric"] == "logit_diff"
    assert "Correlation with the exact sweep" in approx.caption()


def test_refusals(attn_model):
    clean, corrupted = _pair(attn_model)
    with pytest.raises(LensworksError, match="line up"):
        activation_patching(attn_model, clean, corrupted[:, :-1], "loss")
    with pytest.raises(LensworksError, match="metric must be one of"):
        activation_patching(attn_model, clean, corrupted, "accuracy")
    with pytest.raises(LensworksError, match="needs answer_tokens"):
        activation_patching(attn_model, clean, corrupted, "logit_diff")
    with pytest.raises(LensworksError, match="no mlp_out"):
        activation_patching(attn_model, clean, corrupted, "loss", what="mlp_out")
    with pytest.raises(LensworksError, match="what"):
        activation_patching(attn_model, clean, corrupted, "loss", what="resid_post")
    with pytest.raises(LensworksError, match="batch_size"):
        activation_patching(attn_model, clean, corrupted, "loss", batch_size=0)
    with pytest.raises(LensworksError, match="direction"):
        attribution_patching(attn_model, clean, corrupted, "loss", direction="sideways")
    with pytest.raises(LensworksError, match="answer_tokens"):
        activation_patching(attn_model, clean, corrupted, "prob", answer_tokens=[1, 2, 3])


def test_strings_of_different_lengths(mlp_model):
    """Strings are encoded one by one and right-padded; each prompt is read at its own last token."""
    clean, corrupted = ["abcab", "xyzxyzx"], ["abdab", "xyqxyzx"]
    res = activation_patching(mlp_model, clean, corrupted, "prob", answer_tokens=[3, 5], what=("resid_pre", "head_z"))
    rows = []
    with torch.inference_mode():
        for text, answer in zip(clean, [3, 5]):
            toks = torch.tensor([[0] + [mlp_model.tokenizer.convert_tokens_to_ids(c) for c in text]])
            rows.append(float(mlp_model(toks)[0, -1].softmax(-1)[answer]))
    assert res.clean_metric == pytest.approx(sum(rows) / 2, abs=1e-5)
    assert res["resid_pre"].shape == (3, 8) and res.tokens[0] == "<bos>"
    with pytest.raises(LensworksError, match="line up"):
        activation_patching(mlp_model, ["abc"], ["abcd"], "loss")


@pytest.mark.parametrize("bad", [dict(batch_size=2.5), dict(batch_size=True), dict(position=10**9),
                                 dict(position=float("nan")), dict(positions=[100]), dict(positions=[]),
                                 dict(positions="all"), dict(answer_tokens=10**6), dict(answer_tokens=1.5)])
def test_hostile_arguments_are_refused_by_name(attn_model, bad):
    clean, corrupted = _pair(attn_model)
    args = dict(answer_tokens=3, wrong_tokens=5)
    args.update(bad)
    with pytest.raises(LensworksError):
        activation_patching(attn_model, clean, corrupted, "logit_diff", what="head_z", **args)
    if "batch_size" not in bad:
        with pytest.raises(LensworksError):
            attribution_patching(attn_model, clean, corrupted, "logit_diff", what="head_z", **args)
