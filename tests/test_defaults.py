"""Defaults that depend on the model come from its facts, the same on both TransformerLens lines,
and the result says what was chosen."""

from __future__ import annotations

import math

import pytest
import torch

import crossline
from archs import ARCHS, BRIDGE_ONLY_ARCHS, arch_model, float_tol, refusal
from lensworks.geometry import NeighbourApproximation, residual_stats
from lensworks.model import TL_MAJOR, LensworksError, model_facts

#: Set by .ci/run: the TransformerLens 3 run writes the default calls' numbers there, the 4 run
#: compares its own (see tests/test_tl_lines.py).
DUMP = crossline.DUMP
#: Numbers that come from a freshly initialised model (random-model controls) or a sampled
#: optimisation differ by line by design: each line initialises weights its own way.
LINE_SPECIFIC_COLUMNS = ("random", "control", "shuffled")
#: Numbers fit by an iterative solver amplify the ~1e-6 differences between the lines' activations:
#: the probes' held-out cross-entropy agrees to about 0.2% (accuracies exactly).
ITERATIVE_TOL = {("probe_inputs", "cross_entropy"): 1e-2}

TEXTS = ["the cat sat on the mat.\nthe dog ran", "a bird flew over\nthe tree", "one two three\nfour five",
         "six seven\neight nine"]
CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 30


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_stats_default_streams_are_the_models_own(arch):
    model = arch_model(arch)
    stats = residual_stats(model, {"a": TEXTS[:2], "b": TEXTS[2:]}, progress=False)
    facts = model_facts(model)
    want = tuple(s for s in ("resid_pre", "resid_mid", "resid_post") if facts.has_stream(s))
    assert stats.streams == want
    assert ("resid_mid" in stats.streams) == (not facts.attn_only and not facts.parallel_attn_mlp)


@pytest.mark.parametrize("arch", ["neox", "attn-only"])
def test_a_stream_the_model_lacks_is_refused_on_both_lines(arch):
    with pytest.raises(LensworksError, match="stream 'resid_mid' does not exist in this model"):
        residual_stats(arch_model(arch), {"a": TEXTS}, streams=("resid_pre", "resid_mid"), progress=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_neighbour_default_hook_follows_the_model(arch):
    model = arch_model(arch)
    approx = NeighbourApproximation(window=4).fit(model, CORPUS, progress=False)
    want = "attn_out" if model_facts(model).attn_only else "mlp_out"
    assert approx.hook is None and approx.hook_ == want
    ev = approx.evaluate(TEXTS, progress=False)
    assert ev.hook == want and ev.caption()


def _default_calls():
    from lensworks import circuits as C
    from lensworks import geometry as G
    from lensworks import probes as P
    from lensworks.plotting import attention_explorer

    return {
        "composition_scores": lambda m: C.composition_scores(m, "K"),
        "copying_scores": lambda m: C.copying_scores(m),
        "head_scores": lambda m: C.head_scores(m, "induction"),
        "find_induction_heads": lambda m: C.find_induction_heads(m),
        "repeated_tokens": lambda m: C.repeated_tokens(m),
        "skip_trigrams": lambda m: C.skip_trigrams(m, 0, 0),
        "circuit_graph": lambda m: C.circuit_graph(m),
        "term_importance": lambda m: C.term_importance(m, TEXTS),
        "residual_stats": lambda m: G.residual_stats(m, {"a": TEXTS[:2], "b": TEXTS[2:]}),
        "effective_dimensionality": lambda m: G.effective_dimensionality(m, TEXTS),
        "update_alignment": lambda m: G.update_alignment(m, TEXTS),
        "block_ablation": lambda m: G.block_ablation(m, TEXTS),
        "block_decomposition": lambda m: G.block_decomposition(m, TEXTS),
        "logit_lens": lambda m: G.logit_lens(m, TEXTS),
        "NeighbourApproximation": lambda m: G.NeighbourApproximation().fit(m, CORPUS).evaluate(TEXTS),
        # tokens=None means every vocabulary token x 100 samples x 500 steps: minutes per model, so two
        # tokens here; every other argument at its default
        "token_subspaces": lambda m: G.token_subspaces(m, tokens=[1, 2]),
        "probe_inputs": lambda m: P.probe_inputs(m, TEXTS),
        "embedding_basis": lambda m: P.embedding_basis(m, "pca"),
        "unlikely_token_usage": lambda m: P.unlikely_token_usage(m, TEXTS),
        "attention_explorer": lambda m: attention_explorer(m, TEXTS),
    }


def _numbers(result) -> dict[str, list]:
    """The numeric columns of ``result.to_frame()`` (NaN as None), for the cross-line check."""
    frame = result.to_frame() if hasattr(result, "to_frame") else None
    if frame is None:
        return {}
    out = {}
    for col in frame.columns:
        if any(w in str(col).lower() for w in LINE_SPECIFIC_COLUMNS):
            continue
        if frame[col].dtype.kind in "fiub":
            out[str(col)] = [None if isinstance(v, float) and not math.isfinite(v) else float(v) for v in frame[col]]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_every_public_analysis_runs_with_only_its_required_arguments(arch):
    """Only what each function requires (the model, data, a mode or a head); every result method
    answers. Catches defaults that exist on one family or one TransformerLens line only. With
    LENSWORKS_CROSS_LINE set, both lines must give the same numbers for every default call."""
    import warnings

    model = arch_model(arch)
    numbers = {}
    for name, call in _default_calls().items():
        if refusal(arch, name):  # not defined on this family: a clear refusal, not a number
            with pytest.raises(LensworksError, match=refusal(arch, name)):
                call(model)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call(model)
        for method in ("figure", "to_frame", "caption", "headline"):
            if hasattr(result, method):
                getattr(result, method)()
        assert result is not None, name
        if name != "repeated_tokens":
            numbers[name] = _numbers(result)
    if not DUMP or arch in BRIDGE_ONLY_ARCHS:  # read by TransformerLens 4 only: nothing to compare with
        return
    key = f"defaults/{arch}"
    if TL_MAJOR < 4:
        crossline.store(key, numbers)
        return
    ref = crossline.load(key)
    tol = float_tol(model, 1e-4)
    for name, cols in numbers.items():
        assert set(cols) == set(ref[name]), (name, sorted(cols), sorted(ref[name]))
        for col, values in cols.items():
            a = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
            b = torch.tensor([math.nan if v is None else v for v in ref[name][col]], dtype=torch.float64)
            t = max(tol, ITERATIVE_TOL.get((name, col), 0.0))
            torch.testing.assert_close(a, b, atol=t, rtol=t, equal_nan=True, msg=f"{arch} {name} {col}")


def test_token_subspaces_default_is_affordable_and_says_what_it_chose():
    """tokens=None used to mean the whole vocabulary x 100 samples x 500 steps (hours on a real
    model); it now picks at most 64 tokens and stops when the optimisation stalls, and says so."""
    from lensworks.geometry import token_subspaces

    model = arch_model("char-nl")  # 96 tokens, none special
    res = token_subspaces(model, progress=False)
    assert res.tokens.numel() == 64 and "64 of the vocabulary's 96 tokens" in res.token_choice
    assert res.tokens.unique().numel() == 64 and int(res.tokens.min()) == 0 and int(res.tokens.max()) == 95
    assert res.stopped in ("target reached", "stalled") and res.steps_run < 500
    small = arch_model("attn-only")  # 41 tokens, <bos> special
    ids = token_subspaces(small, steps=3, progress=False)
    assert ids.tokens.numel() == 40 and 0 not in ids.tokens.tolist() and ids.stopped == "steps ran out"
    assert "every token" in ids.token_choice
    assert token_subspaces(small, tokens=[3], steps=2, progress=False).token_choice == "given"
