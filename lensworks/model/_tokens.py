"""Tokenization: vocabulary tokenizers, token checks, encoding text and labelling tokens."""

from __future__ import annotations

import functools
import re
import warnings
from typing import Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from lensworks.model._core import HookedTransformer, LensworksError
from lensworks.model._modelfacts import model_facts

#: Names of the BOS token that a bundled vocabulary may carry, in order of preference.
BOS_NAMES = ("<bos>", "<|bos|>", "<s>", "<|endoftext|>")

#: ``name_or_path`` of tokenizers built by :func:`vocab_tokenizer`.
VOCAB_TOKENIZER_NAME = "lensworks-vocab"


def vocab_tokenizer(vocab: Sequence[str]):
    """A HuggingFace fast tokenizer over exactly the strings in ``vocab`` (id = position).

    Text is split greedily into the longest vocabulary entries; decoding concatenates the
    strings. Every entry is an ordinary token, whatever its position: a nanoGPT character
    vocabulary whose id 0 is ``"\\n"`` encodes and decodes ``"\\n"`` like any other character.
    If the vocabulary holds a BOS token (one of ``<bos>``, ``<|bos|>``, ``<s>``,
    ``<|endoftext|>``) it is used as BOS, EOS and padding; otherwise the model does not
    prepend BOS (``load_model`` sets ``default_prepend_bos=False``) and the padding token is an
    extra id ``len(vocab)`` outside the model's vocabulary, never one of its characters.
    lensworks pads batches itself with lengths (:func:`encode_batch`), so that id never
    reaches a model; TransformerLens's ``model.to_tokens`` needs a padding token to exist.

    Args:
        vocab: Token strings, unique, in id order (any order: ``sorted(set(text))`` too).

    Returns:
        tokenizer (transformers.PreTrainedTokenizerFast): The tokenizer.

    Example:
        >>> tok = vocab_tokenizer(["<bos>", "a", "b", "ab"])
        >>> tok("abb")["input_ids"]
        [0, 3, 2]
        >>> vocab_tokenizer(["\\n", "a"])("a\\na")["input_ids"]
        [1, 0, 1]
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = list(vocab)
    if not vocab or not all(isinstance(s, str) and s for s in vocab):
        raise LensworksError("vocab must be a non-empty list of non-empty strings")
    if len(set(vocab)) != len(vocab):
        dupes = sorted({s for s in vocab if vocab.count(s) > 1})[:5]
        raise LensworksError(f"vocab has repeated entries, e.g. {dupes}")
    bos = next((b for b in BOS_NAMES if b in vocab), None)
    normal = [s for s in vocab if s != bos]
    pattern = "|".join(re.escape(s) for s in sorted(normal, key=len, reverse=True))
    tok = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(vocab)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if bos is not None:
        tok.add_special_tokens([bos])
        pad = bos
    else:  # an id past the vocabulary: no character of the model's is made special
        pad = _PAD_NAME
        while pad in vocab:
            pad = pad[:-2] + "-|>"
        tok.add_special_tokens([pad])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=bos,
            eos_token=bos,
            pad_token=pad,
            add_bos_token=bos is not None,
            clean_up_tokenization_spaces=False,
            name_or_path=VOCAB_TOKENIZER_NAME,
        )
    return hf


#: The padding token of a vocabulary tokenizer without BOS (its id is ``len(vocab)``).
_PAD_NAME = "<|lensworks-pad|>"


def bos_token_id(model: HookedTransformer) -> int | None:
    """The id of the model's BOS token, or None when it has no tokenizer or no BOS token (or
    the tokenizer's BOS id lies outside the model's vocabulary).

    Example:
        >>> bos_token_id(zoo.load("char-mlp"))
        0
    """
    # TransformerLens names "<|endoftext|>" BOS when a tokenizer has none, and TL 4 registers it
    # as a new id past the embedding: that is no BOS the model can read (ModelFacts decides).
    return model_facts(model).bos_id


def check_token_tensor(model: HookedTransformer, toks: Tensor, *, what: str = "tokens") -> Int[Tensor, "batch pos"]:
    """Validate a token-id tensor for ``model`` and return it as ``[batch, pos]`` int64.

    A 1-D tensor is taken as one sequence. Raises naming the problem when the tensor is not
    1-D/2-D, not integer, has no positions, is longer than ``n_ctx``, or holds ids outside the
    vocabulary. An empty batch passes (callers that need data check that themselves).

    Example:
        >>> check_token_tensor(model, torch.tensor([1, 2, 3])).shape
        torch.Size([1, 3])
    """
    from lensworks.model._compat import check_model

    check_model(model)
    if not isinstance(toks, Tensor):
        raise LensworksError(f"{what}: expected a torch tensor of token ids, got {type(toks).__name__}")
    if toks.ndim == 1:
        toks = toks[None]
    if toks.ndim != 2:
        raise LensworksError(f"{what}: expected a [batch, pos] token tensor, got shape {tuple(toks.shape)}")
    if toks.dtype.is_floating_point or toks.dtype.is_complex or toks.dtype == torch.bool:
        raise LensworksError(f"{what}: expected integer token ids, got dtype {toks.dtype}")
    if toks.shape[1] == 0:
        raise LensworksError(f"{what}: token tensor of shape {tuple(toks.shape)} has no positions")
    if toks.shape[1] > model.cfg.n_ctx:
        raise LensworksError(
            f"{what}: sequences of {toks.shape[1]} tokens are longer than the model's n_ctx={model.cfg.n_ctx}"
        )
    if toks.numel():
        lo, hi = int(toks.min()), int(toks.max())
        if lo < 0 or hi >= model.cfg.d_vocab:
            raise LensworksError(f"{what}: token ids must lie in [0, {model.cfg.d_vocab}), got range [{lo}, {hi}]")
    return toks.long()


def as_tokens(
    model: HookedTransformer,
    data: Union[str, Sequence[str], Tensor],
    *,
    prepend_bos: bool | None = None,
    what: str = "data",
) -> Int[Tensor, "batch pos"]:
    """Turn strings or token ids into a ``[batch, pos]`` token tensor on the model's device.

    Strings are tokenized with the model's tokenizer (right-padded when their lengths differ).
    Raises when the data is empty, when ids are out of the vocabulary, or when a sequence is
    longer than ``n_ctx`` (see :func:`check_token_tensor`).

    Example:
        >>> as_tokens(model, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3])
    """
    if isinstance(data, Tensor):
        toks = data
    else:
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, (list, tuple)) and not hasattr(data, "__iter__"):
            raise LensworksError(f"{what}: expected strings or a token tensor, got {type(data).__name__}")
        data = list(data)
        if not all(isinstance(s, str) for s in data):
            raise LensworksError(f"{what}: expected strings or a token tensor, got {type(data[0]).__name__ if data else 'nothing'}")
        if model.tokenizer is None:
            raise LensworksError(f"{what}: the model has no tokenizer, so pass token ids instead of strings")
        if len(data) == 0:
            raise LensworksError(f"{what}: empty data set; expected at least one non-empty sequence")
        for i, text in enumerate(data):
            if not text:
                raise LensworksError(f"{what}: item {i} is an empty string; expected text of at least one token")
            check_encodable(model, text, what=f"{what}[{i}]" if len(data) > 1 else what)
        from lensworks.model._facts import uses_bos

        pad = getattr(model.tokenizer, "pad_token_id", None)
        if pad is not None and 0 <= pad < model.cfg.d_vocab:
            toks = model.to_tokens(data, prepend_bos=uses_bos(model, prepend_bos), truncate=False)
        else:  # no padding token inside the vocabulary: never pad with one of the model's tokens
            rows = [encode_text(model, s, prepend_bos=prepend_bos, what=what) for s in data]
            if len({len(r) for r in rows}) > 1:
                raise LensworksError(
                    f"{what}: the texts give {sorted({len(r) for r in rows})[:6]} tokens; this model's vocabulary has "
                    "no padding token, so texts of different lengths need lengths: use "
                    "lensworks.model.encode_batch(model, texts), which returns (tokens, lengths)"
                )
            toks = torch.stack(rows)
    if toks.ndim >= 1 and toks.shape[0] == 0:
        raise LensworksError(f"{what}: empty data set (got token shape {tuple(toks.shape)}); expected at least one sequence")
    return check_token_tensor(model, toks, what=what).to(model_facts(model).device)


# --------------------------------------------------------------------------- load / save


def model_vocab(model: HookedTransformer) -> list[str] | None:
    """The vocabulary strings of a model's tokenizer, in id order, or None without one.

    Example:
        >>> model_vocab(zoo.load("char-mlp"))[:3]
        ['<bos>', '\\n', ' ']
    """
    tok = model.tokenizer
    if tok is None:
        return None
    inv = {i: s for s, i in tok.get_vocab().items()}
    return [inv.get(i, f"<{i}>") for i in range(model.cfg.d_vocab)]




def _snippet(text: str, pos: int) -> str:
    return repr(text[max(0, pos - 12) : pos + 12])


def _unknown_spans(model: HookedTransformer, text: str, what: str) -> list[tuple[int, str]]:
    """(position, characters) of every piece of ``text`` the tokenizer cannot encode."""
    tok = model.tokenizer
    if tok is None:
        raise LensworksError(f"{what}: the model has no tokenizer, so pass token ids instead of text")
    bad: list[tuple[int, str]] = []
    if getattr(tok, "name_or_path", "") == VOCAB_TOKENIZER_NAME:
        pattern = _vocab_pattern(tok)
        pos = 0
        for m in pattern.finditer(text):
            bad += [(i, text[i]) for i in range(pos, m.start())]
            pos = m.end()
        bad += [(i, text[i]) for i in range(pos, len(text))]
    else:
        unk = getattr(tok, "unk_token_id", None)
        if unk is not None:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            bad = [(a, text[a:b]) for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk]
    return bad


def encodable_part(model: HookedTransformer, text: str, *, what: str = "text") -> tuple[str, int]:
    """``text`` without the characters the model's tokenizer cannot encode, and how many were
    dropped. For fallback text that lensworks chose itself; a user's own text goes through
    :func:`check_encodable`, which refuses instead.

    Example:
        >>> encodable_part(zoo.load("char-mlp"), "naïve")  # the text kept, characters dropped
        ('nave', 1)
    """
    bad = _unknown_spans(model, text, what)
    if not bad:
        return text, 0
    drop = set()
    for i, piece in bad:
        drop.update(range(i, i + len(piece)))
    return "".join(c for i, c in enumerate(text) if i not in drop), len(drop)


def check_encodable(model: HookedTransformer, text: str, *, what: str = "text") -> None:
    """Raise naming the characters of ``text`` the model's tokenizer cannot encode, with their
    positions. Text is never changed silently: a character vocabulary that lacks ``{`` refuses
    ``"a{b"`` instead of analysing ``"ab"``.

    Example:
        >>> check_encodable(zoo.load("char-mlp"), "é")
        Traceback (most recent call last):
        lensworks.errors.LensworksError: text: 1 character the vocabulary lacks: 'é' at 0 (first in 'é')
    """
    bad = _unknown_spans(model, text, what)
    if bad:
        shown = ", ".join(f"{c!r} at {i}" for i, c in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise LensworksError(
            f"{what}: {len(bad)} character{'s' if len(bad) != 1 else ''} the vocabulary lacks: {shown} "
            f"(first in {_snippet(text, bad[0][0])})"
        )


def _vocab_pattern(tok) -> "re.Pattern[str]":
    """The regular expression matching any ordinary (non-special) entry of a vocabulary
    tokenizer, longest first. Cached by the entries themselves, never by object identity."""
    specials = set(tok.all_special_tokens)
    return _compiled_pattern(tuple(sorted((s for s in tok.get_vocab() if s not in specials), key=lambda s: (-len(s), s))))


@functools.lru_cache(maxsize=16)
def _compiled_pattern(entries: tuple[str, ...]) -> "re.Pattern[str]":
    return re.compile("|".join(re.escape(s) for s in entries))


def encode_text(model: HookedTransformer, text: str, *, prepend_bos: bool | None = None, what: str = "text") -> Int[Tensor, "pos"]:
    """Token ids of one text, BOS first when the model uses one (see ``uses_bos``); characters
    the tokenizer cannot encode raise naming them and their position.

    Example:
        >>> encode_text(zoo.load("char-mlp"), "ab").tolist()
        [0, 67, 68]
    """
    check_encodable(model, text, what=what)
    ids = model.to_tokens(text, prepend_bos=False, truncate=False)[0]
    return model_facts(model).add_bos(ids, prepend_bos).cpu()


def token_label(model: HookedTransformer, ids: Sequence[int] | Tensor) -> str:
    """Text of a token sequence for figures and tables (token ids joined when there is no
    tokenizer).

    Example:
        >>> token_label(zoo.load("char-mlp"), [67, 68])
        'ab'
    """
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return model.tokenizer.decode(ids)


def token_strings(model: HookedTransformer, ids: Sequence[int] | Tensor) -> list[str]:
    """One label per token (``str(id)`` without a tokenizer), for axis ticks and hover text.

    Example:
        >>> token_strings(zoo.load("char-mlp"), [0, 67])
        ['<bos>', 'a']
    """
    return [token_label(model, [i]) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]


def encode_batch(
    model: HookedTransformer, texts: Sequence[str], *, prepend_bos: bool | None = None, what: str = "data"
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Encode several texts one by one and right-pad them (with zeros) into one tensor.

    Each text is checked with :func:`check_encodable`; BOS is prepended as ``uses_bos``
    decides. Padding sits after each text's last token, so in a causal model it cannot change
    what is read there.

    Returns:
        ``(tokens, lengths)``: ``[batch, longest]`` ids (CPU) and each text's token count.

    Example:
        >>> toks, lengths = encode_batch(zoo.load("char-mlp"), ["ab", "abc"])
        >>> lengths.tolist()
        [3, 4]
    """
    if len(texts) == 0:
        raise LensworksError(f"{what}: empty data set; expected at least one text")
    for i, t in enumerate(texts):
        if isinstance(t, str) and not t:  # with BOS it would silently be the statistics of BOS alone
            raise LensworksError(f"{what}: item {i} is an empty string; expected text of at least one token")
    seqs = [encode_text(model, t, prepend_bos=prepend_bos, what=f"{what}[{i}]").tolist() for i, t in enumerate(texts)]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    if bool((lengths == 0).any()):
        i = int((lengths == 0).nonzero()[0])
        raise LensworksError(f"{what}: item {i} is empty after tokenization; expected at least one token")
    longest = int(lengths.max()) if len(seqs) else 0
    if longest > model.cfg.n_ctx:
        i = int(lengths.argmax())
        raise LensworksError(f"{what}: item {i} has {longest} tokens, longer than the model's n_ctx={model.cfg.n_ctx}")
    out = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def text_windows(
    model: HookedTransformer,
    text: str,
    *,
    max_tokens: int | None = None,
    width: int | None = None,
    skip_unknown: bool = False,
) -> Int[Tensor, "n_windows width"]:
    """Chop ``text`` into consecutive windows of ``width`` tokens (BOS first when the model
    uses one, counted in ``width``).

    Args:
        model: The model (its tokenizer).
        text: The text.
        max_tokens: Read at most this many tokens of the text.
        width: Tokens per window, BOS included (default ``n_ctx``).
        skip_unknown: Drop characters the vocabulary lacks, with a warning that counts them
            (default: raise naming them and their positions).

    Returns:
        ``[n_windows, width]`` token ids (CPU); at least two windows.

    Example:
        >>> text_windows(zoo.load("char-mlp"), "abc" * 100, width=32).shape
        torch.Size([9, 32])
    """
    if model.tokenizer is None:
        raise LensworksError("the model has no tokenizer, so it cannot read text")
    if not isinstance(text, str) or not text:
        raise LensworksError("the text is empty; expected some text")
    width = model.cfg.n_ctx if width is None else int(width)
    if not 2 <= width <= model.cfg.n_ctx:
        raise LensworksError(f"width must lie in [2, n_ctx={model.cfg.n_ctx}], got {width}")
    if skip_unknown:
        text, dropped = encodable_part(model, text)
        if dropped:
            warnings.warn(f"skipped {dropped} characters the vocabulary lacks", stacklevel=2)
    else:
        check_encodable(model, text)
    ids = model.to_tokens(text, prepend_bos=False, truncate=False)[0].cpu()
    if max_tokens is not None:
        ids = ids[: int(max_tokens)]
    facts = model_facts(model)
    body = width - facts.bos_offset()
    n = len(ids) // body
    if n < 2:
        raise LensworksError(f"the text gives {len(ids)} tokens, fewer than two windows of {body}; pass more text")
    return facts.add_bos(ids[: n * body].reshape(n, body))
