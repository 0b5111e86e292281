"""Seed 004's approximation: predict the next token from corpus windows whose block outputs
point the same way as the prompt's, streaming over the corpus in chunks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lensworks._results import ResultMixin
from lensworks.geometry import _common
from lensworks.geometry._common import Data, gather_at, has_hook, iter_batches, progress_bar
from lensworks.model import BOS_NAMES, HookedTransformer, LensworksError, bos_token_id, model_vocab, check_encodable, check_layer, hook_name, token_label, uses_bos
from lensworks.model._core import check_int
from lensworks.model._tokens import VOCAB_TOKENIZER_NAME

__all__ = [
    "NeighbourApproximation",
    "NeighbourPrediction",
    "NeighbourEvaluation",
    "SimilarWindows",
    "TuneResult",
    "corpus_tokens",
]

#: Hooks whose per-block outputs can index the corpus.
INDEX_HOOKS = ("mlp_out", "attn_out", "resid_pre", "resid_mid", "resid_post")

#: Above this vocabulary size matched counts are scattered instead of multiplied densely.
DENSE_VOCAB_LIMIT = 1024

Thresholds = Union[float, Sequence[float], Tensor]


# --------------------------------------------------------------------------- corpus helpers


def corpus_tokens(model: HookedTransformer, corpus: Union[str, Tensor, Sequence[int]], *, chunk_chars: int = 1 << 16) -> Int[Tensor, " n_tokens"]:
    """Token ids of a corpus string (no BOS), or validated ids when ids are given.

    Long strings are encoded in pieces cut after newlines (``chunk_chars`` characters or so),
    so a multi-character token that spans a cut may split differently than in one call.

    Example:
        >>> corpus_tokens(model, "abc").tolist()  # doctest: +SKIP
        [1, 2, 3]
    """
    if isinstance(corpus, str):
        if model.tokenizer is None:
            raise LensworksError("corpus: the model has no tokenizer, so pass token ids instead of a string")
        fast = _char_lookup(model)
        if fast is not None:
            return _encode_chars(corpus, fast)
        pieces, start = [], 0
        while start < len(corpus):
            end = min(len(corpus), start + chunk_chars)
            cut = corpus.rfind("\n", start, end) if end < len(corpus) else -1
            end = cut + 1 if cut > start else end
            pieces.append(corpus[start:end])
            start = end
        if not pieces:
            return torch.zeros(0, dtype=torch.long)
        offset = 0
        for piece in pieces:
            try:
                check_encodable(model, piece, what="corpus")
            except LensworksError as exc:  # positions relative to the whole corpus
                raise LensworksError(str(exc).replace("corpus:", f"corpus (from character {offset}):", 1)) from None
            offset += len(piece)
        try:
            ids = model.tokenizer(pieces, add_special_tokens=False)["input_ids"]
        except Exception as exc:
            raise LensworksError(f"corpus: the model's tokenizer could not encode the text: {exc}") from exc
        return torch.tensor([t for piece in ids for t in piece], dtype=torch.long)
    toks = corpus if isinstance(corpus, Tensor) else torch.as_tensor(list(corpus))
    if toks.ndim != 1 or toks.dtype.is_floating_point or toks.dtype == torch.bool:
        raise LensworksError(f"corpus: expected a string or a 1-D tensor of token ids, got shape {tuple(toks.shape)} "
                             f"and dtype {toks.dtype}")
    if toks.numel() and (int(toks.min()) < 0 or int(toks.max()) >= model.cfg.d_vocab):
        raise LensworksError(f"corpus: token ids must lie in [0, {model.cfg.d_vocab}), got range "
                             f"[{int(toks.min())}, {int(toks.max())}]")
    return toks.long().cpu()


def _char_lookup(model: HookedTransformer) -> Tensor | None:
    """For a lensworks vocabulary of single characters (plus BOS): code point -> id table."""
    tok = model.tokenizer
    if getattr(tok, "name_or_path", "") != VOCAB_TOKENIZER_NAME:
        return None

    vocab = model_vocab(model) or []
    chars = {s: i for i, s in enumerate(vocab) if s not in BOS_NAMES}
    if not chars or any(len(s) != 1 for s in chars):
        return None
    table = torch.full((max(ord(c) for c in chars) + 1,), -1, dtype=torch.long)
    for c, i in chars.items():
        table[ord(c)] = i
    return table


def _encode_chars(text: str, table: Tensor) -> Tensor:
    import numpy as np

    codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
    inside = codes < table.numel()
    ids = torch.full_like(codes, -1)
    ids[inside] = table[codes[inside]]
    bad = (ids < 0).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise LensworksError(f"corpus: character {text[i]!r} at offset {i} is not in the model's vocabulary")
    return ids


def _pack(windows: Tensor, d_vocab: int) -> Tensor:
    """Pack rows of token ids into as few int64 words as exactly fit (for sorting)."""
    bits = max(1, math.ceil(math.log2(max(2, d_vocab))))
    per_word = max(1, 63 // bits)
    w = windows.shape[1]
    words = []
    for start in range(0, w, per_word):
        part = windows[:, start : start + per_word].long()
        acc = torch.zeros(part.shape[0], dtype=torch.long, device=part.device)
        for j in range(part.shape[1]):
            acc = (acc << bits) | part[:, j]
        words.append(acc)
    return torch.stack(words, dim=1)


def _unique_rows(packed: Tensor) -> tuple[Tensor, Tensor]:
    """(index of one representative row per unique row, inverse) by stable radix sort on words."""
    n, k = packed.shape
    if k == 1:
        _, inverse = torch.unique(packed[:, 0], return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=packed.device)
        first.scatter_reduce_(0, inverse, torch.arange(n, device=packed.device), reduce="amin")
        return first, inverse
    order = torch.arange(n, device=packed.device)
    for j in reversed(range(k)):
        _, o = torch.sort(packed[order, j], stable=True)
        order = order[o]
    s = packed[order]
    new = torch.ones(n, dtype=torch.bool, device=packed.device)
    new[1:] = (s[1:] != s[:-1]).any(1)
    gid = torch.cumsum(new.long(), 0) - 1
    inverse = torch.empty(n, dtype=torch.long, device=packed.device)
    inverse[order] = gid
    return order[new], inverse


def _default_budget(device: torch.device) -> int:
    """Bytes for one similarity block: a slice of free GPU memory, or 64 MiB on CPU."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(min(2 << 30, max(64 << 20, free // 8)))
        except Exception:  # pragma: no cover
            return 256 << 20
    return 64 << 20


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SimilarWindows(ResultMixin):
    """Corpus windows whose block output has cosine > threshold with the prompt's, best first."""

    prompt: str
    block: int
    threshold: float
    indices: Int[Tensor, " n_similar"]
    cosines: Float[Tensor, " n_similar"]
    texts: tuple[str, ...]
    next_counts: Int[Tensor, " n_similar"]

    def to_frame(self):
        """One row per window: ``index, text, cosine, n_next``."""
        import pandas as pd

        return pd.DataFrame({"index": self.indices.tolist(), "text": list(self.texts),
                             "cosine": self.cosines.tolist(), "n_next": self.next_counts.tolist()})


@dataclass(frozen=True)
class NeighbourPrediction(ResultMixin):
    """Seed 004's weighted next-token distributions for a set of prompts.

    Attributes:
        probs: ``[prompt, d_vocab]`` normalised ``sum_b w_b * counts_b``. A prompt with no
            similar window in any block with non-zero weight gets the corpus's overall
            next-token frequency (the unigram distribution) and ``matched`` False.
        block_counts: ``[block, prompt, d_vocab]`` raw next-token counts summed over the
            similar windows of each block.
        n_similar: ``[block, prompt]`` number of similar windows.
        matched: ``[prompt]`` whether any weighted block found a similar window.
        model_probs: ``[prompt, d_vocab]`` the model's own distribution at the prompt's last token.
        prompt_labels: The prompts as text.
    """

    probs: Float[Tensor, "n_prompts d_vocab"]
    block_counts: Float[Tensor, "block n_prompts d_vocab"]
    n_similar: Int[Tensor, "block n_prompts"]
    matched: Bool[Tensor, " n_prompts"]
    model_probs: Float[Tensor, "n_prompts d_vocab"]
    prompt_labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class NeighbourEvaluation(ResultMixin):
    """Hellinger distance between the approximation and the model, per prompt and summarised."""

    hellinger: Float[Tensor, " n_prompts"]
    mean: float
    std: float
    min: float
    max: float
    n_unmatched: int
    matched: Bool[Tensor, " n_prompts"]
    n_similar: Int[Tensor, "block n_prompts"]
    prompt_labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    blocks: tuple[int, ...]
    baseline_mean: float = float("nan")

    def to_frame(self):
        """One row per prompt: ``prompt, hellinger, matched`` and ``n_similar_b{block}``."""
        import pandas as pd

        cols: dict[str, Any] = {"prompt": list(self.prompt_labels), "hellinger": self.hellinger.tolist(),
                                "matched": self.matched.tolist()}
        for i, b in enumerate(self.blocks):
            cols[f"n_similar_b{b}"] = self.n_similar[i].tolist()
        return pd.DataFrame(cols)

    def figure(self):
        """Histogram of the per-prompt Hellinger distances."""
        from lensworks.geometry._plots import neighbour_figure

        return neighbour_figure(self)


@dataclass(frozen=True)
class TuneResult(ResultMixin):
    """Thresholds and weights found by :meth:`NeighbourApproximation.tune`, and how they did."""

    thresholds: tuple[float, ...]
    weights: tuple[float, ...]
    mean_hellinger: float
    history: tuple[tuple[str, float], ...]
    blocks: tuple[int, ...]

    def to_frame(self):
        """One row per block: ``block, threshold, weight``."""
        import pandas as pd

        return pd.DataFrame({"block": list(self.blocks), "threshold": list(self.thresholds),
                             "weight": list(self.weights)})

    def figure(self):
        """Bars of the tuned threshold and weight per block."""
        from lensworks.geometry._plots import tune_figure

        return tune_figure(self)


# --------------------------------------------------------------------------- the index


class NeighbourApproximation:
    """An index of every unique corpus window: its next-token counts and its per-block outputs.

    Build it with :meth:`fit`. Attributes (sklearn style, learned by ``fit``):

    - ``windows_``: ``[n_windows, window]`` token ids of the unique windows (each followed by
      at least one token in the corpus);
    - ``next_ptr_``, ``next_token_``, ``next_count_``: next-token counts in compressed-row form
      (window ``i``'s counts are at ``next_ptr_[i]:next_ptr_[i+1]``);
    - ``outputs_``: ``[n_blocks, n_windows, d_model]`` unit-normalised block outputs (``hook``
      at the window's last token), on the model's device;
    - ``unigram_``: ``[d_vocab]`` overall next-token frequency in the corpus.
    """

    def __init__(self, model: HookedTransformer, *, window: int, hook: str, blocks: tuple[int, ...],
                 prepend_bos: bool, windows: Tensor, next_ptr: Tensor, next_token: Tensor, next_count: Tensor,
                 outputs: Tensor, unigram: Tensor, n_corpus_tokens: int):
        self.model = model
        self.window = window
        self.hook = hook
        self.blocks = blocks
        self.prepend_bos = prepend_bos
        self.windows_ = windows
        self.next_ptr_ = next_ptr
        self.next_token_ = next_token
        self.next_count_ = next_count
        self.outputs_ = outputs
        self.unigram_ = unigram
        self.n_corpus_tokens_ = n_corpus_tokens

    def __repr__(self) -> str:
        return (f"NeighbourApproximation(window={self.window}, hook={self.hook!r}, blocks={self.blocks}, "
                f"n_windows={self.n_windows}, n_corpus_tokens={self.n_corpus_tokens_})")

    @property
    def n_windows(self) -> int:
        """Number of unique windows indexed."""
        return int(self.windows_.shape[0])

    @property
    def d_vocab(self) -> int:
        """Vocabulary size of the counts."""
        return int(self.unigram_.shape[0])

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        model: HookedTransformer,
        corpus: Union[str, Tensor, Sequence[int]],
        *,
        window: int = 10,
        hook: str = "mlp_out",
        blocks: Sequence[int] | None = None,
        prepend_bos: bool | None = None,
        batch_size: int = 2048,
        dtype: torch.dtype | None = None,
        progress: bool | None = None,
    ) -> "NeighbourApproximation":
        """Index every unique window of ``window`` tokens in the corpus.

        Steps: tokenize the corpus; take every window that is followed by a token; find the
        unique ones with a radix sort on bit-packed ids (no Python loop over windows); count
        the tokens that follow each (compressed rows); run each unique window through the
        model once (batched, stopping after the last block needed) and keep the unit-normalised
        ``hook`` output of every block at its last token.

        Args:
            model: The model.
            corpus: Text, or a 1-D tensor of token ids.
            window: Window length in tokens (the seed used 10 characters).
            hook: Block output to compare: ``mlp_out`` (the seed's FFN output), ``attn_out``,
                ``resid_pre``, ``resid_mid`` or ``resid_post``.
            blocks: Which blocks (default all).
            prepend_bos: Prepend BOS to every window and prompt (default: the model's setting);
                windows and prompts are always run the same way.
            batch_size: Windows per forward pass.
            dtype: Storage dtype of the outputs (default float32; float16/bfloat16 halve memory
                on a GPU).
            progress: Progress bar (None: only on a terminal).

        Returns:
            The fitted index.

        Example:
            >>> approx = NeighbourApproximation.fit(model, text, window=10)  # doctest: +SKIP
            >>> approx.evaluate(prompts, thresholds=0.9).mean  # doctest: +SKIP
        """
        if hook not in INDEX_HOOKS:
            raise LensworksError(f"unknown stream or hook {hook!r}; expected one of {INDEX_HOOKS}")
        if not has_hook(model, hook, 0):
            raise LensworksError(f"hook {hook!r} does not exist in this model (e.g. attention-only models have no mlp_out)")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise LensworksError(f"window must be a positive int, got {window!r}")
        blocks = tuple(range(model.cfg.n_layers)) if blocks is None else tuple(check_layer(model, b) for b in blocks)
        if not blocks:
            raise LensworksError("blocks: expected at least one block")
        bos = uses_bos(model, prepend_bos)
        if window + int(bos) > model.cfg.n_ctx:
            raise LensworksError(f"window {window} (+BOS) is longer than the model's n_ctx={model.cfg.n_ctx}")
        toks = corpus_tokens(model, corpus)
        if toks.numel() < window + 1:
            raise LensworksError(
                f"corpus: window of {window} tokens is longer than the corpus allows ({toks.numel()} tokens; "
                "a window must be followed by at least one token)"
            )
        d_vocab = model.cfg.d_vocab
        all_windows = toks.unfold(0, window, 1)[:-1]  # [N, window], a view
        nxt = toks[window:]
        first, inverse = _unique_rows(_pack(all_windows, d_vocab))
        windows = all_windows[first].contiguous()
        windows = windows.to(torch.int16 if d_vocab <= 32767 else torch.int32)
        n_windows = windows.shape[0]
        pair, pair_count = torch.unique(inverse * d_vocab + nxt, return_counts=True)  # sorted by window
        win_of_pair = pair // d_vocab
        next_token = (pair % d_vocab).to(torch.int32)
        ptr = torch.zeros(n_windows + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(torch.bincount(win_of_pair, minlength=n_windows), 0)
        unigram = torch.bincount(nxt, minlength=d_vocab).double()
        unigram = (unigram / unigram.sum()).float()

        device = torch.device(model.cfg.device)
        store_dtype = dtype or torch.float32
        outputs = torch.empty(len(blocks), n_windows, model.cfg.d_model, dtype=store_dtype, device=device)
        names = [hook_name(hook, b) for b in blocks]
        stop = max(blocks) + 1
        stop = None if stop >= model.cfg.n_layers else stop
        bos_col = None
        if bos:
            bos_col = torch.full((1, 1), bos_token_id(model), dtype=torch.long)
        last = torch.full((1,), window - 1 + int(bos), dtype=torch.long, device=device)
        for start in progress_bar(range(0, n_windows, batch_size), total=math.ceil(n_windows / batch_size),
                                  desc="NeighbourApproximation.fit", progress=progress):
            chunk = windows[start : start + batch_size].long()
            if bos_col is not None:
                chunk = torch.cat([bos_col.expand(chunk.shape[0], 1), chunk], dim=1)
            chunk = chunk.to(device)
            acts, _ = gather_at(model, chunk, last.expand(chunk.shape[0]), names, stop_at_layer=stop)
            for i, n in enumerate(names):
                outputs[i, start : start + chunk.shape[0]] = F.normalize(acts[n].float(), dim=-1).to(store_dtype)
        return cls(model, window=window, hook=hook, blocks=blocks, prepend_bos=bos, windows=windows, next_ptr=ptr,
                   next_token=next_token, next_count=pair_count.to(torch.int32), outputs=outputs, unigram=unigram,
                   n_corpus_tokens=int(toks.numel()))

    # ------------------------------------------------------------------ prompts

    def _prompt_outputs(self, prompts: Data, batch_size: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        """Unit block outputs ``[block, prompt, d]`` and model probabilities at each prompt's last token."""
        model = self.model
        names = [hook_name(self.hook, b) for b in self.blocks]
        outs, probs, labels = [], [], []
        if isinstance(prompts, Tensor) and self.prepend_bos:
            toks = prompts[None] if prompts.ndim == 1 else prompts
            bos = torch.full((toks.shape[0], 1), bos_token_id(model), dtype=torch.long,
                             device=toks.device)
            prompts = torch.cat([bos, toks.long()], dim=1)
        for toks, idx in iter_batches(model, prompts, batch_size=batch_size, position=-1,
                                      prepend_bos=self.prepend_bos, what="prompts"):
            acts, logits = gather_at(model, toks, idx, names, logits=True)
            outs.append(torch.stack([F.normalize(acts[n].float(), dim=-1) for n in names]))
            probs.append(logits.softmax(-1))
            for row in range(toks.shape[0]):
                ids = toks[row, int(self.prepend_bos) : int(idx[row]) + 1].tolist()
                labels.append(token_label(model, ids))
        return torch.cat(outs, dim=1), torch.cat(probs, dim=0), tuple(labels)

    def _check_thresholds(self, thresholds: Thresholds, name: str = "thresholds") -> Tensor:
        t = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
        if t.numel() == 1:
            t = t.expand(len(self.blocks)).clone()
        if t.numel() != len(self.blocks):
            raise LensworksError(f"{name}: expected one value or one per block ({len(self.blocks)}), got {t.numel()}")
        if bool(torch.isnan(t).any()) or bool((t < -1).any()) or bool((t > 1).any()):
            raise LensworksError(f"{name}: cosine thresholds must lie in [-1, 1], got {t.tolist()}")
        return t

    def _check_weights(self, weights: Thresholds | None) -> Tensor:
        if weights is None:
            return torch.ones(len(self.blocks))
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() == 1:
            w = w.expand(len(self.blocks)).clone()
        if w.numel() != len(self.blocks):
            raise LensworksError(f"weights: expected one value or one per block ({len(self.blocks)}), got {w.numel()}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise LensworksError(f"weights: expected finite non-negative values, not all zero; got {w.tolist()}")
        return w

    # ------------------------------------------------------------------ streaming search

    def _dense_counts(self, start: int, stop: int, device: torch.device, with_ones: bool = False) -> Tensor:
        lo, hi = int(self.next_ptr_[start]), int(self.next_ptr_[stop])
        rows = torch.repeat_interleave(torch.arange(stop - start), self.next_ptr_[start + 1 : stop + 1] - self.next_ptr_[start:stop])
        c = torch.zeros(stop - start, self.d_vocab + int(with_ones), dtype=torch.float32)
        c[rows, self.next_token_[lo:hi].long()] = self.next_count_[lo:hi].float()
        if with_ones:
            c[:, -1] = 1.0
        return c.to(device)

    def _search(self, queries: Tensor, thresholds: Tensor, *, chunk_size: int | None,
                progress: bool | None) -> tuple[Tensor, Tensor]:
        """Summed next-token counts ``[block, T, prompt, vocab]`` and match counts ``[block, T, prompt]``.

        ``thresholds`` is ``[block, T]``: several thresholds per block share one similarity pass.
        Only a ``[prompt_chunk, window_chunk]`` block of similarities exists at a time. The
        matched counts are added as a matrix product ``mask @ [counts | 1]`` (the extra column
        counts the matches) when the vocabulary is small; for a large vocabulary only the matched
        windows' compressed count rows are scattered (cost proportional to the matches).
        """
        device = self.outputs_.device
        n_blocks, n_prompts, _ = queries.shape
        n_t = thresholds.shape[1]
        V = self.d_vocab
        budget = _default_budget(device)
        p_chunk = max(1, min(n_prompts, 4096))
        if chunk_size is None:
            chunk_size = max(256, budget // (4 * p_chunk * 2))
        chunk_size = int(min(chunk_size, max(1, self.n_windows)))
        counts = torch.zeros(n_blocks, n_t, n_prompts, V, dtype=torch.float32, device=device)
        n_sim = torch.zeros(n_blocks, n_t, n_prompts, dtype=torch.long, device=device)
        q = queries.to(device=device, dtype=self.outputs_.dtype)
        thr_cpu = thresholds.cpu()
        ptr = self.next_ptr_.to(device)
        tok = self.next_token_.to(device).long()
        cnt = self.next_count_.to(device).float()
        use_dense = V <= DENSE_VOCAB_LIMIT
        flat = torch.empty(p_chunk * chunk_size if use_dense else 0, dtype=torch.float32, device=device)
        with torch.inference_mode():
            for start in progress_bar(range(0, self.n_windows, chunk_size),
                                      total=math.ceil(self.n_windows / chunk_size),
                                      desc="NeighbourApproximation search", progress=progress):
                stop = min(self.n_windows, start + chunk_size)
                dense_c = None
                for b in range(n_blocks):
                    keys = self.outputs_[b, start:stop]
                    for p0 in range(0, n_prompts, p_chunk):
                        p1 = min(n_prompts, p0 + p_chunk)
                        sims = q[b, p0:p1] @ keys.T  # [p, w]
                        for t in range(n_t):
                            if float(thr_cpu[b, t]) >= 1.0:
                                continue  # a cosine never exceeds 1 (rounding may say 1 + 1e-7)
                            th = float(thr_cpu[b, t])
                            target = counts[b, t, p0:p1]
                            if use_dense:
                                if dense_c is None:
                                    dense_c = self._dense_counts(start, stop, device, with_ones=True)
                                mask = flat[: sims.numel()].view(sims.shape)
                                torch.gt(sims, th, out=mask)  # 1.0 / 0.0 in one pass
                                both = mask @ dense_c  # [p, V + 1]: counts, then the number of matches
                                target += both[:, :V]
                                n_sim[b, t, p0:p1] += both[:, V].round().long()
                                continue
                            hit = sims > th
                            pi, wi = hit.nonzero(as_tuple=True)
                            if pi.numel() == 0:
                                continue
                            n_sim[b, t, p0:p1] += torch.bincount(pi, minlength=p1 - p0)
                            g = wi + start
                            first, lens = ptr[g], ptr[g + 1] - ptr[g]
                            rows = torch.repeat_interleave(pi, lens)
                            base = torch.repeat_interleave(first - (torch.cumsum(lens, 0) - lens), lens)
                            entry = base + torch.arange(rows.numel(), device=device)
                            target.view(-1).index_add_(0, rows * V + tok[entry], cnt[entry])
        return counts, n_sim

    # ------------------------------------------------------------------ public queries

    def similar(self, prompt: Union[str, Tensor], block: int, threshold: float, *,
                chunk_size: int | None = None) -> SimilarWindows:
        """Windows whose ``block`` output has cosine strictly greater than ``threshold`` with the prompt's.

        Example:
            >>> approx.similar("And only l", block=0, threshold=0.95).texts[:3]  # doctest: +SKIP
        """
        if block not in self.blocks:
            raise LensworksError(f"block {block} is not indexed; indexed blocks are {list(self.blocks)}")
        t = self._check_thresholds(threshold, "threshold")[0]
        b = self.blocks.index(block)
        if isinstance(prompt, str):
            prompt = [prompt]
        q, _, labels = self._prompt_outputs(prompt, batch_size=1)
        if q.shape[1] != 1:
            raise LensworksError(f"similar: expected one prompt, got {q.shape[1]}")
        qv = q[b, 0].to(device=self.outputs_.device, dtype=self.outputs_.dtype)
        idx, cos = [], []
        step = chunk_size or (1 << 20)
        with torch.inference_mode():
            for start in range(0, self.n_windows, step):
                s = self.outputs_[b, start : start + step] @ qv
                hit = (s > t).nonzero()[:, 0] if float(t) < 1.0 else torch.zeros(0, dtype=torch.long, device=s.device)
                idx.append(hit.cpu() + start)
                cos.append(s[hit].float().cpu())
        idx_t, cos_t = torch.cat(idx), torch.cat(cos)
        order = cos_t.argsort(descending=True)
        idx_t, cos_t = idx_t[order], cos_t[order]
        texts = tuple(self.window_text(int(i)) for i in idx_t)
        cum = torch.zeros(self.next_count_.numel() + 1, dtype=torch.long)
        cum[1:] = torch.cumsum(self.next_count_.long(), 0)
        n_next = cum[self.next_ptr_[idx_t + 1]] - cum[self.next_ptr_[idx_t]]
        return SimilarWindows(prompt=labels[0], block=block, threshold=float(t), indices=idx_t, cosines=cos_t,
                              texts=texts, next_counts=n_next.long())

    def window_text(self, index: int) -> str:
        """The text of window ``index`` (token ids joined by spaces without a tokenizer)."""
        index = check_int(index, "index", low=0, high=len(self.windows_))
        return token_label(self.model, self.windows_[index].tolist())

    def next_counts(self, index: int) -> Int[Tensor, " d_vocab"]:
        """Dense next-token counts of window ``index``."""
        index = check_int(index, "index", low=0, high=len(self.windows_))
        lo, hi = int(self.next_ptr_[index]), int(self.next_ptr_[index + 1])
        c = torch.zeros(self.d_vocab, dtype=torch.long)
        c[self.next_token_[lo:hi].long()] = self.next_count_[lo:hi].long()
        return c

    def _combine(self, block_counts: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        total = torch.einsum("b,bpv->pv", w.to(block_counts), block_counts)
        mass = total.sum(-1)
        matched = mass > 0
        fallback = self.unigram_.to(total)[None].expand_as(total)
        probs = torch.where(matched[:, None], total / mass.clamp_min(1e-30)[:, None], fallback)
        return probs, matched

    def predict(
        self,
        prompts: Data,
        thresholds: Thresholds,
        weights: Thresholds | None = None,
        *,
        batch_size: int = 256,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> NeighbourPrediction:
        """Seed 004's weighted per-block next-token distributions.

        For each block ``b``: find the windows with cosine > ``thresholds[b]`` (block outputs at
        the last token), sum their next-token counts into ``counts_b``; the prediction is
        ``sum_b w_b counts_b`` normalised. The raw counts are weighted (not per-block
        distributions), as in the seed, so a block with many matches weighs more. A prompt
        without any similar window in a weighted block gets the corpus's overall next-token
        frequency and ``matched=False``: never NaN.

        Args:
            prompts: Strings or token ids (any length up to ``n_ctx``; read at the last token).
            thresholds: One cosine threshold, or one per indexed block.
            weights: One weight per block (default all 1), non-negative.
            batch_size: Prompts per forward pass.
            chunk_size: Windows per similarity block (default: from a memory budget: 64 MiB on
                CPU, 1/8 of free GPU memory up to 2 GiB).
            progress: Progress bar (None: only on a terminal).

        Example:
            >>> pred = approx.predict(["And only l"], [0.95, 0.94, 0.85])  # doctest: +SKIP
        """
        thr = self._check_thresholds(thresholds)
        w = self._check_weights(weights)
        q, model_probs, labels = self._prompt_outputs(prompts, batch_size)
        counts, n_sim = self._search(q, thr[:, None], chunk_size=chunk_size, progress=progress)
        counts, n_sim = counts[:, 0], n_sim[:, 0]
        probs, matched = self._combine(counts, w)
        return NeighbourPrediction(
            probs=probs.cpu(), block_counts=counts.cpu(), n_similar=n_sim.cpu(), matched=matched.cpu(),
            model_probs=model_probs.cpu(), prompt_labels=labels, thresholds=tuple(thr.tolist()),
            weights=tuple(w.tolist()), blocks=self.blocks,
        )

    def evaluate(
        self,
        prompts: Data,
        thresholds: Thresholds,
        weights: Thresholds | None = None,
        *,
        batch_size: int = 256,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> NeighbourEvaluation:
        """Hellinger distance between :meth:`predict`'s distribution and the model's own.

        ``baseline_mean`` is the mean distance of a prediction that ignores the prompt (the
        corpus's overall next-token frequency), to read ``mean`` against.

        Example:
            >>> ev = approx.evaluate(prompts, [0.95, 0.94, 0.85], [0.01, 0.1, 1.0])  # doctest: +SKIP
            >>> ev.mean, ev.std  # doctest: +SKIP
        """
        pred = self.predict(prompts, thresholds, weights, batch_size=batch_size, chunk_size=chunk_size,
                            progress=progress)
        ev = _evaluation(pred.probs, pred.model_probs, pred.matched, pred.n_similar, pred.prompt_labels,
                         pred.thresholds, pred.weights, self.blocks)
        base = _common.hellinger(self.unigram_[None].expand_as(pred.model_probs), pred.model_probs)
        return dataclasses.replace(ev, baseline_mean=float(base.mean()))

    def tune(
        self,
        prompts: Data,
        *,
        threshold_grid: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97),
        weight_grid: Sequence[float] = (0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0),
        rounds: int = 2,
        batch_size: int = 256,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> TuneResult:
        """Search per-block thresholds and weights that minimise the mean Hellinger distance.

        One streaming pass computes every block's counts for every threshold in the grid
        (the similarity matrix is shared by all thresholds); the search itself then only
        recombines ``[prompt, vocab]`` tensors: each block's best threshold alone first, then
        ``rounds`` of coordinate descent over each block's weight and threshold. Tune on one
        prompt set and :meth:`evaluate` on another to avoid fitting noise.

        Example:
            >>> best = approx.tune(train_prompts)  # doctest: +SKIP
            >>> approx.evaluate(test_prompts, best.thresholds, best.weights).mean  # doctest: +SKIP
        """
        grid_list = sorted(set(_grid_values(threshold_grid, "threshold_grid")))
        grid = torch.tensor(grid_list, dtype=torch.float32)
        if grid.numel() == 0 or bool((grid < -1).any() | (grid > 1).any()):
            raise LensworksError(f"threshold_grid: expected values in [-1, 1], got {list(threshold_grid)}")
        wgrid = sorted(set(_grid_values(weight_grid, "weight_grid")))
        if not wgrid or min(wgrid) < 0:
            raise LensworksError(f"weight_grid: expected non-negative values, got {list(weight_grid)}")
        rounds = check_int(rounds, "rounds", low=0)
        q, model_probs, labels = self._prompt_outputs(prompts, batch_size)
        n_b = len(self.blocks)
        counts, _ = self._search(q, grid[None].expand(n_b, -1), chunk_size=chunk_size, progress=progress)
        model_probs = model_probs.to(counts.device)

        def score(t_idx: list[int], w: list[float]) -> float:
            if sum(w) <= 0:
                return float("inf")
            bc = torch.stack([counts[b, t_idx[b]] for b in range(n_b)])
            probs, _ = self._combine(bc, torch.tensor(w))
            return float(_common.hellinger(probs, model_probs).mean())

        t_idx = []
        for b in range(n_b):
            alone = [0.0] * n_b
            alone[b] = 1.0
            scores = [score([ti if j == b else 0 for j in range(n_b)], alone) for ti in range(grid.numel())]
            t_idx.append(int(torch.tensor(scores).argmin()))
        w = [1.0] * n_b
        best = score(t_idx, w)
        history = [("start", best)]
        for r in range(int(rounds)):
            for b in range(n_b):
                for cand in wgrid:
                    trial = list(w)
                    trial[b] = cand
                    s = score(t_idx, trial)
                    if s < best - 1e-9:
                        best, w = s, trial
                for ti in range(grid.numel()):
                    trial = list(t_idx)
                    trial[b] = ti
                    s = score(trial, w)
                    if s < best - 1e-9:
                        best, t_idx = s, trial
            history.append((f"round {r + 1}", best))
        return TuneResult(thresholds=tuple(grid_list[i] for i in t_idx), weights=tuple(w), mean_hellinger=best,
                          history=tuple(history), blocks=self.blocks)


def _grid_values(values: Any, name: str) -> list[float]:
    """A search grid as finite floats (NaN would silently win or lose every comparison)."""
    try:
        out = [float(x) for x in values]
    except (TypeError, ValueError) as exc:
        raise LensworksError(f"{name}: expected a sequence of numbers, got {values!r}") from exc
    bad = [x for x in out if not math.isfinite(x)]
    if bad:
        raise LensworksError(f"{name}: expected finite numbers, got {bad}")
    return out


def _evaluation(probs, model_probs, matched, n_similar, labels, thresholds, weights, blocks) -> NeighbourEvaluation:
    h = _common.hellinger(probs, model_probs).float()
    return NeighbourEvaluation(
        hellinger=h, mean=float(h.mean()), std=float(_common.std_or_zero(h)), min=float(h.min()), max=float(h.max()),
        n_unmatched=int((~matched).sum()), matched=matched, n_similar=n_similar, prompt_labels=labels,
        thresholds=thresholds, weights=weights, blocks=blocks,
    )
