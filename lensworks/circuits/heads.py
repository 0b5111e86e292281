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
from lensworks.circuits._cache import cached_patterns
from lensworks.circuits.scores import HeadScores
from lensworks.model._compat import capture_hooks, require_finite_parameters
from lensworks.model import (
    HookedTransformer, LensworksError, as_tokens, check_int, default_seq_len, head_labels, hook_name,
    model_facts, processing_state, uses_bos,
)

__all__ = ["head_scores", "BehaviourScores", "repeated_tokens", "behaviour_scores", "detection_pattern", "KINDS",
           "HEAD_NAMES", "ERROR_MEASURES"]

Kind = Literal["previous_token", "duplicate_token", "induction"]
KINDS: tuple[str, ...] = ("previous_token", "duplicate_token", "induction")
#: TransformerLens's named detection patterns (``transformer_lens.head_detector.HEAD_NAMES``).
HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: tuple[str, ...] = ("previous_token_head", "duplicate_token_head", "induction_head")
ErrorMeasure = Literal["mul", "abs"]
ERROR_MEASURES: tuple[str, ...] = ("mul", "abs")
#: What ``head_scores`` accepts as its ``kind``: a lensworks kind, a TransformerLens head name, a
#: ``[pos, pos]`` / ``[batch, pos, pos]`` pattern, or a function ``tokens [1, pos] -> [pos, pos]``.
Detection = Union[str, Tensor, Callable[[Tensor], Any]]


@dataclasses.dataclass(frozen=True)
class BehaviourScores(HeadScores):
    """Behavioural head scores plus attention to BOS and the chance level.

    Attributes:
        bos_attention: ``[n_layers, n_heads]`` mean attention to the BOS position over the
            scored query positions (every query position for a detection pattern; all zero
            without BOS).
        chance: The score a head attending uniformly to every earlier position would get.

    A detection-pattern score (TransformerLens's ``detect_head``) records in ``options`` the
    pattern (``"detection"``), ``error_measure``, ``exclude_bos``, ``exclude_current_token``,
    ``n_seqs``, ``positions``, ``offset`` and ``from_cache``; lensworks's own kinds record
    ``seq_len``, ``n_seqs``, ``offset`` and ``from_cache``.
    """

    bos_attention: Float[Tensor, "n_layers n_heads"] = None  # type: ignore[assignment]
    chance: float = 0.0

    def references(self) -> dict[str, Reference]:
        """``{"chance": ...}``: the exact score of uniform attention over the earlier positions."""
        return {**super().references(), "chance": Reference.exact(float(self.chance), kind="chance")}

    def caption(self) -> str:
        """What the behaviour is, measured on repeated random tokens, with the chance level."""
        if "error_measure" in self.options:  # a detection pattern, as TransformerLens's detect_head scores it
            o = self.options
            masked = [w for w, on in (("BOS column", o["exclude_bos"]), ("current token", o["exclude_current_token"])) if on]
            how = ("fraction of each head's attention that falls on the pattern" if o["error_measure"] == "mul"
                   else "one minus the mean L1 distance between the head's rows and the pattern's rows")
            return (f"{self.kind.replace('_', '-')} detection score per head ({o['detection']}, error_measure="
                    f"{o['error_measure']!r}{', excluding the ' + ' and the '.join(masked) if masked else ''}): {how}, "
                    f"mean over {o['n_seqs']} sequences of {o['positions']} tokens. Uniform attention over the "
                    f"earlier positions gives the {self.references()['chance'].describe()}.")
        what = _BEHAVIOUR.get(self.kind, self.kind)
        return (f"{self.kind.replace('_', '-')} score per head: mean {what}, on repeated random token sequences. "
                f"Uniform attention over the earlier positions gives the {self.references()['chance'].describe()}.")

    def headline(self) -> str | None:
        """The strongest head for this behaviour."""
        label, score = self.top(1)[0]
        return (f"Strongest {self.kind.replace('_', '-')} head: {label} ({score:.3f}; "
                f"{self.references()['chance'].describe()}).")


_BEHAVIOUR = {
    "previous_token": "attention from each position to the one before it",
    "duplicate_token": "attention from the second copy of a token to its first copy",
    "induction": "attention to the token just after the previous copy of the current token",
}


def _special_ids(model: HookedTransformer) -> set[int]:
    tok = model.tokenizer
    if tok is None:
        return set()
    return {int(i) for i in tok.all_special_ids if i is not None}


def _row_tolerance(dtype: torch.dtype) -> float:
    """How far softmax rows may sum from 1: fp32 rounding, or bf16/fp16's ~4e-3 per row."""
    return 1e-3 if dtype in (torch.float32, torch.float64) else 2e-2


def repeated_tokens(
    model: HookedTransformer,
    *,
    seq_len: int | None = None,
    n_seqs: int = 32,
    seed: int = 0,
    prepend_bos: bool | None = None,
) -> Int[Tensor, "n_seqs pos"]:
    """Sequences ``[BOS] s s`` with ``s`` random and never a special token.

    Each ``s`` holds distinct tokens when the vocabulary allows (so "the previous copy" of a
    token is unambiguous), drawn with a private generator (global RNG untouched).

    Args:
        model: The model (its vocabulary and special tokens).
        seq_len: Length ``n`` of ``s`` (default 50, or the longest that fits ``n_ctx``).
        n_seqs: Number of sequences.
        seed: Generator seed.
        prepend_bos: Start each sequence with BOS (default: the model's default when it has a
            BOS token).

    Returns:
        ``[n_seqs, o + 2 * seq_len]`` token ids on the model's device.

    Example:
        >>> repeated_tokens(model, seq_len=5, n_seqs=2, prepend_bos=False).shape
        torch.Size([2, 10])
    """
    bos = uses_bos(model, prepend_bos)
    if seq_len is None:
        seq_len = default_seq_len(model, bos=bos)
    seq_len = check_int(seq_len, "seq_len", low=2)
    n_seqs = check_int(n_seqs, "n_seqs", low=1)
    seed = check_int(seed, "seed")
    total = int(bos) + 2 * seq_len
    if total > model.cfg.n_ctx:
        raise LensworksError(
            f"repeated sequences of {total} tokens (seq_len={seq_len}, twice{', plus BOS' if bos else ''}) "
            f"are longer than the model's n_ctx={model.cfg.n_ctx}; pass seq_len <= {(model.cfg.n_ctx - int(bos)) // 2}"
        )
    special = _special_ids(model)
    allowed = torch.tensor([i for i in range(model.cfg.d_vocab) if i not in special])
    if len(allowed) < 2:
        raise LensworksError(f"the vocabulary has only {len(allowed)} non-special tokens")
    gen = torch.Generator().manual_seed(seed)
    if len(allowed) >= seq_len:
        idx = torch.rand(n_seqs, len(allowed), generator=gen).argsort(dim=1)[:, :seq_len]
    else:
        idx = torch.randint(len(allowed), (n_seqs, seq_len), generator=gen)
    s = allowed[idx]
    return model_facts(model).add_bos(torch.cat([s, s], dim=1), bos).to(model_facts(model).device)


def _diag_slices(o: int, n: int) -> dict[str, tuple[int, int, int]]:
    """(diagonal offset d, first i, last i) such that ``pattern[i + d, i]`` are the scored entries."""
    return {
        "previous_token": (1, o, o + 2 * n - 1),
        "duplicate_token": (n, o, o + n),
        "induction": (n - 1, o + 1, o + n + 1),
    }


def _query_range(kind: str, o: int, n: int) -> tuple[int, int]:
    return (o + 1, o + 2 * n) if kind == "previous_token" else (o + n, o + 2 * n)


def _scan_patterns(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"] | None,
    reduce: Callable[[int, Tensor, Tensor], None],
    *,
    n_rows: int,
    n_pos: int,
    cache: Any = None,
    batch_size: int = 32,
    progress: bool | None = None,
    atol: float | None = None,
) -> None:
    """Call ``reduce(layer, pattern, rows)`` for every layer's ``[b, n_heads, pos, pos]`` pattern of
    every batch of rows (``rows``: their indices in ``tokens``), from a forward pass over ``tokens``
    or, with ``cache``, from the user's cache (no forward pass). Each pattern's rows must sum to 1."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    tol = _row_tolerance(cfg.dtype) if atol is None else atol
    seen: set[int] = set()

    def check(layer: int, p: Tensor) -> None:
        rows = p.sum(-1)
        if not torch.allclose(rows.float(), torch.ones_like(rows, dtype=torch.float32), atol=tol):
            worst = float((rows - 1).abs().max())
            source = ("the cached pattern is not a softmax pattern (was the cache edited, or computed with hooks "
                      "that changed it?)" if cache is not None else
                      "the pattern hook did not see a normal softmax pattern (rows of zeros: the attention scores held "
                      "NaN or inf, which TransformerLens zeroes, so the residual stream entering this layer overflowed)")
            raise LensworksError(
                f"attention pattern rows of layer {layer} do not sum to 1 (max deviation {worst:.2e}); {source}")

    if progress is None:
        progress = n_rows * n_pos * n_pos * L * H > 5e8
    if cache is not None:
        if is_distributed():
            raise LensworksError("cache: under torch.distributed pass tokens, not an activation cache (it belongs to one "
                                 "process)")
        patterns = cached_patterns(model, cache, range(L), batch=n_rows, positions=n_pos)
        for start in tqdm(range(0, n_rows, batch_size), desc="head scores", disable=not progress or not is_main(),
                          leave=False):
            rows = torch.arange(start, min(start + batch_size, n_rows))
            for layer in range(L):
                p = patterns[layer][start : start + batch_size].detach()
                check(layer, p)
                reduce(layer, p, rows)
        return
    assert tokens is not None
    names = {hook_name("pattern", l): l for l in range(L)}
    current: list[Tensor] = []

    def hook(name: str, pattern: Tensor) -> None:
        layer = names[name]
        seen.add(layer)
        p = pattern.detach()
        check(layer, p)
        reduce(layer, p, current[0])
        return None

    shard = Shard("tokens", model)
    with torch.inference_mode():
        for start in tqdm(range(0, n_rows, batch_size), desc="head scores", disable=not progress or not is_main(),
                          leave=False):
            end = min(start + batch_size, n_rows)
            batch, rows = shard.take(tokens[start:end], torch.arange(start, end))  # under torch.distributed: this rank's rows
            if batch.shape[0]:
                current[:] = [rows]
                model.run_with_hooks(batch, return_type=None, fwd_hooks=capture_hooks(list(names), hook))
    shard.finish()
    if shard.size > 1:  # a layer counts as captured if any rank captured it
        flags = all_reduce_sum(torch.tensor([float(l in seen) for l in range(L)]))
        seen = {l for l in range(L) if float(flags[l]) > 0}
    missing = sorted(set(range(L)) - seen)
    if missing:
        raise LensworksError(f"attention patterns of layers {missing} were not captured (is the pattern hook bypassed?)")


def behaviour_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    offset: int,
    kinds: tuple[str, ...] = KINDS,
    batch_size: int = 32,
    progress: bool | None = None,
    atol: float | None = None,
    cache: Any = None,
) -> dict[str, BehaviourScores]:
    """Several behavioural scores in one pass over already-repeated ``tokens``.

    ``tokens`` must be ``[batch, offset + 2n]`` with both copies equal; see :func:`head_scores`
    for the definitions. With ``cache`` (an ``ActivationCache`` of ``tokens`` or a
    ``{hook name: pattern}`` dict) the patterns are read from it and the model does not run.
    Returns one :class:`BehaviourScores` per kind.

    Example:
        >>> toks = repeated_tokens(model, seq_len=10, n_seqs=4)  # BOS, then 10 tokens twice
        >>> out = behaviour_scores(model, toks, offset=1)
        >>> list(out)
        ['previous_token', 'duplicate_token', 'induction']
    """
    for k in kinds:
        if k not in KINDS:
            raise LensworksError(f"kind must be one of {list(KINDS)}, got {k!r}")
    batch_size = check_int(batch_size, "batch_size", low=1)
    require_finite_parameters(model)
    B, T = tokens.shape
    n = (T - offset) // 2
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    slices = _diag_slices(offset, n)
    sums = {k: torch.zeros(L, H, dtype=torch.float64) for k in kinds}
    bos_sums = {k: torch.zeros(L, H, dtype=torch.float64) for k in kinds}

    def reduce(layer: int, p: Tensor, rows: Tensor) -> None:
        for k in kinds:
            d, lo, hi = slices[k]
            diag = p.diagonal(offset=-d, dim1=-2, dim2=-1)[..., lo:hi]  # [b, H, n_scored]
            sums[k][layer] += diag.double().mean(-1).sum(0).cpu()
            if offset:
                q0, q1 = _query_range(k, offset, n)
                bos_sums[k][layer] += p[:, :, q0:q1, 0].double().mean(-1).sum(0).cpu()

    _scan_patterns(model, tokens, reduce, n_rows=B, n_pos=T, cache=cache, batch_size=batch_size, progress=progress,
                   atol=atol)
    for k in kinds:  # sums over sequences: add the other ranks' shares
        sums[k], bos_sums[k] = all_reduce_sum(sums[k]), all_reduce_sum(bos_sums[k])
    labels = head_labels(model)
    out = {}
    for k in kinds:
        q0, q1 = _query_range(k, offset, n)
        chance = float(torch.mean(1.0 / (torch.arange(q0, q1, dtype=torch.float64) + 1)))
        out[k] = BehaviourScores(
            scores=(sums[k] / B).to(torch.float32),
            kind=k,
            labels=labels,
            options={"seq_len": n, "n_seqs": B, "offset": offset, "from_cache": cache is not None},
            processing=processing_state(model),
            bos_attention=(bos_sums[k] / B).to(torch.float32),
            chance=chance,
        )
    return out


def _check_repeated(model: HookedTransformer, tokens: Tensor, prepend_bos: bool | None) -> int:
    o = model_facts(model).leading_bos(tokens, prepend_bos)
    rest = tokens.shape[1] - o
    if rest < 4 or rest % 2:
        raise LensworksError(
            f"tokens must be [batch, o + 2*seq_len] with o={o} ({'with' if o else 'without'} BOS) and seq_len >= 2; "
            f"got {tokens.shape[1]} positions"
            + ("; pass prepend_bos=False if the first token is not a BOS" if o and prepend_bos is None else "")
        )
    n = rest // 2
    if not torch.equal(tokens[:, o : o + n], tokens[:, o + n :]):
        raise LensworksError(f"tokens must repeat: positions [{o}, {o + n}) and [{o + n}, {o + 2 * n}) differ")
    return o


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
