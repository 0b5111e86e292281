"""Behavioural head scores on repeated random tokens: previous-token, duplicate-token, induction.

A batch of sequences ``[BOS] s s`` (``s`` random, length ``n``; BOS optional) is run once.
Each layer's attention pattern is reduced to per-head scores inside its hook and dropped at
once, so memory holds one layer's pattern at a time. With the first copy starting at offset
``o`` (1 with BOS, else 0) and ``t`` running over the second copy ``[o+n, o+2n)``:

- induction  = mean ``pattern[t, t-n+1]`` (attend to the token after this token's last copy),
- duplicate  = mean ``pattern[t, t-n]``   (attend to this token's last copy),
- previous   = mean ``pattern[t, t-1]`` over every ``t >= o+1``.

Attention to BOS, averaged over the same query positions, is reported beside each score.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lensworks._dist import Shard, all_reduce_sum, is_main
from lensworks._results import Reference
from lensworks.circuits.scores import HeadScores
from lensworks.model._compat import capture_hooks, require_finite_parameters
from lensworks.model import (
    HookedTransformer, LensworksError, as_tokens, check_int, default_seq_len, head_labels, hook_name,
    model_facts, processing_state, uses_bos,
)

__all__ = ["head_scores", "BehaviourScores", "repeated_tokens", "behaviour_scores", "KINDS"]

Kind = Literal["previous_token", "duplicate_token", "induction"]
KINDS: tuple[str, ...] = ("previous_token", "duplicate_token", "induction")


@dataclasses.dataclass(frozen=True)
class BehaviourScores(HeadScores):
    """Behavioural head scores plus attention to BOS and the chance level.

    Attributes:
        bos_attention: ``[n_layers, n_heads]`` mean attention to the BOS position over the
            scored query positions (all zero without BOS).
        chance: The score a head attending uniformly to every earlier position would get.
    """

    bos_attention: Float[Tensor, "n_layers n_heads"] = None  # type: ignore[assignment]
    chance: float = 0.0

    def references(self) -> dict[str, Reference]:
        """``{"chance": ...}``: the exact score of uniform attention over the earlier positions."""
        return {**super().references(), "chance": Reference.exact(float(self.chance), kind="chance")}

    def caption(self) -> str:
        """What the behaviour is, measured on repeated random tokens, with the chance level."""
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


def behaviour_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    *,
    offset: int,
    kinds: tuple[str, ...] = KINDS,
    batch_size: int = 32,
    progress: bool | None = None,
    atol: float | None = None,
) -> dict[str, BehaviourScores]:
    """Several behavioural scores in one pass over already-repeated ``tokens``.

    ``tokens`` must be ``[batch, offset + 2n]`` with both copies equal; see :func:`head_scores`
    for the definitions. Returns one :class:`BehaviourScores` per kind.

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
    seen: set[int] = set()
    names = {hook_name("pattern", l): l for l in range(L)}
    tol = _row_tolerance(cfg.dtype) if atol is None else atol

    def hook(name: str, pattern: Tensor) -> None:
        layer = names[name]
        seen.add(layer)
        p = pattern.detach()
        rows = p.sum(-1)
        if not torch.allclose(rows.float(), torch.ones_like(rows, dtype=torch.float32), atol=tol):
            worst = float((rows - 1).abs().max())
            raise LensworksError(
                f"attention pattern rows of layer {layer} do not sum to 1 (max deviation {worst:.2e}); "
                "the pattern hook did not see a normal softmax pattern (rows of zeros: the attention scores held NaN or "
                "inf, which TransformerLens zeroes, so the residual stream entering this layer overflowed)"
            )
        for k in kinds:
            d, lo, hi = slices[k]
            diag = p.diagonal(offset=-d, dim1=-2, dim2=-1)[..., lo:hi]  # [b, H, n_scored]
            sums[k][layer] += diag.double().mean(-1).sum(0).cpu()
            if offset:
                q0, q1 = _query_range(k, offset, n)
                bos_sums[k][layer] += p[:, :, q0:q1, 0].double().mean(-1).sum(0).cpu()
        return None

    if progress is None:
        progress = B * T * T * L * H > 5e8
    shard = Shard("tokens", model)
    with torch.inference_mode():
        for start in tqdm(range(0, B, batch_size), desc="head scores", disable=not progress or not is_main(), leave=False):
            batch = shard.take(tokens[start : start + batch_size])  # under torch.distributed: this rank's rows
            if batch.shape[0]:
                model.run_with_hooks(batch, return_type=None, fwd_hooks=capture_hooks(list(names), hook))
    shard.finish()
    for k in kinds:  # sums over sequences: add the other ranks' shares
        sums[k], bos_sums[k] = all_reduce_sum(sums[k]), all_reduce_sum(bos_sums[k])
    if shard.size > 1:  # a layer counts as captured if any rank captured it
        flags = all_reduce_sum(torch.tensor([float(l in seen) for l in range(L)]))
        seen = {l for l in range(L) if float(flags[l]) > 0}
    missing = sorted(set(range(L)) - seen)
    if missing:
        raise LensworksError(f"attention patterns of layers {missing} were not captured (is the pattern hook bypassed?)")
    labels = head_labels(model)
    out = {}
    for k in kinds:
        q0, q1 = _query_range(k, offset, n)
        chance = float(torch.mean(1.0 / (torch.arange(q0, q1, dtype=torch.float64) + 1)))
        out[k] = BehaviourScores(
            scores=(sums[k] / B).to(torch.float32),
            kind=k,
            labels=labels,
            options={"seq_len": n, "n_seqs": B, "offset": offset},
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


def head_scores(
    model: HookedTransformer,
    kind: Kind,
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
    seq_len: int | None = None,
    n_seqs: int = 32,
    seed: int = 0,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
) -> BehaviourScores:
    """Previous-token, duplicate-token or induction score of every head.

    Args:
        model: The model.
        kind: "previous_token", "duplicate_token" or "induction".
        tokens: Optional ``[batch, o + 2*seq_len]`` repeated sequences (``o`` = 1 with BOS).
            ``seq_len`` is then inferred. Default: :func:`repeated_tokens`.
        seq_len: Length of the random sequence that is repeated (default 50, or the longest
            that fits ``n_ctx``).
        n_seqs: Number of sequences.
        seed: Seed for the random sequences.
        prepend_bos: Whether a BOS comes first (default: the model's default if it has BOS;
            with ``tokens``, detected from the first column).
        batch_size: Sequences per forward pass.

    Returns:
        :class:`BehaviourScores` with ``scores[layer, head]`` = mean attention to the target
        position, ``bos_attention`` and the uniform-attention ``chance`` level.

    Example:
        >>> ind = head_scores(model, "induction", seq_len=20, n_seqs=8)
        >>> [(label, round(score, 2)) for label, score in ind.top(1)]
        [('L1H3', 0.68)]
    """
    if kind not in KINDS:
        raise LensworksError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if tokens is None:
        tokens = repeated_tokens(model, seq_len=seq_len, n_seqs=n_seqs, seed=seed, prepend_bos=prepend_bos)
        offset = int(uses_bos(model, prepend_bos))
    else:
        tokens = as_tokens(model, tokens, what="tokens")
        offset = _check_repeated(model, tokens, prepend_bos)
    return behaviour_scores(model, tokens, offset=offset, kinds=(kind,), batch_size=batch_size)[kind]
