"""Behavioural head scores on repeated random tokens: the ``previous_token``, ``duplicate_token``
and ``induction`` kinds (see :mod:`lensworks.circuits.heads` for the definitions) and the scan
that reduces each layer's attention pattern to per-head sums inside its hook."""

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

__all__ = ["BehaviourScores", "repeated_tokens", "behaviour_scores", "KINDS"]

Kind = Literal["previous_token", "duplicate_token", "induction"]
KINDS: tuple[str, ...] = ("previous_token", "duplicate_token", "induction")


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

    ``tokens`` must be ``[batch, offset + 2n]`` with both copies equal; see :func:`lensworks.circuits.head_scores`
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
