"""Copying scores: eigenvalues of each head's full OV circuit, from its d_head x d_head form.

The full OV circuit of a head, ``W_E W_V W_O W_U``, is a ``d_vocab x d_vocab`` matrix of rank at
most ``d_head``. Its non-zero eigenvalues are those of the small matrix

    W_O (W_U W_E) W_V        [d_head, d_head]

(eigenvalues of ``AB`` and ``BA`` agree apart from zeros). ``G = W_U W_E`` is ``d_model x d_model``
and is computed once, streaming over the vocabulary, so no vocabulary-sized square matrix is
ever formed. The copying score is ``sum(Re lambda) / sum(|lambda|)`` in [-1, 1]: 1 when every
eigenvalue is positive real (the head copies the tokens it attends to), -1 when all are negative
(it suppresses them).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._dist import rank0_only
from lensworks._results import Reference
from lensworks.circuits.scores import HeadScores
from lensworks.model import (
    HookedTransformer, LensworksError, attention_weights, check_int, embedding, head_labels, processing_state,
    unembedding, model_facts,
)

__all__ = ["copying_scores", "CopyingScores", "eigen_copying_score"]


@dataclasses.dataclass(frozen=True)
class CopyingScores(HeadScores):
    """Copying scores with the eigenvalues behind them.

    Attributes:
        eigenvalues: ``[n_layers, n_heads, d_head]`` complex eigenvalues of ``W_O W_U W_E W_V``,
            the non-zero spectrum of the full OV circuit.
        positive_fraction: ``[n_layers, n_heads]`` share of the non-zero eigenvalues with
            positive real part.
        baseline: Copying scores of random Gaussian W_V, W_O (same shapes; the score is
            scale-free) with the model's own W_E, W_U, as a :class:`~lensworks._results.Reference`
            (None when not computed). ``baseline_mean`` and ``baseline_std`` read its mean and std.
    """

    eigenvalues: Complex[Tensor, "n_layers n_heads d_head"] = None  # type: ignore[assignment]
    positive_fraction: Float[Tensor, "n_layers n_heads"] = None  # type: ignore[assignment]
    baseline: Reference | None = None

    @property
    def baseline_mean(self) -> float | None:
        """Mean copying score of the random heads (None without a baseline)."""
        return None if self.baseline is None else float(self.baseline.mean)

    @property
    def baseline_std(self) -> float | None:
        """Standard deviation of the random heads' copying scores (None without a baseline)."""
        return None if self.baseline is None else float(self.baseline.std)

    def caption(self) -> str:
        """What a copying score is, with the random-weights baseline when it was computed."""
        text = ("Copying score per head: sum of the real parts of the eigenvalues of the full OV circuit "
                "W_E W_V W_O W_U over the sum of their absolute values, from -1 (the head suppresses the token "
                "it attends to) to +1 (it copies it).")
        if self.baseline is not None:
            text += f" Baseline from random W_V, W_O with this model's embeddings: {self.baseline.describe()}."
        return text

    def headline(self) -> str | None:
        """The most copying head and how many heads score above 0.5."""
        label, score = self.top(1)[0]
        n_pos = int((self.scores > 0.5).sum())
        base = f"; {self.baseline.describe()}" if self.baseline is not None else ""
        return (f"Most copying head: {label} ({score:+.3f}{base}); {n_pos} of {self.scores.numel()} heads score "
                "above 0.5.")


def eigen_copying_score(eigenvalues: Tensor, *, rel_tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Score ``sum(Re lambda)/sum(|lambda|)`` and positive fraction over the last axis.

    Eigenvalues with modulus below ``rel_tol`` times the largest of their head count as zero.
    A head whose eigenvalues are all zero (an all-zero OV circuit) scores 0 with a positive
    fraction of 0.

    Example:
        >>> s, f = eigen_copying_score(torch.tensor([2.0, -1.0, 0.0]).to(torch.complex64))
        >>> round(float(s), 3), round(float(f), 3)
        (0.333, 0.5)
    """
    mod = eigenvalues.abs()
    total = mod.sum(-1)
    score = torch.where(total > 0, eigenvalues.real.sum(-1) / total.clamp_min(1e-300), torch.zeros_like(total))
    nonzero = mod > rel_tol * mod.amax(-1, keepdim=True).clamp_min(1e-300)
    n_nz = nonzero.sum(-1)
    pos = ((eigenvalues.real > 0) & nonzero).sum(-1)
    frac = torch.where(n_nz > 0, pos / n_nz.clamp_min(1), torch.zeros_like(total))
    return score, frac.to(total.dtype)


def _gram_ue(model: HookedTransformer, chunk: int) -> Tensor:
    """``W_U W_E`` ([d_model, d_model]) accumulated over vocabulary chunks, in float64."""
    W_E, W_U = embedding(model), unembedding(model)
    if W_U.shape[1] != W_E.shape[0]:
        raise LensworksError(
            f"the full OV circuit W_E W_OV W_U is only square when d_vocab == d_vocab_out; "
            f"got d_vocab={W_E.shape[0]}, d_vocab_out={W_U.shape[1]}"
        )
    compute = model_facts(model).precise_dtype
    G = torch.zeros(W_E.shape[1], W_E.shape[1], dtype=compute, device=W_E.device)
    for s in range(0, W_E.shape[0], chunk):
        G += W_U[:, s : s + chunk].to(compute) @ W_E[s : s + chunk].to(compute)
    return G.double()


def _small_ov(model: HookedTransformer, layer: int, G: Tensor) -> Tensor:
    """``W_O (W_U W_E) W_V`` for every head of one layer, ``[n_heads, d_head, d_head]`` in float64."""
    w = attention_weights(model, [layer])
    return w["W_O"][0].double() @ G @ w["W_V"][0].double()


def _eigvals_by_layer(mats: Sequence[Tensor]) -> list[Tensor]:
    """``torch.linalg.eigvals`` of each batch in ``mats``, on up to ``torch.get_num_threads()``
    threads at once (the same numbers as one after the other: each batch is solved alone)."""
    workers = max(1, min(len(mats), torch.get_num_threads()))

    def solve(m: Tensor) -> Tensor:
        with torch.inference_mode():
            return torch.linalg.eigvals(m)

    if workers == 1:
        return [solve(m) for m in mats]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(solve, mats))


@rank0_only
@adaptive_threads
def copying_scores(
    model: HookedTransformer,
    *,
    baseline: bool = True,
    baseline_samples: int = 20,
    seed: int = 0,
    vocab_chunk: int = 8192,
) -> CopyingScores:
    """Eigenvalue copying score of every head's full OV circuit ``W_E W_V W_O W_U``.

    Computed from the ``d_head x d_head`` matrix ``W_O (W_U W_E) W_V`` (same non-zero
    eigenvalues), in float64 / complex128, so bf16 and fp16 models work too.

    Args:
        model: The model (``d_vocab`` must equal ``d_vocab_out``).
        baseline: Also score random Gaussian ``W_V``, ``W_O`` of the same shapes with the
            model's own embeddings, as a chance level.
        baseline_samples: Random heads for the baseline.
        seed: Seed of the baseline's private generator.
        vocab_chunk: Vocabulary rows per step when forming ``W_U W_E``.

    Returns:
        :class:`CopyingScores`: ``scores`` in [-1, 1], ``positive_fraction``, ``eigenvalues``.

    Example:
        >>> cs = copying_scores(model)
        >>> bool((cs.scores.abs() <= 1).all())
        True
    """
    vocab_chunk = check_int(vocab_chunk, "vocab_chunk", low=1)
    if baseline:
        baseline_samples = check_int(baseline_samples, "baseline_samples", low=2)  # a std needs two
        seed = check_int(seed, "seed")
    with torch.inference_mode():
        G = _gram_ue(model, vocab_chunk)
        # One layer at a time: a Llama-8B-shaped model's W_V and W_O for all layers in float64
        # would take 8.6 GB; one layer's take 270 MB. The small eigenproblems go to the CPU,
        # where LAPACK solves many d_head x d_head problems faster than a GPU's batched geev,
        # one layer per thread (LAPACK releases the GIL).
        eig = torch.stack(_eigvals_by_layer([_small_ov(model, layer, G).cpu() for layer in range(model.cfg.n_layers)]))
        score, frac = eigen_copying_score(eig)
        reference = None
        if baseline:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            d_model, d_head = model.cfg.d_model, model.cfg.d_head
            rv = torch.randn(baseline_samples, d_model, d_head, generator=gen, dtype=torch.float64).to(G.device)
            ro = torch.randn(baseline_samples, d_head, d_model, generator=gen, dtype=torch.float64).to(G.device)
            b_scores, _ = eigen_copying_score(torch.linalg.eigvals((ro @ G @ rv).cpu()))
            reference = Reference.from_samples(b_scores, kind="baseline", label="random W_V, W_O")
    dtype = model.W_E.dtype if model.W_E.dtype in (torch.float32, torch.float64) else torch.float32
    return CopyingScores(
        scores=score.to(dtype),
        kind="copying",
        labels=head_labels(model),
        options={"baseline_samples": baseline_samples if baseline else 0, "seed": seed},
        processing=processing_state(model),
        eigenvalues=eig,
        positive_fraction=frac.to(dtype),
        baseline=reference,
    )
