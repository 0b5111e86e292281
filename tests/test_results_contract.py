"""Every public analysis result follows one contract (issue 11): a frozen dataclass on
``lensworks._results.Result`` with ``processing``, ``figure()``, ``to_frame()``, ``caption()``,
``headline()`` and ``to_dict()``; the report asks results, it never looks at type names."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

import lensworks
from lensworks import causal, circuits, geometry, probes
from lensworks._results import Result

AREAS = (circuits, geometry, probes, causal)


def _public_results():
    out = {}
    for area in AREAS:
        for name in area.__all__:
            obj = getattr(area, name)
            if inspect.isclass(obj) and issubclass(obj, Result):
                out[name] = obj
    return out


RESULTS = _public_results()


def test_every_exported_result_class_is_on_the_base():
    """Every dataclass an area exports with figure()/to_frame() is a Result (none left on the side)."""
    for area in AREAS:
        for name in area.__all__:
            obj = getattr(area, name)
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and hasattr(obj, "to_dict"):
                assert issubclass(obj, Result), f"{area.__name__}.{name} is a result outside the contract"
    assert len(RESULTS) >= 18


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_result_class_implements_the_contract(name):
    cls = RESULTS[name]
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{name} is not a frozen dataclass"
    assert "processing" in {f.name for f in dataclasses.fields(cls)}, f"{name} has no processing field"
    for method in ("figure", "to_frame", "caption"):
        assert getattr(cls, method) is not getattr(Result, method), f"{name} does not implement {method}()"


def test_report_does_not_dispatch_on_type_names():
    source = Path(inspect.getsourcefile(lensworks)).parent
    files = [source / "report.py"] if (source / "report.py").is_file() else sorted((source / "report").glob("*.py"))
    for f in files:
        text = f.read_text()
        for cls in RESULTS:
            assert not re.search(rf"['\"]{cls}['\"]", text), f"{f.name} names the result type {cls}"


def _instances(model, text):
    from lensworks.model import text_windows

    w = text_windows(model, text, width=24)[:6]
    subs = geometry.token_subspaces(model, tokens=[1, 2], n_samples=3, steps=5, progress=False)
    approx = geometry.NeighbourApproximation.fit(model, text[:3000], window=3, progress=False)
    pred = approx.predict(w[:2])
    yield circuits.copying_scores(model)
    yield circuits.head_scores(model, "previous_token", seq_len=8, n_seqs=2)
    yield circuits.composition_scores(model, "K", progress=False)
    yield circuits.find_induction_heads(model, seq_len=8, n_seqs=2)
    yield circuits.skip_trigrams(model, 1, 0, k=5)
    yield circuits.circuit_graph(model, modes=("K",), baseline_samples=20)
    yield circuits.term_importance(model, w[:2], max_order=1)
    yield circuits.attention_patterns(model, w[:2], max_tokens=8, heads=[(0, 0), (1, 1)])
    yield geometry.residual_stats(model, {"a": w[:3], "b": w[3:]}, progress=False)
    yield geometry.update_alignment(model, w, progress=False)
    yield geometry.block_ablation(model, w, progress=False)
    yield geometry.block_decomposition(model, w, progress=False)
    yield geometry.logit_lens(model, w, progress=False)
    yield geometry.effective_dimensionality(model, w, progress=False)
    yield subs
    yield geometry.alignment(subs, subs.basis[:, 0])
    yield pred
    yield approx.evaluate(w[:2])
    yield approx.similar(w[:1])
    yield approx.tune(w[:3], threshold_grid=(0.5, 0.9), weight_grid=(1.0,), rounds=1, progress=False)
    res = probes.probe_inputs(model, w, progress=False)
    yield res
    yield probes.compare_to_embedding(model, res.weights(res.layers[-1], res.streams[-1], res.offsets[0]),
                                      tokens=res.classes, n_random=5)
    yield probes.embedding_basis(model, "pca", k=4)
    yield probes.unlikely_token_usage(model, w, progress=False)
    pair = causal.induction_pair(model, seq_len=4, n_seqs=2)
    args = dict(answer_tokens=pair.answer, wrong_tokens=pair.wrong)
    exact = causal.activation_patching(model, pair.clean, pair.corrupted, "logit_diff", **args)
    yield exact
    yield causal.attribution_patching(model, pair.clean, pair.corrupted, "logit_diff", exact=exact, **args)
    yield causal.direct_logit_attribution(model, pair.clean, pair.answer, wrong_tokens=pair.wrong)
    yield causal.path_patching(model, pair.clean, pair.corrupted, "each", "logits", "logit_diff", **args)


def test_every_result_answers_the_contract(mlp_model):
    text = "the cat sat on the mat. the dog sat on the log.\n" * 60
    seen = set()
    for res in _instances(mlp_model, text):
        name = type(res).__name__
        seen.add(name)
        assert isinstance(res, Result), name
        assert isinstance(res.processing, dict) and res.processing, f"{name}.processing is empty"
        assert isinstance(res.figure(), go.Figure), name
        assert isinstance(res.to_frame(), pd.DataFrame), name
        caption = res.caption()
        assert isinstance(caption, str) and len(caption) > 30 and "\n" not in caption, name
        headline = res.headline()
        assert headline is None or (isinstance(headline, str) and headline.endswith(".")), (name, headline)
        json.dumps(res.to_dict())
    assert set(RESULTS) - {"HeadScores"} <= seen, set(RESULTS) - seen
