"""One ``Reference`` value for every baseline, null, chance level and control (issue 22, item 5),
and a ``processing`` record that is checked when a result is built."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import warnings

import plotly.graph_objects as go
import pytest
import torch

import lensworks
from lensworks import circuits, geometry, probes
from lensworks._results import OPTIONAL_PROCESSING_KEYS, PROCESSING_KEYS, REFERENCE_KINDS, Reference, Result, check_processing
from lensworks.circuits.composition import Baseline, random_composition_baseline
from lensworks.model import LensworksError, NonFiniteError, model_facts, processing_state
from lensworks.plotting import add_reference, reference_title

# ------------------------------------------------------------------ the value itself


def test_exact_level():
    ref = Reference.exact(0.125)
    assert (ref.mean, ref.std, ref.lo, ref.hi, ref.n, ref.kind) == (0.125, 0.0, 0.125, 0.125, 0, "chance")
    assert ref.describe() == "chance 0.125" == str(ref)
    assert ref.describe(".0%") == "chance 12%"
    assert ref.compare(0.2) == "above" and ref.compare(0.1) == "below" and ref.compare(0.125) == "within"
    assert float(ref) == 0.125 and ref.excess(0.5) == pytest.approx(0.375)
    with pytest.raises(LensworksError, match="no z-score"):
        Reference(mean=0.1, kind="baseline").z(0.5)


def test_from_samples_matches_a_direct_computation():
    draws = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 2 + 3
    ref = Reference.from_samples(draws, kind="baseline", label="random", interval=0.9)
    x = draws.double()
    assert ref.mean == pytest.approx(float(x.mean()))
    assert ref.std == pytest.approx(float(x.std()))  # unbiased, as torch's default
    assert ref.lo == pytest.approx(float(torch.quantile(x, 0.05)))
    assert ref.hi == pytest.approx(float(torch.quantile(x, 0.95)))
    assert ref.n == 500 and ref.is_scalar and ref.has_spread and ref.has_interval
    assert ref.z(ref.mean + 2 * ref.std) == pytest.approx(2.0)
    assert ref.describe() == f"random {ref.mean:.3f} ± {ref.std:.3f}, n=500"
    one = Reference.from_samples(torch.tensor([0.5]))
    assert one.std == 0.0 and one.n == 1 and one.kind == "null"


def test_tensor_reference_one_entry_each():
    draws = torch.arange(24.0).reshape(6, 4)  # 6 draws of a 4-entry statistic
    ref = Reference.from_samples(draws, label="random sets", interval=0.5)
    assert not ref.is_scalar and ref.mean.shape == (4,) and ref.n == 6
    torch.testing.assert_close(ref.mean, draws.mean(0))
    one = ref.at(2)
    assert one.is_scalar and one.mean == pytest.approx(12.0) and one.n == 6 and one.label == "random sets"
    torch.testing.assert_close(ref.z(draws.mean(0)), torch.zeros(4))
    assert ref.describe(".1f") == "random sets 10.0 to 13.0 over 4 entries, n=6"
    with pytest.raises(LensworksError, match="scalar reference"):
        ref.compare(1.0)
    with pytest.raises(LensworksError, match="not one float"):
        float(ref)
    spread = Reference(mean=torch.zeros(3), std=0.5, kind="control")  # scalars broadcast to mean's shape
    assert spread.std.shape == (3,) and not spread.has_interval


def test_describe_forms():
    assert Reference(mean=0.5, lo=0.4, hi=0.7, n=20, kind="null").describe(".2f") == "null 0.50 [0.40, 0.70], n=20"
    assert Reference(mean=0.5, n=7, kind="baseline", label="prompt-blind").describe() == "prompt-blind 0.500, n=7"
    assert Reference(mean=0.5, kind="control").describe() == "control 0.500"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mean=0.1, kind="random"), LensworksError, "kind must be one of"),
    (dict(mean=float("nan")), NonFiniteError, "finite"),
    (dict(mean=0.1, std=-1.0), LensworksError, "non-negative"),
    (dict(mean=0.1, lo=0.3, hi=0.2), LensworksError, "must not exceed"),
    (dict(mean=0.1, lo=0.0), LensworksError, "together"),
    (dict(mean=0.1, n=-1), LensworksError, "non-negative int"),
    (dict(mean=0.1, n=2.0), LensworksError, "non-negative int"),
    (dict(mean="0.1"), LensworksError, "must be a float"),
    (dict(mean=torch.zeros(3), lo=torch.zeros(2), hi=torch.zeros(2)), LensworksError, "shape"),
    (dict(mean=0.1, std=torch.zeros(2)), LensworksError, "must be a float when mean"),
])
def test_bad_references_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        Reference(**kwargs)


def test_kinds():
    assert REFERENCE_KINDS == ("baseline", "null", "chance", "control")
    for kind in REFERENCE_KINDS:
        assert Reference(mean=0.0, kind=kind).kind == kind


def test_reference_is_frozen_and_json_ready():
    ref = Reference.from_samples(torch.rand(10, generator=torch.Generator().manual_seed(1)), label="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.mean = 1.0  # type: ignore[misc]
    d = ref.to_dict()
    assert set(d) == {"mean", "std", "lo", "hi", "n", "kind", "label"} and d["n"] == 10
    assert Reference(mean=0.2).to_dict()["std"] is None  # NaN (not known) becomes null


def test_composition_baseline_is_a_reference():
    b = random_composition_baseline(64, 8, "K", n_samples=50, seed=3)
    assert isinstance(b, Reference) and isinstance(b, Baseline)
    assert b.kind == "baseline" and b.label == "random factors" and b.n == b.n_samples == 50 and b.seed == 3
    assert b.lo <= b.mean <= b.hi and b.std > 0
    old = Baseline(mean=0.1, std=0.01, n_samples=20, seed=1)  # the old keyword constructor
    assert old.n == 20 and old.n_samples == 20 and old.describe() == "random factors 0.100 ± 0.010, n=20"
    assert dataclasses.replace(old, seed=2).seed == 2


# ------------------------------------------------------------------ processing


def test_processing_keys_are_what_processing_state_returns(attn_model, mlp_model, gqa_model):
    for model in (attn_model, mlp_model, gqa_model):
        assert set(processing_state(model)) == PROCESSING_KEYS | OPTIONAL_PROCESSING_KEYS
        assert processing_state(model)["model"] == model_facts(model).identity


def test_check_processing():
    good = {k: None for k in PROCESSING_KEYS}
    assert check_processing(good) is good
    with pytest.raises(LensworksError, match="missing keys \\['architecture'\\]"):
        check_processing({k: None for k in PROCESSING_KEYS - {"architecture"}})
    with pytest.raises(LensworksError, match="unknown keys \\['extra'\\]"):
        check_processing({**good, "extra": 1})
    with pytest.raises(LensworksError, match="got NoneType"):
        check_processing(None, "X")
    with pytest.warns(DeprecationWarning, match="without processing"):
        check_processing({}, "X")


def _result_classes():
    """Every Result subclass the library defines (imported through its areas)."""
    seen, todo = set(), list(Result.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    return sorted((c for c in seen if c.__module__.startswith("lensworks.")), key=lambda c: c.__qualname__)


def test_every_post_init_chains_to_the_processing_check():
    """A subclass that defines ``__post_init__`` must call ``super().__post_init__()``."""
    classes = _result_classes()
    assert len(classes) >= 18
    for cls in classes:
        own = cls.__dict__.get("__post_init__")
        if own is not None:
            assert "super().__post_init__()" in inspect.getsource(own), f"{cls.__qualname__}.__post_init__ skips the check"


# ------------------------------------------------------------------ every result


@pytest.fixture(scope="module")
def instances(mlp_model):
    from test_results_contract import _instances

    text = "the cat sat on the mat. the dog sat on the log.\n" * 60
    return list(_instances(mlp_model, text))


#: The references each result must carry (built with its analysis' defaults).
EXPECTED = {
    "CompositionScores": {"baseline"},
    "CopyingScores": {"baseline"},
    "BehaviourScores": {"chance"},
    "InductionReport": {"induction.chance", "previous.chance", "copying.baseline", "k_composition.baseline"},
    "ProbeResults": {"chance", "control_random_model", "control_shuffled"},
    "Comparison": {"overlap_embed", "overlap_unembed", "mass_position", "mass", "cosines_embed", "cosines_unembed"},
    "UnlikelyTokenUsage": {"random"},
    "NeighbourEvaluation": {"baseline"},
    "CircuitGraph": {"K_composition"},
}


def test_every_result_reference_is_a_reference(instances):
    seen = set()
    for res in instances:
        name = type(res).__name__
        refs = res.references()
        assert isinstance(refs, dict), name
        for key, ref in refs.items():
            assert isinstance(key, str) and isinstance(ref, Reference), (name, key, type(ref))
            assert ref.kind in REFERENCE_KINDS and isinstance(ref.describe(), str)
        if name in EXPECTED:
            seen.add(name)
            assert EXPECTED[name] <= set(refs), (name, set(refs))
    assert seen == set(EXPECTED), set(EXPECTED) - seen


def test_old_field_names_read_the_references(instances):
    by_name = {}
    for res in instances:
        by_name.setdefault(type(res).__name__, res)
    comp = by_name["CompositionScores"]
    assert comp.baseline.mean == comp.references()["baseline"].mean and comp.baseline.n_samples == 200
    cs = by_name["CopyingScores"]
    assert cs.baseline_mean == pytest.approx(float(cs.baseline.mean)) and cs.baseline_std == pytest.approx(cs.baseline.std)
    assert cs.baseline.n == cs.options["baseline_samples"] and cs.baseline.kind == "baseline"
    beh = by_name["BehaviourScores"]
    assert beh.references()["chance"].mean == beh.chance and 0 < beh.chance < 1
    pr = by_name["ProbeResults"]
    torch.testing.assert_close(pr.references()["chance"].mean, pr.chance.float())
    torch.testing.assert_close(pr.references()["control_shuffled"].mean, pr.control_shuffled.float())
    cmp = by_name["Comparison"]
    refs = cmp.references()
    torch.testing.assert_close(refs["mass"].lo, cmp.mass_null_lo)
    torch.testing.assert_close(refs["cosines_embed"].hi, cmp.cosines_embed_null_hi)
    s = cmp.summary()["overlap_embed"]
    assert (s["null_lo"], s["null_hi"]) == (refs["overlap_embed"].lo, refs["overlap_embed"].hi)
    usage = by_name["UnlikelyTokenUsage"]
    torch.testing.assert_close(usage.references()["random"].mean, usage.random_mean)
    torch.testing.assert_close(usage.references()["random"].hi, usage.random_hi)
    ev = by_name["NeighbourEvaluation"]
    assert ev.references()["baseline"].mean == pytest.approx(ev.baseline_mean)
    graph = by_name["CircuitGraph"]
    assert graph.references()["K_composition"] is graph.baselines["K"] and isinstance(graph.baselines["K"], Baseline)
    assert graph.baselines["K"].describe() in graph.caption() and graph.baselines["K"].describe() in graph.figure().layout.title.text


def test_headlines_and_figures_show_references_the_same_way(instances):
    by_name = {}
    for res in instances:
        by_name.setdefault(type(res).__name__, res)
    comp, cs, beh = by_name["CompositionScores"], by_name["CopyingScores"], by_name["BehaviourScores"]
    for res in (comp, cs, beh):
        ref = next(iter(res.references().values()))
        assert ref.describe() in res.headline(), type(res).__name__
        assert ref.describe() in res.figure().layout.title.text, type(res).__name__
    pr = by_name["ProbeResults"]
    k = pr.offsets.index(0)
    chance = pr.references()["chance"].at(k)
    assert f"({chance.describe('.0%')})" in pr.headline() and f"(chance {float(pr.chance[k]):.0%})" in pr.headline()
    fig = pr.figure()
    assert any(t.name == "offset 0: chance (majority token)" and t.line.dash == "longdashdot" for t in fig.data)
    assert not any(t.name.endswith("chance (majority token): interval") for t in fig.data)  # exact: no band
    shuffled = next(t for t in fig.data if t.name == "offset 0: shuffled-label control")
    assert shuffled.line.dash == "dot" and "layer" in shuffled.text[0]
    assert sorted(shuffled.y) == pytest.approx(sorted(pr.control_shuffled[:, :, k].flatten().tolist()))
    cmp = by_name["Comparison"]
    assert cmp.references()["overlap_embed"].describe() in cmp.headline()
    usage = by_name["UnlikelyTokenUsage"]
    assert usage.references()["random"].at(-1).describe(".1%") in usage.headline()
    fig = usage.figure()
    assert any(t.fill == "toself" for t in fig.data) and any(t.line.dash == "dash" for t in fig.data)
    ev = by_name["NeighbourEvaluation"]
    ref = ev.references()["baseline"]
    assert ref.describe() in ev.headline()
    fig = ev.figure()
    assert any(s.x0 == pytest.approx(ref.mean) for s in fig.layout.shapes)


def test_a_result_built_with_a_bad_processing_is_refused(instances):
    for res in instances:
        name = type(res).__name__
        good = dataclasses.replace(res, processing=dict(res.processing))
        assert good.processing == res.processing
        for bad in ({"fold_ln": True}, {**res.processing, "surprise": 1}, None, "fold_ln", [("fold_ln", True)]):
            with pytest.raises(LensworksError, match="processing"):
                dataclasses.replace(res, processing=bad)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            legacy = dataclasses.replace(res, processing={})
        assert legacy.processing == {} and any(issubclass(w.category, DeprecationWarning) for w in caught), name


# ------------------------------------------------------------------ the plotting helper


def test_add_reference_draws_a_line_and_a_band():
    ref = Reference(mean=0.3, std=0.05, lo=0.2, hi=0.4, n=30, kind="null", label="random")
    fig = add_reference(go.Figure(go.Scatter(x=[0, 1], y=[0.1, 0.9])), ref)
    kinds = sorted(s.type for s in fig.layout.shapes)
    assert kinds == ["line", "rect"] and fig.layout.annotations[0].text == ref.describe()
    rect = next(s for s in fig.layout.shapes if s.type == "rect")
    assert (rect.y0, rect.y1) == (0.2, 0.4)
    per_entry = Reference(mean=torch.tensor([0.1, 0.2, 0.3]), lo=torch.tensor([0.0, 0.1, 0.2]),
                          hi=torch.tensor([0.2, 0.3, 0.4]), n=5, kind="null", label="r")
    fig = add_reference(go.Figure(), per_entry, x=["a", "b", "c"], name="random sets")
    band, line = fig.data
    assert band.fill == "toself" and list(band.y) == pytest.approx([0.2, 0.3, 0.4, 0.2, 0.1, 0.0])
    assert line.line.dash == "dash" and list(line.y) == pytest.approx([0.1, 0.2, 0.3]) and line.name == "random sets"
    with pytest.raises(ValueError, match="positions"):
        add_reference(go.Figure(), per_entry, x=[0, 1])
    with pytest.raises(ValueError, match="hover_text"):
        add_reference(go.Figure(), per_entry, x=["a", "b", "c"], hover_text=["only one"])
    fig = add_reference(go.Figure(), Reference.exact(torch.tensor([0.1, 0.2])), x=[0, 1], hover_text=["a", "b"])
    assert len(fig.data) == 1 and list(fig.data[0].text) == ["a", "b"]  # an exact level: the line, no band
    assert reference_title("t", [Reference.exact(0.5), ref]) == f"t (chance 0.500; {ref.describe()})"
    assert reference_title("t", []) == "t"


def test_reference_is_documented_in_the_architecture_page():
    from pathlib import Path

    page = (Path(inspect.getsourcefile(lensworks)).parent.parent / "docs" / "architecture.md").read_text()
    assert re.search(r"`references\(\)`", page) and "Reference" in page
