"""Token subspaces (seed 004): residual vectors that make the rest of the model predict one token
with near certainty, their best-fitting low-rank subspace, and how other vectors align with it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._threads import adaptive_threads
from lensworks._results import Reference, Result
from lensworks.geometry._common import progress_bar, softcap
from lensworks.model._core import check_int
from lensworks.model._compat import logits_from_block
from lensworks.model import (
    HookedTransformer, LensworksError, check_float, check_int, check_layer, processing_state, token_strings, model_facts,
)

__all__ = ["TokenSubspaces", "Alignment", "token_subspaces", "alignment"]


def _tail_logits(model: HookedTransformer, x: Tensor, at: Union[str, int]) -> Tensor:
    """Logits from a ``[n, d_model]`` residual inserted at ``at`` (single-position sequences)."""
    x = x.to(model.cfg.dtype)  # learned embeddings are float32; a bf16 model reads bf16
    if at == "ln_final":
        h = model.ln_final(x) if model.cfg.normalization_type is not None else x
        return softcap(model, model.unembed(h))
    # the model's own forward applies its output soft-cap already
    return logits_from_block(model, x[:, None, :], int(at))[:, 0]


@dataclass(frozen=True)
class TokenSubspaces(Result):
    """Learned embeddings per token and the rank-k subspace that fits them.

    Attributes:
        tokens: ``[n_tokens]`` token ids.
        token_labels: Their strings.
        basis: ``[n_tokens, rank, d_model]`` orthonormal rows (first right singular vectors of
            each token's learned embeddings), signed so the embeddings project positively.
        singular_values: ``[n_tokens, min(n_samples, d_model)]`` of each token's embedding matrix.
        final_prob: ``[n_tokens, n_samples]`` probability of the token from each learned embedding.
        basis_prob: ``[n_tokens]`` probability of the token when the first basis vector, scaled to
            the embeddings' mean norm, is fed in instead (how well the linear picture holds).
        at: Where the embeddings were inserted (``"ln_final"`` or a block index).
    """

    tokens: Int[Tensor, " n_tokens"]
    token_labels: tuple[str, ...]
    basis: Float[Tensor, "n_tokens rank d_model"]
    singular_values: Float[Tensor, "n_tokens k"]
    final_prob: Float[Tensor, "n_tokens n_samples"]
    basis_prob: Float[Tensor, " n_tokens"]
    at: Union[str, int]
    target_prob: float
    steps_run: int
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Which tokens were analysed and why (the default picks at most ``n_tokens`` of the vocabulary).
    token_choice: str = "given"
    #: Why the optimisation stopped: "target reached", "stalled" or "steps ran out".
    stopped: str = ""

    def caption(self) -> str:
        """What was learned and what the bars compare."""
        return (f"Token subspaces (seed 004): for each token, embeddings inserted at {self.at} were learned until the "
                f"model gives the token probability {self.target_prob:g}; bars show how often they got there and the "
                "probability reached by their first singular direction alone (scaled to their mean norm).")

    def headline(self) -> str | None:
        """How well one direction per token stands in for the learned embeddings."""
        return (f"One direction per token gives the token probability {float(self.basis_prob.mean()):.2f} on average "
                f"over {self.tokens.numel()} tokens.")

    def to_frame(self):
        """One row per token: reach of the target, singular-value ratio s1/s2, basis probability."""
        import pandas as pd

        s = self.singular_values
        ratio = (s[:, 0] / s[:, 1].clamp_min(1e-30)).tolist() if s.shape[1] > 1 else [float("inf")] * s.shape[0]
        return pd.DataFrame({
            "token": self.tokens.tolist(), "label": list(self.token_labels),
            "reached_target": (self.final_prob >= self.target_prob).float().mean(1).tolist(),
            "min_prob": self.final_prob.min(1).values.tolist(), "s1_over_s2": ratio,
            "basis_prob": self.basis_prob.tolist(),
        })

    def figure(self):
        """Bars per token: probability reached by the learned embeddings and by the first direction."""
        from lensworks.geometry._plots import subspaces_figure

        return subspaces_figure(self)


def _default_tokens(model: HookedTransformer, d_vocab: int, n_tokens: int) -> tuple[Tensor, str]:
    """The tokens ``token_subspaces`` analyses when none are given, and a sentence saying which."""
    tok = model.tokenizer
    special = {int(i) for i in getattr(tok, "all_special_ids", []) or [] if i is not None} if tok is not None else set()
    ids = torch.tensor([i for i in range(d_vocab) if i not in special] or list(range(d_vocab)))
    if len(ids) <= n_tokens:
        return ids, f"every token of the vocabulary ({len(ids)}{', special tokens left out' if special else ''})"
    pick = torch.linspace(0, len(ids) - 1, n_tokens).round().long()
    return ids[pick], (f"{n_tokens} of the vocabulary's {len(ids)} tokens, evenly spaced ids (default; pass "
                       "tokens= to choose)")


@adaptive_threads
def token_subspaces(
    model: HookedTransformer,
    tokens: Union[Sequence[int], Tensor, None] = None,
    *,
    at: Union[str, int] = "ln_final",
    n_samples: int = 100,
    rank: int = 1,
    target_prob: float = 0.99,
    steps: int = 500,
    lr: float = 0.1,
    seed: int = 0,
    progress: bool | None = None,
    n_tokens: int = 64,
    stall_steps: int = 25,
) -> TokenSubspaces:
    """Learn, for each token, ``n_samples`` residual vectors that make the model predict it, then SVD.

    Each vector starts at a random Gaussian point and is optimised (Adam on the negative log
    likelihood of the token; the model's weights are fixed and never receive gradients) until
    every sample gives the token probability ``>= target_prob`` or ``steps`` run out. The
    right singular vectors of each token's ``[n_samples, d_model]`` matrix give its rank-``k``
    linear subspace. Cost: ``steps`` forward/backward passes of ``n_tokens * n_samples``
    vectors through the part of the model after ``at``.

    Args:
        model: The model.
        tokens: Token ids (default: the whole vocabulary when it has at most ``n_tokens``
            tokens, else ``n_tokens`` ids spread evenly over it, special tokens left out; the
            result's ``token_choice`` says which). The cost grows with ``len(tokens) * n_samples
            * d_vocab``, so the whole vocabulary of a real model would take hours.
        at: ``"ln_final"`` (vectors go into the final normalisation, the most linear place) or a
            block index ``b`` (vectors are ``resid_pre`` of block ``b``, one position).
        n_samples: Learned embeddings per token.
        rank: Subspace dimension ``k``.
        target_prob: Stop when every sample reaches this probability.
        steps: Maximum optimisation steps.
        lr: Adam learning rate.
        seed: Seed of the random starting points (a local generator; global RNG untouched).
        progress: Progress bar (None: only on a terminal).
        n_tokens: How many tokens the default (``tokens=None``) picks at most.
        stall_steps: Stop when the mean log-probability of the target tokens has improved by
            less than 1e-3 over this many steps (the model cannot give some tokens
            ``target_prob``; 0 turns the check off). The result's ``stopped`` says which rule ended it.

    Example:
        >>> subs = token_subspaces(zoo.load("char-mlp"), tokens=[67, 68], at="ln_final", n_samples=8)  # 'a', 'b'
        >>> subs.to_frame()[["label", "reached_target"]].values.tolist()
        [['a', 1.0], ['b', 1.0]]
    """
    d_model, d_vocab = model.cfg.d_model, model.cfg.d_vocab_out
    if at != "ln_final":
        if isinstance(at, str):
            raise LensworksError(f"at: expected 'ln_final' or a block index, got {at!r}")
        at = check_layer(model, at)
        if model.cfg.positional_embedding_type == "shortformer":
            raise LensworksError("at: inserting at a block is not supported for shortformer models (the positional "
                                 "embedding is added inside attention); use at='ln_final'")
    if tokens is not None and not isinstance(tokens, Tensor) and (
            isinstance(tokens, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)):
        raise LensworksError(f"tokens: expected token ids (ints or an integer tensor), got {tokens!r}")
    if tokens is not None and not isinstance(tokens, Tensor) and any(not 0 <= t < d_vocab for t in tokens):
        raise LensworksError(f"tokens: ids must lie in [0, {d_vocab}), got {[t for t in tokens if not 0 <= t < d_vocab][:5]}")
    if isinstance(tokens, Tensor) and (tokens.is_floating_point() or tokens.dtype == torch.bool):
        raise LensworksError(f"tokens: expected integer token ids, got a {tokens.dtype} tensor")
    n_tokens = check_int(n_tokens, "n_tokens", low=1)
    stall_steps = check_int(stall_steps, "stall_steps", low=0)
    if tokens is None:
        toks, token_choice = _default_tokens(model, d_vocab, n_tokens)
    else:
        toks, token_choice = torch.as_tensor(tokens).flatten().long(), "given"
    if toks.numel() == 0:
        raise LensworksError("tokens: expected at least one token id, got none")
    if int(toks.min()) < 0 or int(toks.max()) >= d_vocab:
        raise LensworksError(f"tokens: ids must lie in [0, {d_vocab}), got range [{int(toks.min())}, {int(toks.max())}]")
    n_samples = check_int(n_samples, "n_samples", low=1)
    rank = check_int(rank, "rank", low=1, high=min(n_samples, d_model) + 1)
    target_prob = check_float(target_prob, "target_prob", low=0, high=1, inclusive=False)
    steps = check_int(steps, "steps", low=0)
    lr = check_float(lr, "lr", low=0, inclusive=False)
    if lr > 1e4:
        raise LensworksError(f"lr must be at most 1e4 (Adam on unit-scale embeddings), got {lr!r}")
    seed = check_int(seed, "seed")
    device = torch.device(model_facts(model).device)
    gen = torch.Generator().manual_seed(seed)
    n_t = toks.numel()
    emb = torch.randn(n_t * n_samples, d_model, generator=gen).to(device)
    target = toks.repeat_interleave(n_samples).to(device)
    emb.requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=lr)
    log_target = math.log(target_prob)
    steps_run, stopped, history = 0, "steps ran out", []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in progress_bar(range(steps), desc="token_subspaces", progress=progress):
            logp = _tail_logits(model, emb, at).float().log_softmax(-1).gather(-1, target[:, None])[:, 0]
            if float(logp.detach().min()) >= log_target:
                stopped = "target reached"
                break
            history.append(float(logp.detach().mean()))
            if stall_steps and len(history) > stall_steps and history[-1] - history[-1 - stall_steps] < 1e-3:
                stopped = "stalled"
                break
            loss = -logp.sum()
            (grad,) = torch.autograd.grad(loss, [emb])  # never touches the model's .grad
            emb.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps_run += 1
    emb = emb.detach()
    with torch.inference_mode():
        probs = _tail_logits(model, emb, at).float().softmax(-1).gather(-1, target[:, None])[:, 0]
        x = emb.view(n_t, n_samples, d_model).float()
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        basis = vh[:, :rank]  # [n_t, rank, d]
        sign = torch.sign((x @ basis.transpose(1, 2)).sum(1))  # [n_t, rank]
        sign[sign == 0] = 1
        basis = basis * sign[..., None]
        scale = x.norm(dim=-1).mean(1)  # [n_t]
        bp = _tail_logits(model, (basis[:, 0] * scale[:, None]).to(emb.dtype), at).float().softmax(-1)
        basis_prob = bp.gather(-1, toks.to(device)[:, None])[:, 0]
    labels = tuple(token_strings(model, toks))
    return TokenSubspaces(
        tokens=toks, token_labels=labels, basis=basis.cpu(), singular_values=s.cpu(),
        final_prob=probs.view(n_t, n_samples).cpu(), basis_prob=basis_prob.cpu(), at=at,
        target_prob=target_prob, steps_run=steps_run, processing=processing_state(model),
        token_choice=token_choice, stopped=stopped,
    )


@dataclass(frozen=True)
class Alignment(Result):
    """How each vector aligns with each token subspace.

    Attributes:
        cosine: ``[n_vectors, n_tokens]`` cosine between a vector and its projection on the
            token's subspace (``||B x|| / ||x||`` for an orthonormal basis ``B``; in [0, 1]).
        ranking: ``[n_vectors, n_tokens]`` token positions (into ``tokens``) sorted by cosine, best first.
        tokens: Token ids of the subspaces.
        token_labels: Their strings.
    """

    cosine: Float[Tensor, "n_vectors n_tokens"]
    ranking: Int[Tensor, "n_vectors n_tokens"]
    tokens: Int[Tensor, " n_tokens"]
    token_labels: tuple[str, ...]
    processing: dict[str, Any] = dataclasses.field(default_factory=dict)

    def caption(self) -> str:
        """What the heatmap shows."""
        return ("Cosine between each vector and its projection onto each token's subspace (||B x|| / ||x||, "
                "between 0 and 1), for the tokens best aligned on average.")

    def to_frame(self):
        """Long format: one row per vector and token with the cosine and the token's rank for it."""
        import pandas as pd

        n_vec, n_tok = self.cosine.shape
        rank = torch.empty_like(self.ranking)
        rank.scatter_(1, self.ranking, torch.arange(n_tok).expand_as(self.ranking).contiguous())
        return pd.DataFrame({
            "vector": [v for v in range(n_vec) for _ in range(n_tok)],
            "token": self.tokens.tolist() * n_vec,
            "label": list(self.token_labels) * n_vec,
            "cosine": self.cosine.flatten().tolist(),
            "rank": rank.flatten().tolist(),
        })

    def top(self, vector: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best-aligned tokens of one vector with their cosines."""
        vector = check_int(vector, "vector", low=0, high=self.ranking.shape[0])
        idx = self.ranking[vector, : check_int(k, "k", low=1)].tolist()
        return [(self.token_labels[i], float(self.cosine[vector, i])) for i in idx]

    def criterion(self, probs: Float[Tensor, "n_vectors d_vocab"], *, mass: float = 0.9,
                  n_top: int | None = None) -> dict[str, Any]:
        """Seed 004's test: do the tokens holding ``mass`` of ``probs`` rank in the top half?

        For each vector, ``top_n`` is the number of most probable tokens (under ``probs``, e.g.
        the neighbour approximation's prediction) needed to reach ``mass``; the vector passes
        when all of them are among the ``n_top`` (default: half the subspaces) best-aligned
        subspaces. The chance rate is exact under a uniformly random ranking: for one vector,
        ``prod_{i<top_n} (n_top - i) / (n_tokens - i)``; its mean over vectors is reported.

        Returns:
            ``{"satisfied": bool tensor [n_vectors], "rate": float, "chance_rate": float,
            "chance": Reference, "top_n": int tensor}`` (``chance`` is ``chance_rate`` as an exact
            :class:`~lensworks._results.Reference`).
        """
        n_tok = self.tokens.numel()
        if probs.ndim != 2 or probs.shape[0] != self.cosine.shape[0]:
            raise LensworksError(f"probs: expected shape [{self.cosine.shape[0]}, d_vocab], got {tuple(probs.shape)}")
        if int(self.tokens.max()) >= probs.shape[1]:
            raise LensworksError(f"probs has {probs.shape[1]} columns but a subspace token id is {int(self.tokens.max())}")
        n_top = n_tok // 2 if n_top is None else int(n_top)
        p = probs[:, self.tokens].float()  # restricted to tokens that have subspaces
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        order = p.argsort(-1, descending=True)
        cum = p.gather(-1, order).cumsum(-1)
        top_n = ((cum < mass).sum(-1) + 1).clamp(max=n_tok)
        rank_of = torch.empty_like(self.ranking)
        rank_of.scatter_(1, self.ranking, torch.arange(n_tok).expand_as(self.ranking).contiguous())
        sat = []
        chance = []
        for v in range(p.shape[0]):
            needed = order[v, : int(top_n[v])]
            sat.append(bool((rank_of[v, needed] < n_top).all()))
            k = int(top_n[v])
            chance.append(math.prod((n_top - i) / (n_tok - i) for i in range(k)) if k <= n_top else 0.0)
        satisfied = torch.tensor(sat)
        rate = float(sum(chance) / len(chance))
        return {"satisfied": satisfied, "rate": float(satisfied.float().mean()), "chance_rate": rate,
                "chance": Reference.exact(rate, kind="chance", label="random ranking"), "top_n": top_n}

    def figure(self, top: int = 20):
        """Heatmap of the cosines for the ``top`` tokens best aligned on average."""
        from lensworks.geometry._plots import alignment_figure

        return alignment_figure(self, top)


def alignment(subspaces: TokenSubspaces, vectors: Float[Tensor, "n_vectors d_model"]) -> Alignment:
    """Rank tokens by how well each vector lies in their subspace.

    ``cos(P_v x, x)`` where ``P_v = B_v^T B_v`` projects on token ``v``'s subspace; it is
    ``||B_v x|| / ||x||`` (0 for a zero vector).

    Example:
        >>> subs = token_subspaces(zoo.load("char-mlp"), tokens=[67, 68], n_samples=8)  # 'a', 'b'
        >>> al = alignment(subs, subs.basis[:, 0])  # each token's own basis vector
        >>> [(label, round(cos, 2)) for label, cos in al.top(0, 2)]
        [('a', 1.0), ('b', 0.03)]
    """
    x = torch.as_tensor(vectors).float().cpu()
    if x.ndim == 1:
        x = x[None]
    d = subspaces.basis.shape[-1]
    if x.ndim != 2 or x.shape[1] != d:
        raise LensworksError(f"vectors: expected shape [n, {d}], got {tuple(torch.as_tensor(vectors).shape)}")
    if x.shape[0] == 0:
        raise LensworksError("vectors: expected at least one vector, got none")
    coef = torch.einsum("trd,nd->ntr", subspaces.basis.float(), x)  # coordinates in each subspace
    norm = x.norm(dim=-1, keepdim=True)
    cos = torch.where(norm > 0, coef.norm(dim=-1) / norm.clamp_min(1e-30), torch.zeros_like(coef[..., 0]))
    cos = cos.clamp(0.0, 1.0)
    return Alignment(cosine=cos, ranking=cos.argsort(-1, descending=True), tokens=subspaces.tokens,
                     token_labels=subspaces.token_labels, processing=subspaces.processing)
