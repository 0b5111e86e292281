"""The window index behind :class:`~lensworks.geometry.NeighbourApproximation`: corpus tokens,
unique windows by a radix sort of bit-packed ids, next-token counts in compressed rows, and the
streaming similarity search that never holds the prompt x corpus matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensworks._dist import all_reduce_sum, gather_each_ragged, is_distributed
from lensworks.geometry._common import progress_bar
from lensworks.model import BOS_NAMES, HookedTransformer, LensworksError, check_encodable, model_vocab
from lensworks.model._tokens import VOCAB_TOKENIZER_NAME

__all__ = ["WindowIndex", "corpus_tokens", "window_counts", "pack_rows", "unique_rows", "DENSE_VOCAB_LIMIT",
           "SIM_MARGIN", "low_precision_for"]

#: Above this vocabulary size matched counts are scattered instead of multiplied densely.
DENSE_VOCAB_LIMIT = 1024


# --------------------------------------------------------------------------- corpus tokens


def corpus_tokens(model: HookedTransformer, corpus: Union[str, Tensor, Sequence[int]], *,
                  chunk_chars: int = 1 << 16) -> Int[Tensor, " n_tokens"]:
    """Token ids of a corpus string (no BOS), or validated ids when ids are given.

    Long strings are encoded in pieces cut after newlines (``chunk_chars`` characters or so),
    so a multi-character token that spans a cut may split differently than in one call.

    Example:
        >>> corpus_tokens(zoo.load("char-mlp"), "abc").tolist()
        [67, 68, 69]
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


# --------------------------------------------------------------------------- unique windows


def pack_rows(windows: Int[Tensor, "n width"], d_vocab: int) -> Int[Tensor, "n words"]:
    """Pack rows of token ids into as few int64 words as exactly fit (for sorting).

    Example:
        >>> pack_rows(torch.tensor([[1, 2], [3, 0]]), 4).tolist()
        [[6], [12]]
    """
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


def unique_rows(packed: Int[Tensor, "n words"]) -> tuple[Int[Tensor, " n_unique"], Int[Tensor, " n"]]:
    """(index of one representative row per unique row, inverse) by stable radix sort on words.

    Example:
        >>> first, inverse = unique_rows(torch.tensor([[5], [3], [5]]))
        >>> first.tolist(), inverse.tolist()
        ([1, 0], [1, 0, 1])
    """
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


def window_counts(toks: Int[Tensor, " n_tokens"], window: int, d_vocab: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The unique windows followed by a token, and the tokens that follow them.

    Returns ``(windows [n_windows, window], next_ptr [n_windows + 1], next_token, next_count,
    unigram [d_vocab])``: window ``i``'s next-token counts are ``next_token`` / ``next_count`` at
    ``next_ptr[i]:next_ptr[i+1]``; ``unigram`` is the overall next-token frequency.

    Example:
        >>> windows, ptr, tok, cnt, uni = window_counts(torch.tensor([1, 2, 1, 2, 3]), 2, 4)
        >>> windows.tolist(), tok.tolist(), cnt.tolist()
        ([[1, 2], [2, 1]], [1, 3, 2], [1, 1, 1])
    """
    all_windows = toks.unfold(0, window, 1)[:-1]  # [N, window], a view
    nxt = toks[window:]
    first, inverse = unique_rows(pack_rows(all_windows, d_vocab))
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
    return windows, ptr, next_token, pair_count.to(torch.int32), unigram


def default_budget(device: torch.device) -> int:
    """Bytes for one similarity block: a slice of free GPU memory, or 64 MiB on CPU."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(min(2 << 30, max(64 << 20, free // 8)))
        except Exception:  # pragma: no cover
            return 256 << 20
    return 64 << 20


# --------------------------------------------------------------------------- the index


#: How close to a threshold a low-precision cosine must be to be recomputed exactly.
SIM_MARGIN: dict[torch.dtype, float] = {torch.bfloat16: 2.0**-6, torch.float16: 2.0**-9}


def low_precision_for(setting: torch.dtype | str | None, outputs: Tensor) -> torch.dtype | None:
    """Resolve ``search_dtype``: ``"auto"`` is bfloat16 for float32 outputs on a GPU, else exact.

    Example:
        >>> low_precision_for("auto", torch.zeros(1, 1, 4)) is None  # CPU: exact
        True
    """
    if setting == "auto":
        return torch.bfloat16 if outputs.is_cuda and outputs.dtype == torch.float32 else None
    if setting is not None and setting not in SIM_MARGIN:
        raise LensworksError(f"search_dtype must be 'auto', None, torch.bfloat16 or torch.float16, got {setting!r}")
    return setting  # type: ignore[return-value]


def _checked_sims(q: Tensor, q_lp: Tensor, keys: Tensor, thresholds: Tensor, lp: torch.dtype) -> Tensor:
    """Cosines from low-precision copies, recomputed exactly wherever one is near a threshold."""
    sims = (q_lp @ keys.to(lp).T).float()
    margin = SIM_MARGIN[lp]
    near = torch.zeros_like(sims, dtype=torch.bool)
    for th in thresholds.tolist():
        near |= (sims - th).abs() <= margin
    pi, wi = near.nonzero(as_tuple=True)
    if pi.numel():
        sims[pi, wi] = (q[pi].float() * keys[wi].float()).sum(-1)
    return sims


@dataclass(frozen=True, eq=False)
class WindowIndex:
    """Unique windows, their next-token counts (compressed rows) and unit block outputs.

    Example:
        >>> windows, ptr, tok, cnt, unigram = window_counts(torch.tensor([1, 2, 1, 2, 3]), 2, 4)
        >>> outputs = torch.eye(2, 8)[None]  # one block: a unit output per window
        >>> index = WindowIndex(windows, ptr, tok, cnt, outputs, unigram)
        >>> counts, n_sim = index.search(outputs[:, :1], torch.full((1, 1), 0.9))  # query: window 0's output
        >>> counts.tolist(), n_sim.tolist()  # [1, 2] is followed once by 1 and once by 3
        ([[[[0.0, 1.0, 0.0, 1.0]]]], [[[1]]])
    """

    windows: Int[Tensor, "n_windows window"]
    next_ptr: Int[Tensor, " n_windows_plus_1"]
    next_token: Int[Tensor, " n_pairs"]
    next_count: Int[Tensor, " n_pairs"]
    outputs: Float[Tensor, "block n_windows d_model"]
    unigram: Float[Tensor, " d_vocab"]
    #: Index of the first window whose outputs this process holds (under torch.distributed each
    #: rank holds a contiguous range; alone, all of them from 0).
    offset: int = 0

    @property
    def n_windows(self) -> int:
        """Number of unique windows."""
        return int(self.windows.shape[0])

    @property
    def d_vocab(self) -> int:
        """Vocabulary size of the counts."""
        return int(self.unigram.shape[0])

    def next_counts(self, index: int) -> Int[Tensor, " d_vocab"]:
        """Dense next-token counts of window ``index``."""
        lo, hi = int(self.next_ptr[index]), int(self.next_ptr[index + 1])
        c = torch.zeros(self.d_vocab, dtype=torch.long)
        c[self.next_token[lo:hi].long()] = self.next_count[lo:hi].long()
        return c

    def n_next(self, indices: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        """How many tokens follow each of the windows ``indices`` in the corpus."""
        cum = torch.zeros(self.next_count.numel() + 1, dtype=torch.long)
        cum[1:] = torch.cumsum(self.next_count.long(), 0)
        return (cum[self.next_ptr[indices + 1]] - cum[self.next_ptr[indices]]).long()

    def dense_counts(self, start: int, stop: int, device: torch.device, with_ones: bool = False) -> Tensor:
        """Dense ``[stop - start, d_vocab (+1)]`` counts of a run of windows (and a column of ones)."""
        lo, hi = int(self.next_ptr[start]), int(self.next_ptr[stop])
        rows = torch.repeat_interleave(torch.arange(stop - start), self.next_ptr[start + 1 : stop + 1] - self.next_ptr[start:stop])
        c = torch.zeros(stop - start, self.d_vocab + int(with_ones), dtype=torch.float32)
        c[rows, self.next_token[lo:hi].long()] = self.next_count[lo:hi].float()
        if with_ones:
            c[:, -1] = 1.0
        return c.to(device)

    def similar(self, query: Float[Tensor, " d_model"], block: int, threshold: float,
                chunk_size: int | None = None) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"]]:
        """Windows whose output in block row ``block`` has cosine > ``threshold`` with ``query``, best first."""
        qv = query.to(device=self.outputs.device, dtype=self.outputs.dtype)
        idx, cos = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0)]
        step = chunk_size or (1 << 20)
        with torch.inference_mode():
            for start in range(0, self.outputs.shape[1], step):
                s = self.outputs[block, start : start + step] @ qv
                hit = (s > threshold).nonzero()[:, 0] if float(threshold) < 1.0 else torch.zeros(0, dtype=torch.long, device=s.device)
                idx.append(hit.cpu() + start + self.offset)
                cos.append(s[hit].float().cpu())
        idx_t, cos_t = torch.cat(idx), torch.cat(cos)
        if is_distributed():  # every rank searched its own windows
            idx_t = torch.cat([p.long() for p in gather_each_ragged(idx_t)])
            cos_t = torch.cat(gather_each_ragged(cos_t))
        order = cos_t.argsort(descending=True)
        return idx_t[order], cos_t[order]

    def combine(self, block_counts: Float[Tensor, "block n_prompts d_vocab"],
                w: Float[Tensor, " block"]) -> tuple[Float[Tensor, "n_prompts d_vocab"], Tensor]:
        """Normalised ``sum_b w_b counts_b``, the unigram where nothing matched, and ``matched``."""
        total = torch.einsum("b,bpv->pv", w.to(block_counts), block_counts)
        mass = total.sum(-1)
        matched = mass > 0
        fallback = self.unigram.to(total)[None].expand_as(total)
        probs = torch.where(matched[:, None], total / mass.clamp_min(1e-30)[:, None], fallback)
        return probs, matched

    def search(self, queries: Float[Tensor, "block n_prompts d_model"], thresholds: Float[Tensor, "block T"], *,
               chunk_size: int | None = None, progress: bool | None = None,
               low_precision: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Summed next-token counts ``[block, T, prompt, vocab]`` and match counts ``[block, T, prompt]``.

        ``thresholds`` is ``[block, T]``: several thresholds per block share one similarity pass.
        Only a ``[prompt_chunk, window_chunk]`` block of similarities exists at a time. The
        matched counts are added as a matrix product ``mask @ [counts | 1]`` (the extra column
        counts the matches) when the vocabulary is small; for a large vocabulary only the matched
        windows' compressed count rows are scattered (cost proportional to the matches).

        ``low_precision`` (``torch.bfloat16`` / ``torch.float16``): similarities are computed from
        copies in that dtype (tensor cores on a GPU), and every one within :data:`SIM_MARGIN` of
        a threshold is recomputed exactly from the stored outputs, so each decision is the one
        the stored precision makes. Rounding unit vectors to bf16 moves a cosine by at most
        about 2 * 2^-8; the margin is twice that.
        """
        device = self.outputs.device
        n_blocks, n_prompts, _ = queries.shape
        n_t = thresholds.shape[1]
        V = self.d_vocab
        budget = default_budget(device)
        p_chunk = max(1, min(n_prompts, 4096))
        if chunk_size is None:
            chunk_size = max(256, budget // (4 * p_chunk * 2))
        n_local = self.outputs.shape[1]
        chunk_size = int(min(chunk_size, max(1, n_local)))
        counts = torch.zeros(n_blocks, n_t, n_prompts, V, dtype=torch.float32, device=device)
        n_sim = torch.zeros(n_blocks, n_t, n_prompts, dtype=torch.long, device=device)
        q = queries.to(device=device, dtype=self.outputs.dtype)
        lp = low_precision if low_precision not in (None, self.outputs.dtype) else None
        if lp is not None and lp not in SIM_MARGIN:
            raise LensworksError(f"low_precision must be one of {list(SIM_MARGIN)}, got {lp}")
        q_lp = q.to(lp) if lp is not None else None
        thr_cpu = thresholds.cpu()
        ptr = self.next_ptr.to(device)
        tok = self.next_token.to(device).long()
        cnt = self.next_count.to(device).float()
        use_dense = V <= DENSE_VOCAB_LIMIT
        flat = torch.empty(p_chunk * chunk_size if use_dense else 0, dtype=torch.float32, device=device)
        with torch.inference_mode():
            for start in progress_bar(range(0, n_local, chunk_size), total=math.ceil(n_local / chunk_size),
                                      desc="NeighbourApproximation search", progress=progress):
                stop = min(n_local, start + chunk_size)
                dense_c = None
                for b in range(n_blocks):
                    keys = self.outputs[b, start:stop]
                    for p0 in range(0, n_prompts, p_chunk):
                        p1 = min(n_prompts, p0 + p_chunk)
                        if lp is None:
                            sims = q[b, p0:p1] @ keys.T  # [p, w]
                        else:
                            sims = _checked_sims(q[b, p0:p1], q_lp[b, p0:p1], keys, thr_cpu[b], lp)
                        for t in range(n_t):
                            if float(thr_cpu[b, t]) >= 1.0:
                                continue  # a cosine never exceeds 1 (rounding may say 1 + 1e-7)
                            th = float(thr_cpu[b, t])
                            target = counts[b, t, p0:p1]
                            if use_dense:
                                if dense_c is None:
                                    dense_c = self.dense_counts(start + self.offset, stop + self.offset, device,
                                                                with_ones=True)
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
                            g = wi + start + self.offset
                            first, lens = ptr[g], ptr[g + 1] - ptr[g]
                            rows = torch.repeat_interleave(pi, lens)
                            base = torch.repeat_interleave(first - (torch.cumsum(lens, 0) - lens), lens)
                            entry = base + torch.arange(rows.numel(), device=device)
                            target.view(-1).index_add_(0, rows * V + tok[entry], cnt[entry])
        return all_reduce_sum(counts), all_reduce_sum(n_sim)  # under torch.distributed: every rank's windows
