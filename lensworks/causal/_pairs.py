"""A clean/corrupted pair every model can read: repeated random tokens, one token of the first copy changed.

The clean prompt is ``[BOS] s s[:-1]`` for a random sequence ``s`` of ``n`` distinct tokens: at
the last position the current token ``s[n-2]`` occurred once before, followed by ``s[n-1]``, so an
induction head predicts ``s[n-1]`` (the *answer*). The corrupted prompt is the same with
``s[n-1]`` replaced, in the first copy only, by a token ``w`` that is not in ``s`` (the *wrong*
answer): an induction head now predicts ``w``. The two prompts differ at one position, so
``logit_diff`` (answer minus wrong) is positive on the clean run and negative on the corrupted one
for a model that does induction. Token ids only: no tokenizer is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxtyping import Int
from torch import Tensor

from lensworks.model import LensworksError, check_int, model_facts

__all__ = ["PromptPair", "induction_pair"]

#: Length of the random sequence ``s`` when none is given (shorter when ``n_ctx`` requires).
DEFAULT_SEQ_LEN = 8


class PromptPair(NamedTuple):
    """Clean and corrupted prompts that line up token for token, with the answer and wrong tokens.

    Attributes:
        clean: ``[n_seqs, pos]`` token ids.
        corrupted: ``[n_seqs, pos]`` token ids; equal to ``clean`` except at :attr:`changed`.
        answer: ``[n_seqs]`` the token the clean prompt's pattern predicts after its last token.
        wrong: ``[n_seqs]`` the token the corrupted prompt's pattern predicts there.
        changed: The position where the prompts differ.
    """

    clean: Int[Tensor, "n_seqs pos"]
    corrupted: Int[Tensor, "n_seqs pos"]
    answer: Int[Tensor, " n_seqs"]
    wrong: Int[Tensor, " n_seqs"]
    changed: int

    def describe(self) -> str:
        """One sentence for notes and printed output.

        Example:
            >>> induction_pair(model, seq_len=6, n_seqs=2).describe()  # doctest: +NORMALIZE_WHITESPACE
            '2 random sequences of 6 tokens, repeated without the last token (12 tokens with BOS); the corrupted copy
            changes position 6, the token the induction pattern predicts at the end (answer) to a token not in the
            sequence (wrong).'
        """
        n_seqs, n_pos = self.clean.shape
        bos = n_pos % 2 == 0  # 2 n - 1 tokens, plus BOS
        n = (n_pos - int(bos) + 1) // 2
        return (f"{n_seqs} random sequence{'s' if n_seqs != 1 else ''} of {n} tokens, repeated without the last token "
                f"({n_pos} tokens{' with BOS' if bos else ''}); the corrupted copy changes position {self.changed}, "
                "the token the induction pattern predicts at the end (answer) to a token not in the sequence (wrong).")


def induction_pair(
    model: Any, *, seq_len: int | None = None, n_seqs: int = 4, seed: int = 0, prepend_bos: bool | None = None
) -> PromptPair:
    """A clean/corrupted pair for patching any model: repeated random tokens whose induction answer differs.

    Clean: ``[BOS] s s[:-1]`` (``s``: ``seq_len`` distinct random tokens, never special ones, drawn
    by :func:`lensworks.circuits.repeated_tokens` with a private generator); the induction pattern
    predicts ``s[-1]`` next. Corrupted: the same with the first copy's ``s[-1]`` replaced by a
    token not in ``s``, which the pattern then predicts instead.

    Args:
        model: The model (its vocabulary, special tokens, ``n_ctx`` and BOS).
        seq_len: Length of ``s``, at least 2 (default 8, or what fits ``n_ctx``).
        n_seqs: Number of prompts.
        seed: Generator seed.
        prepend_bos: Start with BOS (default: the model's setting).

    Returns:
        A :class:`PromptPair` ``(clean, corrupted, answer, wrong, changed)`` on the model's device.

    Raises:
        LensworksError: ``seq_len`` does not fit ``n_ctx``, or the vocabulary has too few
            ordinary tokens for ``seq_len + 1`` distinct ones.

    Example:
        >>> from lensworks.causal import activation_patching
        >>> pair = induction_pair(model, seq_len=6, n_seqs=2)
        >>> pair.clean.shape, pair.changed, bool((pair.clean != pair.corrupted).sum() == 2)
        (torch.Size([2, 12]), 6, True)
        >>> res = activation_patching(model, pair.clean, pair.corrupted, "logit_diff", answer_tokens=pair.answer,
        ...                           wrong_tokens=pair.wrong, what="head_z")
        >>> res.clean_metric > 0 > res.corrupted_metric  # induction-2l predicts the answer, then the wrong token
        True
    """
    import torch

    from lensworks.circuits.heads import repeated_tokens

    facts = model_facts(model)
    bos = facts.uses_bos(prepend_bos)
    room = (facts.n_ctx - int(bos)) // 2 - 1  # s plus the wrong token, repeated, must fit n_ctx
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, room)
        if seq_len < 2:
            raise LensworksError(f"the model's n_ctx={facts.n_ctx} is too short for an induction pair (needs at "
                                 f"least {int(bos) + 6} tokens)")
    seq_len = check_int(seq_len, "seq_len", low=2)
    if seq_len > room:
        raise LensworksError(f"seq_len={seq_len} does not fit the model's n_ctx={facts.n_ctx}: an induction pair "
                             f"draws seq_len + 1 tokens and repeats them; pass seq_len <= {max(room, 1)}")
    n_seqs = check_int(n_seqs, "n_seqs", low=1)
    drawn = repeated_tokens(model, seq_len=seq_len + 1, n_seqs=n_seqs, seed=seed, prepend_bos=bos)
    o = int(bos)
    s, wrong = drawn[:, o:o + seq_len], drawn[:, o + seq_len]
    answer = s[:, -1]
    if bool((s == wrong[:, None]).any()):
        raise LensworksError(f"the vocabulary has too few ordinary tokens for {seq_len + 1} distinct ones; pass a "
                             "smaller seq_len")
    clean = torch.cat([drawn[:, :o], s, s[:, :-1]], dim=1)
    corrupted = clean.clone()
    changed = o + seq_len - 1
    corrupted[:, changed] = wrong
    return PromptPair(clean, corrupted, answer.clone(), wrong.clone(), changed)
