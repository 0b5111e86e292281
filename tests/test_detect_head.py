"""``head_scores`` with detection patterns equals TransformerLens's ``detect_head`` on every option,
and ``cache=`` (head_scores, find_induction_heads, attention_patterns / the explorer) reuses the
user's activation cache without a forward pass. Runs on both TransformerLens lines.

Two references for every number:

- *exact*: ``detect_head`` given the same patterns as float64 (an ``ActivationCache`` built from the
  model's own cache) and with its 3-decimal rounding of ``"abs"`` switched off, so both sides
  compute the same formula without float32 noise: equal within 1e-6 (measured: bit for bit after
  the cast to float32; in bf16, where detect_head returns a bf16 tensor, after rounding ours to bf16);
- *as shipped*: ``detect_head`` as a user calls it (float32 or bf16 arithmetic, ``"abs"`` rounded to
  3 decimals): equal within that rounding (5e-4) plus the model's precision.

The full cross product of options (5 patterns x exclude_bos x exclude_current_token x
error_measure) runs on one architecture; every architecture runs a representative subset.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings

import pytest
import torch

from archs import ARCHS, arch_model, float_tol
from helpers import planted_induction_model
from lensworks.circuits import attention_patterns, find_induction_heads, head_scores, repeated_tokens
from lensworks.circuits.heads import HEAD_NAMES, detection_pattern
from lensworks.model import LensworksError, NonFiniteError, model_facts
from lensworks.plotting import attention_explorer
from transformer_lens import head_detector as hd
from transformer_lens.ActivationCache import ActivationCache

#: Lower-case text every architecture's vocabulary encodes (the attention-only entry's is lower-case).
TEXT = "the cat sat on the mat. the cat sat on the mat."
#: Two prompts of the same token length under the character vocabulary (for batch averaging).
PAIR = ["the cat sat on the mat. the cat sat", "a dog ran to the log. a dog ran to."]
PATTERNS = (*HEAD_NAMES, "tensor", "callable")
EVERY_COMBO = list(itertools.product(PATTERNS, (False, True), (False, True), ("mul", "abs")))
#: One line per pattern kind; together they use every value of every option.
SUBSET = [("previous_token_head", False, True, "abs"), ("duplicate_token_head", True, False, "mul"),
          ("induction_head", True, True, "mul"), ("tensor", False, False, "abs"), ("callable", True, False, "abs")]


def _pattern_names(model) -> list[str]:
    return [model_facts(model).hook("pattern", l) for l in range(model.cfg.n_layers)]


def _custom(T: int) -> torch.Tensor:
    """A fixed lower-triangular pattern of zeros and ones."""
    return (torch.rand(T, T, generator=torch.Generator().manual_seed(0)) > 0.7).float().tril()


def _arguments(kind: str, tokens: torch.Tensor):
    """(what detect_head is given, what head_scores is given) for a pattern kind."""
    if kind == "tensor":
        return _custom(tokens.shape[-1]), _custom(tokens.shape[-1])
    if kind == "callable":  # TransformerLens's own pattern function, passed to head_scores as it is
        return hd.get_induction_head_detection_pattern(tokens.cpu()), hd.get_induction_head_detection_pattern
    return kind, kind


def _detect(model, seq, pattern, *, cache=None, exact: bool, **options) -> torch.Tensor:
    """TransformerLens's detect_head; ``exact``: without its rounding of "abs" to 3 decimals."""
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exact:
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(hd, "round", lambda x, n=None: x, raising=False)
        return hd.detect_head(model, seq, pattern, cache=cache, **options).float()


def _float64_cache(model, cache) -> ActivationCache:
    """The model's own patterns of one sequence, as float64, in the layout detect_head reads."""
    return ActivationCache({n: cache[n][0].double() for n in _pattern_names(model)}, model, has_batch_dim=False)


def _compare(model, combos):
    """head_scores against detect_head on ``combos``. head_scores reads the model's cache for every
    combination (equal to its own forward pass bit for bit: see
    test_cache_gives_the_same_numbers_without_a_forward_pass) and runs the model for the first one."""
    tokens = model.to_tokens(TEXT)
    _, cache = model.run_with_cache(tokens)
    exact_cache = _float64_cache(model, cache)
    # what detect_head computes when it runs the model itself (run_with_cache(..., remove_batch_dim=True))
    own_cache = ActivationCache({n: cache[n][0] for n in _pattern_names(model)}, model, has_batch_dim=False)
    worst = {"exact": 0.0, "shipped": 0.0}
    for i, (kind, exclude_bos, exclude_current_token, measure) in enumerate(combos):
        options = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token, error_measure=measure)
        theirs, ours = _arguments(kind, tokens)
        got = head_scores(model, ours, tokens=tokens, cache=cache if i else None, **options).scores
        exact = _detect(model, TEXT, theirs, cache=exact_cache, exact=True, **options)
        shipped = _detect(model, TEXT, theirs, cache=own_cache, exact=False, **options)
        what = lambda m: f"{kind} {options}: {m}"  # noqa: E731
        # detect_head returns its scores in the model's dtype: in bf16, ours rounded to bf16 are equal
        torch.testing.assert_close(got.to(model.cfg.dtype).float(), exact, atol=1e-6, rtol=0, msg=what)
        tol = float_tol(model, 2e-6) + (5e-4 if measure == "abs" else 0.0)
        torch.testing.assert_close(got, shipped, atol=tol, rtol=0, msg=what)
        worst["exact"] = max(worst["exact"], float((got - exact).abs().max()))
        worst["shipped"] = max(worst["shipped"], float((got - shipped).abs().max()))
    return worst


def test_every_option_combination_equals_detect_head():
    worst = _compare(arch_model("attn-only"), EVERY_COMBO)
    assert worst["exact"] <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_each_pattern_kind_equals_detect_head_on_every_architecture(arch):
    _compare(arch_model(arch), SUBSET)


@pytest.mark.parametrize("measure", ["mul", "abs"])
def test_a_batch_is_the_mean_of_per_sequence_scores_as_detect_head_averages_a_list(measure):
    model = arch_model("attn-only")
    tokens = model.to_tokens(PAIR)
    assert len(PAIR[0]) == len(PAIR[1]) and tokens.shape == (2, len(PAIR[0]) + 1)  # BOS and one token a character
    options = dict(exclude_bos=True, exclude_current_token=False, error_measure=measure)
    got = head_scores(model, "induction_head", tokens=tokens, **options).scores
    torch.testing.assert_close(got, _detect(model, PAIR, "induction_head", exact=True, **options), atol=1e-6, rtol=0)
    # a [batch, pos, pos] tensor: each sequence its own pattern
    per_row = torch.stack([detection_pattern("duplicate_token_head", t) for t in tokens])[:, 0]
    got = head_scores(model, per_row, tokens=tokens, **options).scores
    want = torch.stack([_detect(model, s, per_row[i], exact=True, **options) for i, s in enumerate(PAIR)]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_named_patterns_are_transformerlens_own():
    tokens = torch.tensor([[3, 5, 3, 5, 7, 3, 5, 7, 5]])
    for name in HEAD_NAMES:
        theirs = getattr(hd, f"get_{name}_detection_pattern")(tokens)
        assert torch.equal(detection_pattern(name, tokens)[0], theirs), name


# ----------------------------------------------------------------------------- planted answers


@pytest.fixture(scope="module")
def planted():
    return planted_induction_model()


def test_planted_previous_token_and_induction_heads(planted):
    n = 12
    T = 2 * n  # no BOS: [s s]
    prev = head_scores(planted, "previous_token_head", seq_len=n, n_seqs=8)
    # L0H0 puts all attention on t-1 for t >= 1; row 0 can only attend to itself, off the pattern
    assert float(prev.scores[0, 0]) == pytest.approx((T - 1) / T, abs=1e-4)
    prev_x = head_scores(planted, "previous_token_head", seq_len=n, n_seqs=8, exclude_current_token=True)
    assert float(prev_x.scores[0, 0]) == pytest.approx(1.0, abs=1e-4)
    ind = head_scores(planted, "induction_head", seq_len=n, n_seqs=8)
    # L1H0 attends to the token after the earlier copy in every row of the second copy, but the
    # first such row ties with position 0 (half its attention is lost); every row counts in the sum
    assert float(ind.scores[1, 0]) == pytest.approx((n - 0.5) / T, abs=1e-3)
    assert ind.top(1)[0][0] == "L1H0" and prev.top(1)[0][0] == "L0H0"
    assert ind.options["detection"] == "induction_head" and ind.options["error_measure"] == "mul"
    assert "induction-head detection score" in ind.caption() and ind.figure().data[0].type == "heatmap"


def test_planted_patterns_with_known_scores(planted):
    tokens = repeated_tokens(planted, seq_len=10, n_seqs=4, seed=2)
    B, T = tokens.shape
    _, cache = planted.run_with_cache(tokens)
    ones = torch.ones(T, T).tril()
    # every head's attention lies on a pattern of ones below and on the diagonal: "mul" is exactly 1
    for exclude_bos in (False, True):
        assert torch.equal(head_scores(planted, ones, cache=cache, exclude_bos=exclude_bos).scores, torch.ones(2, 2))
    # "abs" against the same pattern: 1 - (T(T+1)/2 - T) / T = (3 - T) / 2 for any attention
    torch.testing.assert_close(head_scores(planted, ones, cache=cache, error_measure="abs").scores,
                               torch.full((2, 2), (3 - T) / 2), atol=1e-6, rtol=0)
    # a head's own pattern of each sequence ([batch, pos, pos]) under "abs" scores exactly 1 for that head
    own = cache[_pattern_names(planted)[1]][:, 0]
    res = head_scores(planted, own, cache=cache, error_measure="abs")
    assert float(res.scores[1, 0]) == pytest.approx(1.0, abs=1e-6) and float(res.scores.flatten()[[0, 1, 3]].max()) < 1


def test_uniform_attention_scores_the_chance_level(planted):
    """A hand-made cache where every head attends uniformly to every earlier position: each score is
    the result's ``chance``."""
    T, B = 16, 2
    uniform = (torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]).expand(B, 2, T, T)
    cache = {name: uniform for name in _pattern_names(planted)}
    tokens = repeated_tokens(planted, seq_len=8, n_seqs=B, seed=1)
    for kind, measure in [("previous_token_head", "mul"), ("induction_head", "abs"), ("duplicate_token_head", "mul")]:
        res = head_scores(planted, kind, tokens=tokens, cache=cache, error_measure=measure, exclude_bos=True)
        torch.testing.assert_close(res.scores, torch.full((2, 2), res.chance), atol=1e-6, rtol=0)
        assert res.references()["chance"].kind == "chance"


def test_a_head_with_no_attention_left_after_the_exclusions_scores_zero(planted):
    """detect_head divides 0 by 0 (NaN) when a head attends only to BOS and itself; lensworks says 0."""
    T = 6
    on_first = torch.zeros(1, 2, T, T)
    on_first[..., 0] = 1.0
    cache = {name: on_first for name in _pattern_names(planted)}
    res = head_scores(planted, torch.ones(T, T).tril(), cache=cache, exclude_bos=True)
    assert torch.equal(res.scores, torch.zeros(2, 2))


def test_a_weighted_pattern_under_mul_warns_like_transformerlens(planted):
    tokens = repeated_tokens(planted, seq_len=6, n_seqs=2)
    with pytest.warns(UserWarning, match="other than 0 and 1"):
        head_scores(planted, 0.5 * torch.ones(12, 12).tril(), tokens=tokens)


# ----------------------------------------------------------------------------- cache=


@contextlib.contextmanager
def _no_forward(model):
    """Any forward pass of ``model`` fails the test (and is counted)."""
    calls = []

    def ran(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the model ran although a cache was given")

    names = ("forward", "run_with_hooks", "run_with_cache")
    for name in names:
        object.__setattr__(model, name, ran)
    try:
        yield calls
    finally:
        for name in names:
            object.__delattr__(model, name)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_gives_the_same_numbers_without_a_forward_pass(arch):
    """On every architecture; a function pattern and find_induction_heads read the cache through the
    same code, tested on one architecture below."""
    model = arch_model(arch)
    tokens = repeated_tokens(model, seq_len=8, n_seqs=3, seed=5)
    T = tokens.shape[1]
    _, cache = model.run_with_cache(tokens)
    patterns_only = {n: cache[n] for n in _pattern_names(model)}
    calls = [  # (name, call(cache) -> tensor)
        ("induction", lambda c: head_scores(model, "induction", tokens=tokens, cache=c).scores),
        ("previous_token bos", lambda c: head_scores(model, "previous_token", tokens=tokens, cache=c).bos_attention),
        ("induction_head", lambda c: head_scores(model, "induction_head", tokens=tokens, cache=c, exclude_bos=True).scores),
        ("tensor abs", lambda c: head_scores(model, _custom(T), tokens=tokens, cache=c, error_measure="abs",
                                             exclude_current_token=True).scores),
        ("attention_patterns", lambda c: attention_patterns(model, tokens, cache=c, heads=[(0, 0), (1, 1)]).patterns),
    ]
    for name, call in calls:
        want = call(None)
        for cached in (cache, patterns_only):
            with _no_forward(model) as ran:
                got = call(cached)
            assert not ran, name
            torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True, msg=name)
    with _no_forward(model) as ran:  # a [pos, pos] pattern needs no tokens: the cache says the length and batch
        got = head_scores(model, _custom(T), cache=cache).scores
        fig = attention_explorer(model, tokens, cache=cache, max_prompts=1, heads=[(0, 0)])
    assert not ran and fig.data
    torch.testing.assert_close(got, head_scores(model, _custom(T), tokens=tokens).scores, atol=0, rtol=0)


def test_cache_without_batch_dimension_and_string_prompts():
    model = arch_model("attn-only")
    tokens = model.to_tokens(TEXT)
    _, one = model.run_with_cache(tokens, remove_batch_dim=True)  # what detect_head itself makes
    want = head_scores(model, "induction_head", tokens=tokens, error_measure="abs")
    with _no_forward(model):
        got = head_scores(model, "induction_head", tokens=tokens, cache=one, error_measure="abs")
    assert torch.equal(got.scores, want.scores) and got.options["from_cache"] and not want.options["from_cache"]
    _, both = model.run_with_cache(model.to_tokens(PAIR))
    want = attention_patterns(model, PAIR, max_prompts=1)
    with _no_forward(model):
        got = attention_patterns(model, PAIR, max_prompts=1, cache=both)
    assert got.tokens == want.tokens
    torch.testing.assert_close(got.patterns, want.patterns, atol=0, rtol=0, equal_nan=True)


def test_a_function_pattern_and_the_induction_verdict_from_a_cache():
    model = arch_model("attn-only")
    tokens = repeated_tokens(model, seq_len=10, n_seqs=4, seed=0)
    _, cache = model.run_with_cache(tokens)
    fn = hd.get_duplicate_token_head_detection_pattern
    want_fn = head_scores(model, fn, tokens=tokens, error_measure="abs")
    want = find_induction_heads(model, seq_len=10, n_seqs=4, progress=False)  # the same tokens, by default
    with _no_forward(model) as ran:
        got_fn = head_scores(model, fn, tokens=tokens, cache=cache, error_measure="abs")
        got = find_induction_heads(model, seq_len=10, n_seqs=4, progress=False, cache=cache)
        given = find_induction_heads(model, tokens=tokens, progress=False, cache=cache)
    assert not ran and torch.equal(got_fn.scores, want_fn.scores)
    assert got_fn.options["detection"].startswith("function get_duplicate_token_head_detection_pattern")
    for res in (got, given):
        assert res.heads == want.heads and torch.equal(res.previous.scores, want.previous.scores)
        assert torch.equal(res.induction.scores, want.induction.scores)
    assert given.thresholds["seq_len"] == 10 and given.thresholds["n_seqs"] == 4
    assert got.thresholds["from_cache"] and not want.thresholds["from_cache"]
    with pytest.raises(LensworksError, match="covers 21 positions but the tokens have 23"):
        find_induction_heads(model, seq_len=11, n_seqs=4, progress=False, cache=cache)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_by_name():
    model = arch_model("attn-only")
    tokens = repeated_tokens(model, seq_len=6, n_seqs=2)
    B, T = tokens.shape
    _, cache = model.run_with_cache(tokens)
    names = _pattern_names(model)
    refusals = [
        (lambda: head_scores(model, torch.ones(T, T), tokens=tokens), "must be lower triangular.*entry \\[0, 1\\]"),
        (lambda: head_scores(model, torch.ones(T + 1, T + 1).tril(), tokens=tokens), f"must be \\[{T}, {T}\\]"),
        (lambda: head_scores(model, torch.ones(3, T, T).tril(), tokens=tokens), f"or \\[{B}, {T}, {T}\\]"),
        (lambda: head_scores(model, torch.full((T, T), float("nan")).tril(), tokens=tokens), "NaN or inf"),
        (lambda: head_scores(model, lambda t: torch.ones(4, 4), tokens=tokens), "of sequence 0 must be"),
        (lambda: head_scores(model, lambda t: "nope", tokens=tokens), "must be a tensor"),
        (lambda: head_scores(model, "inductionhead", tokens=tokens), "kind must be one of"),
        (lambda: head_scores(model, "induction_head", error_measure="max"), "error_measure must be one of"),
        (lambda: head_scores(model, "induction_head", exclude_bos="yes"), "exclude_bos must be True or False"),
        (lambda: head_scores(model, "induction", exclude_current_token=True), "apply to detection patterns.*'induction_head'"),
        (lambda: head_scores(model, "previous_token", error_measure="abs"), "'previous_token_head'"),
        (lambda: head_scores(model, "induction_head", tokens=tokens, cache={names[0]: cache[names[0]]}),
         "no attention pattern for layer 1 \\(blocks.1.attn.hook_pattern\\)"),
        (lambda: head_scores(model, "induction_head", tokens=tokens[:, :-2], cache=cache),
         f"covers {T} positions but the tokens have {T - 2}"),
        (lambda: head_scores(model, "induction", tokens=tokens[:1], cache=cache), f"holds {B} sequences but the tokens have 1"),
        (lambda: head_scores(model, "induction_head", tokens=tokens, cache=torch.zeros(3)), "expected an ActivationCache"),
        (lambda: head_scores(model, "induction_head", tokens=tokens, cache={n: cache[n][:, :2] for n in names}),
         "was the cache computed with another model"),
        (lambda: head_scores(model, "induction_head", tokens=tokens, cache={n: cache[n] * 2 for n in names}),
         "do not sum to 1"),
        (lambda: attention_patterns(model, tokens[:, :-1], cache=cache), f"covers {T} positions but the tokens have {T - 1}"),
        (lambda: attention_explorer(model, tokens, cache={}), "no attention pattern for layer 0"),
    ]
    for call, match in refusals:
        with pytest.raises(LensworksError, match=match):
            call()
    with pytest.raises(NonFiniteError):
        head_scores(model, "induction_head", tokens=tokens, cache={n: cache[n] * float("nan") for n in names})
