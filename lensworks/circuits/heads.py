"""Behavioural head scores: previous-token, duplicate-token, induction, and any detection pattern.

**lensworks's own kinds** (``"previous_token"``, ``"duplicate_token"``, ``"induction"``). A batch
of sequences ``[BOS] s s`` (``s`` random, length ``n``; BOS optional) is run once. Each layer's
attention pattern is reduced to per-head scores inside its hook and dropped at once, so memory
holds one layer's pattern at a time. With the first copy starting at offset ``o`` (1 with BOS,
else 0) and ``t`` running over the second copy ``[o+n, o+2n)``:

- induction  = mean ``pattern[t, t-n+1]`` (attend to the token after this token's last copy),
- duplicate  = mean ``pattern[t, t-n]``   (attend to this token's last copy),
- previous   = mean ``pattern[t, t-1]`` over every ``t >= o+1``.

Attention to BOS, averaged over the same query positions, is reported beside each score.

**Detection patterns** (TransformerLens's ``detect_head``): a ``[pos, pos]`` lower-triangular
pattern ``D`` (TransformerLens's names ``"previous_token_head"``, ``"duplicate_token_head"``,
``"induction_head"``, a tensor, or a function of the tokens) is compared with each head's pattern
``A`` on each sequence. ``exclude_bos`` zeroes column 0 of ``A`` (``"mul"``) or of ``|A - D|``
(``"abs"``), ``exclude_current_token`` the diagonal; with ``A'`` the masked pattern and ``T`` the
number of positions:

- ``"mul"``: ``sum(A' * D) / sum(A')``, the fraction of the (unmasked) attention that falls on the
  pattern (``D`` of zeros and ones);
- ``"abs"``: ``1 - sum(|A - D| masked) / T``, one minus the mean over query rows of the L1
  distance between the rows: 1 for a perfect match, -1 where each row of ``D`` holds a single one
  the head ignores entirely, lower still for rows with several (TransformerLens rounds it to 3
  decimals; lensworks does not).

Unlike ``detect_head``, a head whose attention falls entirely on excluded positions scores 0 under
``"mul"`` (``detect_head`` returns 0 / 0 = NaN), and the caller's cache is never modified.

The score of a head is the mean over the sequences of its per-sequence score, as ``detect_head``
averages over a list of prompts. The patterns can come from an ``ActivationCache`` the user
already has (``cache=``) instead of a forward pass.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Literal, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._dist import Shard, all_reduce_sum, is_distributed, is_main
from lensworks._results import Reference
from lensworks.circuits._behaviour import (KINDS, BehaviourScores, Kind, _check_repeated, _scan_patterns,  # noqa: F401
                                           behaviour_scores, repeated_tokens)
from lensworks.circuits._cache import cached_patterns
from lensworks.circuits.scores import HeadScores
from lensworks.model._compat import capture_hooks, require_finite_parameters
from lensworks.model import (
    HookedTransformer, LensworksError, as_tokens, check_int, default_seq_len, head_labels, hook_name,
    model_facts, processing_state, uses_bos,
)

__all__ = ["head_scores", "BehaviourScores", "repeated_tokens", "behaviour_scores", "detection_pattern", "KINDS",
           "HEAD_NAMES", "ERROR_MEASURES"]

#: TransformerLens's named detection patterns (``transformer_lens.head_detector.HEAD_NAMES``).
HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: tuple[str, ...] = ("previous_token_head", "duplicate_token_head", "induction_head")
ErrorMeasure = Literal["mul", "abs"]
ERROR_MEASURES: tuple[str, ...] = ("mul", "abs")
#: What ``head_scores`` accepts as its ``kind``: a lensworks kind, a TransformerLens head name, a
#: ``[pos, pos]`` / ``[batch, pos, pos]`` pattern, or a function ``tokens [1, pos] -> [pos, pos]``.
Detection = Union[str, Tensor, Callable[[Tensor], Any]]


# ----------------------------------------------------------------------------- detection patterns


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python or numpy bool
        return bool(value)
    raise LensworksError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def detection_pattern(name: HeadName, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos pos"]:
    """TransformerLens's named detection pattern for each row of ``tokens`` (zeros and ones).

    - ``"previous_token_head"``: ``D[t, t-1] = 1``;
    - ``"duplicate_token_head"``: ``D[t, s] = 1`` for every earlier ``s < t`` holding the same token;
    - ``"induction_head"``: ``D[t, s] = 1`` where ``s - 1 < t`` holds the same token as ``t`` (the
      position after an earlier copy), ``s >= 1``.

    The same patterns as ``transformer_lens.head_detector.get_<name>_detection_pattern``, for a
    whole batch at once.

    Example:
        >>> detection_pattern("induction_head", torch.tensor([[7, 8, 7, 8]]))[0]
        tensor([[0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 1., 0., 0.],
                [0., 0., 1., 0.]])
    """
    if name not in HEAD_NAMES:
        raise LensworksError(f"detection pattern name must be one of {list(HEAD_NAMES)}, got {name!r}")
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    B, T = tokens.shape
    if name == "previous_token_head":
        return torch.ones(T, T, device=tokens.device).tril(-1).triu(-1).expand(B, T, T).clone()
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)
    dup = (tokens[:, :, None] == tokens[:, None, :]) & earlier
    if name == "duplicate_token_head":
        return dup.float()
    out = torch.zeros(B, T, T, device=tokens.device)
    out[:, :, 1:] = dup[:, :, :-1].float()
    return out


def _check_pattern(pattern: Any, n_pos: int, n_rows: int | None, where: str) -> Tensor:
    """A detection pattern as a float tensor ``[pos, pos]`` or ``[batch, pos, pos]``, refused by name."""
    if not isinstance(pattern, Tensor):
        try:
            import numpy as np

            if not isinstance(pattern, np.ndarray):
                raise TypeError
            pattern = torch.as_tensor(pattern)
        except TypeError:
            raise LensworksError(f"{where} must be a tensor [pos, pos] of the expected attention, got "
                                 f"{type(pattern).__name__}") from None
    if pattern.is_complex() or not (pattern.is_floating_point() or pattern.dtype in (
            torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise LensworksError(f"{where} must hold real numbers, got a {pattern.dtype} tensor")
    p = pattern.detach().float() if not pattern.is_floating_point() else pattern.detach()
    want = f"[{n_pos}, {n_pos}]" + (f" or [{n_rows}, {n_pos}, {n_pos}]" if n_rows is not None else "")
    if p.ndim not in (2, 3) or tuple(p.shape[-2:]) != (n_pos, n_pos) or (p.ndim == 3 and p.shape[0] != n_rows):
        raise LensworksError(f"{where} must be {want} to match tokens of {n_pos} positions"
                             f"{f' in {n_rows} sequences' if n_rows is not None else ''}, got shape {list(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise LensworksError(f"{where} holds NaN or inf")
    if not torch.equal(p, p.tril()):
        i, j = (int(x) for x in (p - p.tril()).nonzero()[0][-2:])
        raise LensworksError(f"{where} must be lower triangular (a query attends only to itself and earlier "
                             f"positions), but entry [{i}, {j}] above the diagonal is {float(p[..., i, j].flatten()[0])}")
    return p


def _detection_scores(
    p: Float[Tensor, "b n_heads pos pos"],
    d: Float[Tensor, "b pos pos"],
    keep: Float[Tensor, "pos pos"],
    measure: str,
    dtype: torch.dtype,
) -> Float[Tensor, "b n_heads"]:
    """Per-sequence detect_head scores of every head (one head at a time: one ``[b, pos, pos]`` temporary)."""
    T = p.shape[-1]
    d, keep = d.to(dtype), keep.to(dtype)
    dk = d * keep
    out = torch.empty(p.shape[0], p.shape[1], dtype=torch.float64)
    for h in range(p.shape[1]):
        a = p[:, h].to(dtype)
        if measure == "mul":
            num, den = (a * dk).sum((-2, -1)), (a * keep).sum((-2, -1))
            # a head with no attention left outside the excluded positions puts none on the pattern
            out[:, h] = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), 0.0).double().cpu()
        else:
            out[:, h] = (1 - (a - d).abs_().mul_(keep).sum((-2, -1)).double() / T).cpu()
    return out


def _detect(
    model: HookedTransformer,
    kind: Detection,
    *,
    tokens: Tensor | None,
    seq_len: int | None,
    n_seqs: int,
    seed: int,
    prepend_bos: bool | None,
    batch_size: int,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: str,
    cache: Any,
) -> BehaviourScores:
    """Detection-pattern scores (TransformerLens's ``detect_head``); see :func:`head_scores`."""
    facts = model_facts(model)
    L, H = facts.n_layers, facts.n_heads
    batch_size = check_int(batch_size, "batch_size", low=1)
    if isinstance(kind, str) and kind not in HEAD_NAMES:
        raise LensworksError(f"kind must be one of {list(KINDS)} (lensworks's scores), one of {list(HEAD_NAMES)} "
                             f"(TransformerLens's detection patterns), a [pos, pos] tensor or a function of the "
                             f"tokens; got {kind!r}")
    fixed = isinstance(kind, Tensor) or (not isinstance(kind, str) and not callable(kind))
    if tokens is not None:
        tokens = as_tokens(model, tokens, what="tokens")
    elif fixed and cache is not None:  # the pattern alone says the length; the cache the batch
        first = cached_patterns(model, cache, [0])[0]
        n_rows, n_pos = first.shape[0], first.shape[-1]
    else:
        tokens = repeated_tokens(model, seq_len=seq_len, n_seqs=n_seqs, seed=seed, prepend_bos=prepend_bos)
    if tokens is not None:
        n_rows, n_pos = tokens.shape
        offset = facts.leading_bos(tokens, prepend_bos)
    else:
        offset = facts.bos_offset(prepend_bos)
    if n_pos < 2:
        raise LensworksError(f"detection patterns need sequences of at least 2 positions, got {n_pos}")
    device = facts.device
    dtype = facts.precise_dtype

    if isinstance(kind, str):
        name, label = kind, kind
        rows_pattern: Callable[[Tensor], Tensor] = lambda rows: detection_pattern(kind, tokens[rows].to(device))
    elif fixed:
        fixed_pattern = _check_pattern(kind, n_pos, n_rows, "the detection pattern").to(device)
        name, label = "custom", f"tensor {list(fixed_pattern.shape)}"
        rows_pattern = (lambda rows: fixed_pattern[rows.to(device)]) if fixed_pattern.ndim == 3 else (
            lambda rows: fixed_pattern.expand(len(rows), n_pos, n_pos))
    else:
        fn = kind
        fn_name = getattr(fn, "__qualname__", getattr(fn, "__name__", type(fn).__name__))
        name, label = "custom", f"function {fn_name}"

        def rows_pattern(rows: Tensor) -> Tensor:
            out = []
            for r in rows.tolist():
                got = fn(tokens[r : r + 1].cpu())
                where = f"the detection pattern {fn_name}(tokens) of sequence {r}"
                got = _check_pattern(got, n_pos, None, where)
                out.append(got.to(device))
            return torch.stack(out)

    memo: dict[tuple[int, int], Tensor] = {}
    warned: list[bool] = []

    def pattern_for(rows: Tensor) -> Tensor:
        key = (int(rows[0]), len(rows))
        if key not in memo:
            memo.clear()
            d = rows_pattern(rows.cpu() if rows.device.type != "cpu" else rows)
            if error_measure == "mul" and not warned and bool(((d != 0) & (d != 1)).any()):
                warned.append(True)
                warnings.warn("the detection pattern holds values other than 0 and 1; with error_measure='mul' it "
                              "weights the attention (TransformerLens warns too); 'abs' compares the values",
                              UserWarning, stacklevel=2)
            memo[key] = d
        return memo[key]

    if not fixed:  # refuse a bad pattern function before any forward pass
        pattern_for(torch.arange(0, min(batch_size, n_rows)))

    keep = torch.ones(n_pos, n_pos, device=device)
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current_token:
        keep.fill_diagonal_(0)
    uniform = (torch.ones(n_pos, n_pos, device=device).tril() / torch.arange(1, n_pos + 1, device=device)[:, None])
    sums = torch.zeros(L, H, dtype=torch.float64)
    bos_sums = torch.zeros(L, H, dtype=torch.float64)
    chance_sum = torch.zeros(1, dtype=torch.float64)

    def reduce(layer: int, p: Tensor, rows: Tensor) -> None:
        d = pattern_for(rows).to(p.device)
        sums[layer] += _detection_scores(p, d, keep.to(p.device), error_measure, dtype).sum(0)
        if offset:
            bos_sums[layer] += p[..., 0].double().mean(-1).sum(0).cpu()
        if layer == 0:
            u = uniform.to(p.device).expand(len(rows), 1, n_pos, n_pos)
            chance_sum.add_(_detection_scores(u, d, keep.to(p.device), error_measure, dtype).sum())

    require_finite_parameters(model)
    _scan_patterns(model, tokens, reduce, n_rows=n_rows, n_pos=n_pos, cache=cache, batch_size=batch_size)
    sums, bos_sums, chance_sum = all_reduce_sum(sums), all_reduce_sum(bos_sums), all_reduce_sum(chance_sum)
    return BehaviourScores(
        scores=(sums / n_rows).to(torch.float32),
        kind=name,
        labels=head_labels(model),
        options={"detection": label, "error_measure": error_measure, "exclude_bos": exclude_bos,
                 "exclude_current_token": exclude_current_token, "n_seqs": n_rows, "positions": n_pos,
                 "offset": offset, "from_cache": cache is not None},
        processing=processing_state(model),
        bos_attention=(bos_sums / n_rows).to(torch.float32),
        chance=float(chance_sum / n_rows),
    )


def head_scores(
    model: HookedTransformer,
    kind: Kind | HeadName | Detection,
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
    seq_len: int | None = None,
    n_seqs: int = 32,
    seed: int = 0,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
    cache: Any = None,
) -> BehaviourScores:
    """Previous-token, duplicate-token or induction score of every head, or any detection pattern.

    ``kind`` is one of lensworks's scores (mean attention on the target over the query positions
    where the behaviour is defined, on repeated tokens):

    - ``"previous_token"``, ``"duplicate_token"``, ``"induction"``;

    or a detection pattern, scored exactly as TransformerLens's ``detect_head`` scores it (with its
    options ``exclude_bos``, ``exclude_current_token``, ``error_measure``; see the module docstring):

    - ``"previous_token_head"``, ``"duplicate_token_head"``, ``"induction_head"``
      (:func:`detection_pattern`);
    - a lower-triangular ``[pos, pos]`` tensor (the same for every sequence) or ``[batch, pos, pos]``;
    - a function called with each sequence's tokens (``[1, pos]``, on the CPU) that returns its
      ``[pos, pos]`` pattern: TransformerLens's ``get_*_detection_pattern`` functions work as they are.

    Args:
        model: The model.
        kind: What to score (above).
        tokens: Optional ``[batch, pos]`` tokens. For lensworks's kinds they must be repeated
            sequences ``[batch, o + 2*seq_len]`` (``o`` = 1 with BOS; ``seq_len`` is then
            inferred); a detection pattern takes any tokens. Default: :func:`repeated_tokens`
            (with a ``[pos, pos]`` tensor and a ``cache``: none needed).
        seq_len: Length of the random sequence that is repeated (default 50, or the longest
            that fits ``n_ctx``).
        n_seqs: Number of sequences.
        seed: Seed for the random sequences.
        prepend_bos: Whether a BOS comes first (default: the model's default if it has BOS;
            with ``tokens``, detected from the first column).
        batch_size: Sequences per forward pass.
        exclude_bos: Detection patterns only: leave out the attention paid to position 0.
        exclude_current_token: Detection patterns only: leave out each query's attention to itself.
        error_measure: Detection patterns only: ``"mul"`` (default; the fraction of attention on the
            pattern) or ``"abs"`` (one minus the mean L1 distance per row, not rounded).
        cache: Attention patterns already computed for ``tokens`` (an ``ActivationCache`` from
            ``model.run_with_cache(tokens)`` on either TransformerLens line, or a ``{hook name:
            pattern}`` dict; ``[batch, n_heads, pos, pos]`` or, for one sequence,
            ``[n_heads, pos, pos]``): the model does not run.

    Returns:
        :class:`BehaviourScores` with ``scores[layer, head]``, ``bos_attention`` and the
        uniform-attention ``chance`` level; ``options`` records how it was computed.

    Raises:
        LensworksError: An unknown ``kind`` or ``error_measure``; a detection option with one of
            lensworks's kinds; a pattern that is not lower triangular or not ``[pos, pos]`` for these
            tokens; a cache without some layer's pattern, or of other tokens (length, batch).

    Example:
        >>> ind = head_scores(model, "induction", seq_len=20, n_seqs=8)
        >>> [(label, round(score, 2)) for label, score in ind.top(1)]
        [('L1H3', 0.68)]
        >>> toks = repeated_tokens(model, seq_len=20, n_seqs=8)
        >>> _, cache = model.run_with_cache(toks)
        >>> tl = head_scores(model, "induction_head", tokens=toks, cache=cache, exclude_bos=True)
        >>> [(label, round(score, 2)) for label, score in tl.top(1)]  # BOS left out: first-copy rows attend there
        [('L1H3', 0.85)]
    """
    if not isinstance(error_measure, str) or error_measure not in ERROR_MEASURES:
        raise LensworksError(f"error_measure must be one of {list(ERROR_MEASURES)}, got {error_measure!r}")
    exclude_bos = _flag(exclude_bos, "exclude_bos")
    exclude_current_token = _flag(exclude_current_token, "exclude_current_token")
    if isinstance(kind, str) and kind in KINDS:
        if exclude_bos or exclude_current_token or error_measure != "mul":
            raise LensworksError(
                f"exclude_bos, exclude_current_token and error_measure apply to detection patterns; {kind!r} is "
                f"lensworks's mean attention on the target. For TransformerLens's definition pass "
                f"{kind + '_head'!r} (or your own pattern)")
        if tokens is None:
            tokens = repeated_tokens(model, seq_len=seq_len, n_seqs=n_seqs, seed=seed, prepend_bos=prepend_bos)
            offset = int(uses_bos(model, prepend_bos))
        else:
            tokens = as_tokens(model, tokens, what="tokens")
            offset = _check_repeated(model, tokens, prepend_bos)
        return behaviour_scores(model, tokens, offset=offset, kinds=(kind,), batch_size=batch_size, cache=cache)[kind]
    return _detect(model, kind, tokens=tokens, seq_len=seq_len, n_seqs=n_seqs, seed=seed, prepend_bos=prepend_bos,
                   batch_size=batch_size, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                   error_measure=error_measure, cache=cache)
