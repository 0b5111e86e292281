"""Every public analysis, every numeric argument, hostile values: each call returns a result whose
numbers are finite, or raises LensworksError. Never another exception, never a silent NaN.

Values come from hypothesis: integers (negative, zero, huge), floats (NaN, inf, negative,
non-integer), bools, numeric strings, and empty sequences where a sequence is expected. Two
architectures: the attention-only entry and the nanoGPT character entry (LayerNorm + MLP, '\\n'
as token 0). Runs on both TransformerLens lines.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archs import arch_model
from lensworks import LensworksError
from lensworks import causal as X
from lensworks import circuits as C
from lensworks import geometry as G
from lensworks import probes as P
from lensworks.plotting import attention_explorer

ARCHS = ("attn-only", "char-nl")
TEXTS = ["the cat sat on the mat.\nthe dog ran", "a bird flew over\nthe tree and sang", "one two three\nfour five six",
         "seven eight nine ten.\neleven", "the end of the line\nis here now"]
CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 40

#: What a numeric argument may be given by a user who makes mistakes.
HOSTILE = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.sampled_from([-10**9, 0, 1, 2]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2.5, -0.5, 0.5, 1e-12, True, False, "3", None]),
)
#: Arguments where a huge value costs nothing (sizes of chunks and batches, indices, seeds); for
#: the others (sample counts, steps) a huge value is a long computation, not an error.
HUGE_OK = {"batch_size", "chunk_heads", "max_cache_bytes", "vocab_chunk", "source_chunk", "seed", "position", "layer",
           "head", "k", "top_k", "chunk_size", "random_state", "max_tokens", "max_prompts", "slots_per_pass", "block",
           "max_terms", "offsets", "layers", "tokens", "max_order", "window"}


#: Result fields whose NaN is documented as "not computed" (probe controls that were switched off,
#: the ridge penalty of a logistic probe): a stated sentinel, not a silent NaN.
SENTINELS = {"control_random_model", "control_shuffled", "alpha"}


def _finite(value: Any, path: str = "result") -> None:
    """Raise naming the first non-finite number inside a result (tensors, floats, containers)."""
    if path.rsplit(".", 1)[-1] in SENTINELS:
        return
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and value.numel():
            assert bool(torch.isfinite(value).all()), f"{path} holds non-finite values"
    elif isinstance(value, float):
        assert math.isfinite(value), f"{path} = {value}"
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if f.name != "processing":
                _finite(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value[:200]):
            _finite(v, f"{path}[{i}]")


def _pair(model):
    """A small clean/corrupted pair and its answers (token ids, so both architectures read it)."""
    p = X.induction_pair(model, seq_len=4, n_seqs=2)
    return p.clean, p.corrupted, dict(answer_tokens=p.answer, wrong_tokens=p.wrong)


def _patch(model, fn, **kwargs):
    clean, corrupted, answers = _pair(model)
    return fn(model, clean, corrupted, "logit_diff", what=("resid_pre", "head_z"), **answers, **kwargs)


def _fitted(model):
    approx = G.NeighbourApproximation(window=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return approx.fit(model, CORPUS, progress=False)


#: (name, argument, call(model, value)): one row per public function and numeric argument.
CALLS: list[tuple[str, str, Callable[[Any, Any], Any]]] = [
    ("composition_scores", "baseline_samples", lambda m, v: C.composition_scores(m, "K", baseline_samples=v)),
    ("composition_scores", "chunk_heads", lambda m, v: C.composition_scores(m, "Q", baseline=False, chunk_heads=v)),
    ("composition_scores", "max_cache_bytes", lambda m, v: C.composition_scores(m, "V", baseline=False, max_cache_bytes=v)),
    ("copying_scores", "baseline_samples", lambda m, v: C.copying_scores(m, baseline_samples=v)),
    ("copying_scores", "seed", lambda m, v: C.copying_scores(m, baseline_samples=3, seed=v)),
    ("copying_scores", "vocab_chunk", lambda m, v: C.copying_scores(m, baseline=False, vocab_chunk=v)),
    ("head_scores", "seq_len", lambda m, v: C.head_scores(m, "induction", seq_len=v, n_seqs=4)),
    ("head_scores", "n_seqs", lambda m, v: C.head_scores(m, "induction", seq_len=8, n_seqs=v)),
    ("head_scores", "seed", lambda m, v: C.head_scores(m, "previous_token", seq_len=8, n_seqs=4, seed=v)),
    ("head_scores", "batch_size", lambda m, v: C.head_scores(m, "duplicate_token", seq_len=8, n_seqs=4, batch_size=v)),
    ("head_scores", "exclude_bos", lambda m, v: C.head_scores(m, "induction_head", seq_len=8, n_seqs=4, exclude_bos=v)),
    ("head_scores", "error_measure", lambda m, v: C.head_scores(m, "previous_token_head", seq_len=8, n_seqs=4,
                                                                error_measure=v)),
    ("repeated_tokens", "seq_len", lambda m, v: C.repeated_tokens(m, seq_len=v, n_seqs=2)),
    ("repeated_tokens", "n_seqs", lambda m, v: C.repeated_tokens(m, seq_len=5, n_seqs=v)),
    ("find_induction_heads", "induction_threshold",
     lambda m, v: C.find_induction_heads(m, seq_len=8, n_seqs=4, induction_threshold=v, progress=False)),
    ("find_induction_heads", "previous_threshold",
     lambda m, v: C.find_induction_heads(m, seq_len=8, n_seqs=4, previous_threshold=v, progress=False)),
    ("find_induction_heads", "k_comp_z", lambda m, v: C.find_induction_heads(m, seq_len=8, n_seqs=4, k_comp_z=v, progress=False)),
    ("find_induction_heads", "seq_len", lambda m, v: C.find_induction_heads(m, seq_len=v, n_seqs=4, progress=False)),
    ("skip_trigrams", "k", lambda m, v: C.skip_trigrams(m, 1, 0, k=v)),
    ("skip_trigrams", "source_chunk", lambda m, v: C.skip_trigrams(m, 1, 0, k=3, source_chunk=v)),
    ("skip_trigrams", "layer", lambda m, v: C.skip_trigrams(m, v, 0, k=3)),
    ("skip_trigrams", "head", lambda m, v: C.skip_trigrams(m, 1, v, k=3)),
    ("circuit_graph", "z_min", lambda m, v: C.circuit_graph(m, z_min=v, baseline_samples=20)),
    ("circuit_graph", "behaviour_threshold", lambda m, v: C.circuit_graph(m, behaviour_threshold=v, baseline_samples=20)),
    ("circuit_graph", "copying_threshold", lambda m, v: C.circuit_graph(m, copying_threshold=v, baseline_samples=20)),
    ("circuit_graph", "baseline_samples", lambda m, v: C.circuit_graph(m, baseline_samples=v)),
    ("term_importance", "max_order", lambda m, v: C.term_importance(m, TEXTS[:2], max_order=v, progress=False)),
    ("term_importance", "max_terms", lambda m, v: C.term_importance(m, TEXTS[:2], max_terms=v, progress=False)),
    ("term_importance", "batch_size", lambda m, v: C.term_importance(m, TEXTS[:2], max_order=1, batch_size=v, progress=False)),
    ("term_importance", "slots_per_pass",
     lambda m, v: C.term_importance(m, TEXTS[:2], max_order=1, slots_per_pass=v, progress=False)),
    ("residual_stats", "position", lambda m, v: G.residual_stats(m, {"a": TEXTS[:2], "b": TEXTS[2:]}, position=v,
                                                                 streams=("resid_pre", "resid_post"), progress=False)),
    ("residual_stats", "batch_size", lambda m, v: G.residual_stats(m, {"a": TEXTS[:2], "b": TEXTS[2:]}, batch_size=v,
                                                                   streams=("resid_pre", "resid_post"), progress=False)),
    ("effective_dimensionality", "position", lambda m, v: G.effective_dimensionality(m, TEXTS, position=v, progress=False)),
    ("effective_dimensionality", "batch_size", lambda m, v: G.effective_dimensionality(m, TEXTS, batch_size=v, progress=False)),
    ("effective_dimensionality", "layers", lambda m, v: G.effective_dimensionality(m, TEXTS, layers=[v], progress=False)),
    ("update_alignment", "position", lambda m, v: G.update_alignment(m, TEXTS, position=v, progress=False)),
    ("update_alignment", "batch_size", lambda m, v: G.update_alignment(m, TEXTS, batch_size=v, progress=False)),
    ("block_ablation", "position", lambda m, v: G.block_ablation(m, TEXTS, position=v, progress=False)),
    ("block_ablation", "batch_size", lambda m, v: G.block_ablation(m, TEXTS, batch_size=v, progress=False)),
    ("block_decomposition", "position", lambda m, v: G.block_decomposition(m, TEXTS, position=v, progress=False)),
    ("block_decomposition", "batch_size", lambda m, v: G.block_decomposition(m, TEXTS, batch_size=v, progress=False)),
    ("logit_lens", "position", lambda m, v: G.logit_lens(m, TEXTS, position=v, progress=False)),
    ("logit_lens", "top_k", lambda m, v: G.logit_lens(m, TEXTS, top_k=v, progress=False)),
    ("logit_lens", "batch_size", lambda m, v: G.logit_lens(m, TEXTS, batch_size=v, progress=False)),
    ("NeighbourApproximation", "window", lambda m, v: G.NeighbourApproximation(window=v)),
    ("NeighbourApproximation", "thresholds", lambda m, v: G.NeighbourApproximation(window=4, thresholds=v)),
    ("NeighbourApproximation", "weights", lambda m, v: G.NeighbourApproximation(window=4, weights=v)),
    ("NeighbourApproximation.fit", "batch_size",
     lambda m, v: G.NeighbourApproximation(window=4).fit(m, CORPUS[:400], batch_size=v, progress=False)),
    ("NeighbourApproximation.evaluate", "thresholds", lambda m, v: _fitted(m).evaluate(TEXTS, thresholds=v, progress=False)),
    ("NeighbourApproximation.evaluate", "weights", lambda m, v: _fitted(m).evaluate(TEXTS, weights=v, progress=False)),
    ("NeighbourApproximation.evaluate", "batch_size", lambda m, v: _fitted(m).evaluate(TEXTS, batch_size=v, progress=False)),
    ("NeighbourApproximation.evaluate", "chunk_size", lambda m, v: _fitted(m).evaluate(TEXTS, chunk_size=v, progress=False)),
    ("NeighbourApproximation.similar", "block", lambda m, v: _fitted(m).similar(TEXTS[0], block=v)),
    ("NeighbourApproximation.similar", "threshold", lambda m, v: _fitted(m).similar(TEXTS[0], threshold=v)),
    ("token_subspaces", "n_samples", lambda m, v: G.token_subspaces(m, tokens=[1, 2], n_samples=v, steps=5, progress=False)),
    ("token_subspaces", "rank", lambda m, v: G.token_subspaces(m, tokens=[1, 2], n_samples=8, rank=v, steps=5, progress=False)),
    ("token_subspaces", "target_prob",
     lambda m, v: G.token_subspaces(m, tokens=[1, 2], n_samples=8, target_prob=v, steps=5, progress=False)),
    ("token_subspaces", "steps", lambda m, v: G.token_subspaces(m, tokens=[1, 2], n_samples=8, steps=v, progress=False)),
    ("token_subspaces", "lr", lambda m, v: G.token_subspaces(m, tokens=[1, 2], n_samples=8, steps=5, lr=v, progress=False)),
    ("token_subspaces", "tokens", lambda m, v: G.token_subspaces(m, tokens=[v], n_samples=8, steps=5, progress=False)),
    ("probe_inputs", "offsets", lambda m, v: P.probe_inputs(m, TEXTS, offsets=(v,), controls=False, progress=False)),
    ("probe_inputs", "test_fraction", lambda m, v: P.probe_inputs(m, TEXTS, test_fraction=v, controls=False, progress=False)),
    ("probe_inputs", "seed", lambda m, v: P.probe_inputs(m, TEXTS, seed=v, controls=False, progress=False)),
    ("probe_inputs", "batch_size", lambda m, v: P.probe_inputs(m, TEXTS, batch_size=v, controls=False, progress=False)),
    ("probe_inputs", "alpha", lambda m, v: P.probe_inputs(m, TEXTS, method="ridge", alpha=v, controls=False, progress=False)),
    ("probe_inputs", "max_iter", lambda m, v: P.probe_inputs(m, TEXTS, method="logistic", max_iter=v, controls=False,
                                                             progress=False)),
    ("probe_inputs", "layers", lambda m, v: P.probe_inputs(m, TEXTS, layers=[v], controls=False, progress=False)),
    ("embedding_basis", "k", lambda m, v: P.embedding_basis(m, "pca", k=v)),
    ("embedding_basis", "random_state", lambda m, v: P.embedding_basis(m, "nmf", k=3, random_state=v, max_iter=20)),
    ("embedding_basis", "max_iter", lambda m, v: P.embedding_basis(m, "nmf", k=3, max_iter=v)),
    ("compare_to_embedding", "n_random", lambda m, v: P.compare_to_embedding(m, torch.randn(3, m.cfg.d_model), n_random=v)),
    ("compare_to_embedding", "rank", lambda m, v: P.compare_to_embedding(m, torch.randn(3, m.cfg.d_model), n_random=5, rank=v)),
    ("compare_to_embedding", "interval",
     lambda m, v: P.compare_to_embedding(m, torch.randn(3, m.cfg.d_model), n_random=5, interval=v)),
    ("unlikely_token_usage", "k", lambda m, v: P.unlikely_token_usage(m, TEXTS, k=v, n_random=3, progress=False)),
    ("unlikely_token_usage", "n_random", lambda m, v: P.unlikely_token_usage(m, TEXTS, n_random=v, progress=False)),
    ("unlikely_token_usage", "interval", lambda m, v: P.unlikely_token_usage(m, TEXTS, n_random=3, interval=v, progress=False)),
    ("unlikely_token_usage", "batch_size", lambda m, v: P.unlikely_token_usage(m, TEXTS, n_random=3, batch_size=v,
                                                                               progress=False)),
    ("attention_explorer", "max_tokens", lambda m, v: attention_explorer(m, TEXTS, max_tokens=v)),
    ("attention_explorer", "max_prompts", lambda m, v: attention_explorer(m, TEXTS, max_prompts=v)),
    ("attention_explorer", "layer", lambda m, v: attention_explorer(m, TEXTS[:1], max_tokens=6, view="grid", layer=v)),
    ("attention_explorer", "prompt", lambda m, v: attention_explorer(m, TEXTS[:2], max_tokens=6, view="grid", prompt=v)),
    ("induction_pair", "seq_len", lambda m, v: X.induction_pair(m, seq_len=v, n_seqs=2)),
    ("induction_pair", "n_seqs", lambda m, v: X.induction_pair(m, seq_len=3, n_seqs=v)),
    ("induction_pair", "seed", lambda m, v: X.induction_pair(m, seq_len=3, n_seqs=2, seed=v)),
    ("activation_patching", "batch_size", lambda m, v: _patch(m, X.activation_patching, batch_size=v)),
    ("activation_patching", "position", lambda m, v: _patch(m, X.activation_patching, position=v)),
    ("activation_patching", "positions", lambda m, v: _patch(m, X.activation_patching, positions=[v])),
    ("attribution_patching", "position", lambda m, v: _patch(m, X.attribution_patching, position=v)),
    ("attribution_patching", "positions", lambda m, v: _patch(m, X.attribution_patching, positions=[v])),
    ("direct_logit_attribution", "position",
     lambda m, v: X.direct_logit_attribution(m, _pair(m)[0], _pair(m)[2]["answer_tokens"], position=v)),
    ("direct_logit_attribution", "batch_size",
     lambda m, v: X.direct_logit_attribution(m, _pair(m)[0], _pair(m)[2]["answer_tokens"], batch_size=v)),
    ("direct_logit_attribution", "answer_tokens", lambda m, v: X.direct_logit_attribution(m, _pair(m)[0], v)),
    ("path_patching", "batch_size", lambda m, v: X.path_patching(m, _pair(m)[0], _pair(m)[1], "each", "logits",
                                                                 batch_size=v, **_pair(m)[2])),
    ("path_patching", "position", lambda m, v: X.path_patching(m, _pair(m)[0], _pair(m)[1], (0, 0), "logits",
                                                               position=v, **_pair(m)[2])),
]

#: Empty sequences where a sequence is expected.
EMPTY: list[tuple[str, Callable[[Any], Any]]] = [
    ("residual_stats data", lambda m: G.residual_stats(m, {"a": [], "b": TEXTS}, progress=False)),
    ("residual_stats streams", lambda m: G.residual_stats(m, {"a": TEXTS}, streams=(), progress=False)),
    ("residual_stats empty prompt", lambda m: G.residual_stats(m, {"a": ["", TEXTS[0]]}, streams=("resid_pre",), progress=False)),
    ("block_ablation data", lambda m: G.block_ablation(m, [], progress=False)),
    ("block_ablation empty prompt", lambda m: G.block_ablation(m, [""], progress=False)),
    ("logit_lens data", lambda m: G.logit_lens(m, [], progress=False)),
    ("effective_dimensionality layers", lambda m: G.effective_dimensionality(m, TEXTS, layers=[], progress=False)),
    ("probe_inputs offsets", lambda m: P.probe_inputs(m, TEXTS, offsets=(), controls=False, progress=False)),
    ("probe_inputs data", lambda m: P.probe_inputs(m, [], controls=False, progress=False)),
    ("probe_inputs layers", lambda m: P.probe_inputs(m, TEXTS, layers=[], controls=False, progress=False)),
    ("term_importance data", lambda m: C.term_importance(m, [], progress=False)),
    ("circuit_graph modes", lambda m: C.circuit_graph(m, modes=())),
    ("unlikely_token_usage data", lambda m: P.unlikely_token_usage(m, [], progress=False)),
    ("neighbours evaluate empty prompt", lambda m: _fitted(m).evaluate(["", TEXTS[0]], progress=False)),
    ("neighbours fit empty corpus", lambda m: G.NeighbourApproximation(window=4).fit(m, "", progress=False)),
    ("attention_explorer data", lambda m: attention_explorer(m, [])),
    ("activation_patching data", lambda m: X.activation_patching(m, [], [], "logit_diff", answer_tokens=1, wrong_tokens=2)),
    ("activation_patching what", lambda m: _patch_what(m, X.activation_patching)),
    ("activation_patching positions", lambda m: _patch(m, X.activation_patching, positions=[])),
    ("attribution_patching what", lambda m: _patch_what(m, X.attribution_patching)),
    ("direct_logit_attribution data", lambda m: X.direct_logit_attribution(m, [], 1)),
    ("compare_to_embedding weights", lambda m: P.compare_to_embedding(m, torch.zeros(0, m.cfg.d_model))),
    ("token_subspaces tokens", lambda m: G.token_subspaces(m, tokens=[], n_samples=8, steps=5, progress=False)),
]


def _patch_what(model, fn):
    clean, corrupted, answers = _pair(model)
    return fn(model, clean, corrupted, "logit_diff", what=(), **answers)


def _outcome(call: Callable[[], Any]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except LensworksError:
        return
    _finite(result)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "arg", "call"), CALLS, ids=[f"{n}-{a}" for n, a, _ in CALLS])
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(value=HOSTILE, huge=st.sampled_from([None, 10**9, 2**63]))
def test_numeric_arguments_give_finite_results_or_a_lensworks_error(arch, name, arg, call, value, huge):
    model = arch_model(arch)
    if huge is not None and arg in HUGE_OK:
        value = huge
    _outcome(lambda: call(model, value))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("name", "call"), EMPTY, ids=[n for n, _ in EMPTY])
def test_empty_sequences_are_refused(arch, name, call):
    with pytest.raises(LensworksError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(arch_model(arch))
