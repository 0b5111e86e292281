"""Defaults that depend on the model come from its facts, the same on both TransformerLens lines,
and the result says what was chosen."""

from __future__ import annotations

import pytest

from archs import ARCHS, arch_model
from lensworks.geometry import NeighbourApproximation, residual_stats
from lensworks.model import LensworksError, model_facts

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
