"""Seed 004's approximation: predict the next token from corpus windows whose block outputs
point the same way as the prompt's, streaming over the corpus in chunks.

:class:`NeighbourApproximation` is a scikit-learn style estimator: hyper-parameters in the
constructor, ``fit(model, corpus)`` learns the window index and returns ``self``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from lensworks._deprecation import renamed_arguments
from lensworks._dist import Shard
from lensworks.geometry import _common
from lensworks.geometry._common import Data, gather_at, has_hook, iter_batches
from lensworks.geometry._estimator import Estimator, fit_method
from lensworks.geometry._neighbour_index import WindowIndex, corpus_tokens, low_precision_for, window_counts
from lensworks.geometry._neighbour_results import NeighbourEvaluation, NeighbourPrediction, SimilarWindows, TuneResult
from lensworks.geometry._neighbour_args import _check_cosines, _check_weights, _grid_values, _per_block
from lensworks.geometry._window_forward import embed_windows
from lensworks.model import (
    HookedTransformer, LensworksError, check_int, check_layer, hook_name, model_facts, processing_state, token_label,
    uses_bos,
)

__all__ = ["NeighbourApproximation", "NeighbourPrediction", "NeighbourEvaluation", "SimilarWindows", "TuneResult",
           "corpus_tokens"]

#: Hooks whose per-block outputs can index the corpus.
INDEX_HOOKS = ("mlp_out", "attn_out", "resid_pre", "resid_mid", "resid_post")

Thresholds = Union[float, Sequence[float], Tensor]
Corpus = Union[str, Tensor, Sequence[int]]

#: Learned attributes (and properties that read them): reading one before ``fit`` raises.
_FITTED = frozenset({"model_", "blocks_", "prepend_bos_", "hook_", "index_", "n_corpus_tokens_", "processing_", "windows_",
                     "next_ptr_", "next_token_", "next_count_", "outputs_", "unigram_", "model", "n_windows", "d_vocab"})


def _restore_old_attributes(approx: "NeighbourApproximation") -> None:
    """The deprecated classmethod ``fit`` left the resolved blocks and BOS setting in ``blocks`` / ``prepend_bos``."""
    approx.blocks, approx.prepend_bos = approx.blocks_, approx.prepend_bos_


class NeighbourApproximation(Estimator):
    """An index of every unique corpus window: its next-token counts and its per-block outputs.

    Hyper-parameters go to the constructor; :meth:`fit` learns the index from a model and a
    corpus and returns ``self``. Learned attributes (scikit-learn style, set by ``fit``; reading
    one before raises a ``LensworksError`` saying to call ``fit`` first):

    - ``model_``: the model (also ``model``); ``blocks_``: the blocks indexed; ``prepend_bos_``:
      whether windows and prompts are run with BOS; ``processing_``: the weights' state;
    - ``windows_``: ``[n_windows, window]`` token ids of the unique windows (each followed by
      at least one token in the corpus);
    - ``next_ptr_``, ``next_token_``, ``next_count_``: next-token counts in compressed-row form
      (window ``i``'s counts are at ``next_ptr_[i]:next_ptr_[i+1]``);
    - ``outputs_``: ``[n_blocks, n_windows, d_model]`` unit-normalised block outputs (``hook_``
      at the window's last token), on the model's device; ``hook_``: the block output indexed
      (the ``hook`` asked for, or the default chosen for this model);
    - ``unigram_``: ``[d_vocab]`` overall next-token frequency in the corpus;
      ``n_corpus_tokens_``: the corpus length in tokens.

    Args:
        window: Window length in tokens (the seed used 10 characters).
        hook: Block output to compare: ``mlp_out`` (the seed's FFN output), ``attn_out``,
            ``resid_pre``, ``resid_mid`` or ``resid_post``. Default: ``mlp_out``, or ``attn_out`` for an
            attention-only model (which has no FFN); ``fit`` records the choice in ``hook_``.
        blocks: Which blocks (default all).
        prepend_bos: Prepend BOS to every window and prompt (default: the model's setting);
            windows and prompts are always run the same way.
        dtype: Storage dtype of the outputs (default float32; float16/bfloat16 halve memory on
            a GPU).
        search_dtype: Similarities from bfloat16/float16 copies, every one near a threshold
            recomputed exactly (``"auto"``: bfloat16 on a GPU, exact float32 on the CPU; None: exact).
        thresholds: Cosine threshold(s) :meth:`predict` uses when given none: one, or one per block.
        weights: Block weight(s) :meth:`predict` uses when given none (default all 1).

    Example:
        >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
        >>> approx = NeighbourApproximation(window=4, thresholds=0.9).fit(zoo.load("char-mlp"), text)
        >>> approx.n_windows, approx.hook_
        (42, 'mlp_out')
        >>> ev = approx.evaluate(approx.predict(["def h(z):", "    return"]))
        >>> round(ev.mean, 3)  # mean Hellinger distance to the model's next-token distribution
        0.122
    """

    _fitted_names = _FITTED
    _fitted_marker = "index_"
    _fit_call = ".fit(model, corpus)"

    def __init__(self, window: int = 10, hook: str | None = None, blocks: Sequence[int] | None = None,
                 prepend_bos: bool | None = None, dtype: torch.dtype | None = None, thresholds: Thresholds = 0.9,
                 weights: Thresholds | None = None, search_dtype: torch.dtype | str | None = "auto"):
        self.window = window
        self.hook = hook
        self.blocks = blocks
        self.prepend_bos = prepend_bos
        self.dtype = dtype
        self.thresholds = thresholds
        self.weights = weights
        self.search_dtype = search_dtype

    @fit_method(legacy=_restore_old_attributes)
    def fit(self, model: HookedTransformer, corpus: Corpus, *, batch_size: int = 2048,
            progress: bool | None = None, shared_prefixes: bool | None = None) -> "NeighbourApproximation":
        """Index every unique window of ``window`` tokens in the corpus; return ``self``.

        Steps: tokenize the corpus; take every window that is followed by a token; find the
        unique ones with a radix sort on bit-packed ids (no Python loop over windows); count
        the tokens that follow each (compressed rows); run each unique window through the
        model once (batched, stopping after the last block needed) and keep the unit-normalised
        ``hook`` output of every block at its last token. Windows that share a prefix share its
        positions: each distinct prefix is run once, its keys and values kept in
        TransformerLens's cache for the windows that continue it.

        The old call ``NeighbourApproximation.fit(model, corpus, window=..., ...)`` on the class
        still works and warns (DeprecationWarning).

        Args:
            model: The model.
            corpus: Text, or a 1-D tensor of token ids.
            batch_size: Windows per forward pass.
            progress: Progress bar (None: only on a terminal).
            shared_prefixes: Run each distinct prefix once (None: on the CPU whenever the model
                allows it, a HookedTransformer with standard or rotary positions; True: also on
                a GPU; False: every window in full). The outputs agree to float rounding.

        Returns:
            ``self``, with the learned attributes set.

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> round(approx.evaluate(["def h(z):", "    return"]).mean, 3)
            0.122
        """
        window = self.window
        hook = self.hook if self.hook is not None else ("mlp_out" if model_facts(model).has_stream("mlp_out") else "attn_out")
        if hook not in INDEX_HOOKS:
            raise LensworksError(f"unknown stream or hook {hook!r}; expected one of {INDEX_HOOKS}")
        if not has_hook(model, hook, 0):
            raise LensworksError(f"hook {hook!r} does not exist in this model (e.g. attention-only models have no mlp_out)")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise LensworksError(f"window must be a positive int, got {window!r}")
        blocks = tuple(range(model.cfg.n_layers)) if self.blocks is None else tuple(check_layer(model, b) for b in self.blocks)
        if not blocks:
            raise LensworksError("blocks: expected at least one block")
        bos = uses_bos(model, self.prepend_bos)
        if window + int(bos) > model.cfg.n_ctx:
            raise LensworksError(f"window {window} (+BOS) is longer than the model's n_ctx={model.cfg.n_ctx}")
        _per_block(self.thresholds, "thresholds", len(blocks), check=_check_cosines)
        if self.weights is not None:
            _per_block(self.weights, "weights", len(blocks), check=_check_weights)
        batch_size = check_int(batch_size, "batch_size", low=1)
        toks = corpus_tokens(model, corpus)
        if toks.numel() < window + 1:
            raise LensworksError(
                f"corpus: window of {window} tokens is longer than the corpus allows ({toks.numel()} tokens; "
                "a window must be followed by at least one token)"
            )
        windows, ptr, next_token, next_count, unigram = window_counts(toks, window, model.cfg.d_vocab)
        outputs, offset = embed_windows(model, windows, [hook_name(hook, b) for b in blocks], bos=bos,
                                        dtype=self.dtype or torch.float32, batch_size=batch_size, progress=progress,
                                        shared_prefixes=shared_prefixes)
        index = WindowIndex(windows=windows, next_ptr=ptr, next_token=next_token, next_count=next_count,
                            outputs=outputs, unigram=unigram, offset=offset)
        return self._set_index(model, index, blocks=blocks, prepend_bos=bos, n_corpus_tokens=int(toks.numel()),
                               hook=hook)

    def _set_index(self, model: HookedTransformer, index: WindowIndex, *, blocks: tuple[int, ...], prepend_bos: bool,
                   n_corpus_tokens: int, hook: str | None = None) -> "NeighbourApproximation":
        """Set the learned attributes from a built index (``fit``, and benchmarks with synthetic outputs)."""
        self.model_ = model
        self.hook_ = hook or self.hook or "mlp_out"
        self.blocks_ = blocks
        self.prepend_bos_ = prepend_bos
        self.n_corpus_tokens_ = n_corpus_tokens
        self.processing_ = processing_state(model)
        self.index_ = index
        return self

    def __repr__(self) -> str:
        fitted = (f" fitted: {self.n_windows:,} windows of {self.n_corpus_tokens_:,} corpus tokens, "
                  f"blocks {self.blocks_}" if self._is_fitted() else "")
        return f"NeighbourApproximation({self._params_repr()}){fitted}"

    # ------------------------------------------------------------------ learned attributes

    model = property(lambda self: self.model_, doc="The model the index was fitted with (``model_``).")
    windows_ = property(lambda self: self.index_.windows, doc="``[n_windows, window]`` unique windows.")
    next_ptr_ = property(lambda self: self.index_.next_ptr, doc="Row pointers of the next-token counts.")
    next_token_ = property(lambda self: self.index_.next_token, doc="Next-token ids (compressed rows).")
    next_count_ = property(lambda self: self.index_.next_count, doc="Next-token counts (compressed rows).")
    outputs_ = property(lambda self: self.index_.outputs, doc="``[block, n_windows, d_model]`` unit outputs.")
    unigram_ = property(lambda self: self.index_.unigram, doc="``[d_vocab]`` corpus next-token frequency.")
    n_windows = property(lambda self: self.index_.n_windows, doc="Number of unique windows indexed.")
    d_vocab = property(lambda self: self.index_.d_vocab, doc="Vocabulary size of the counts.")

    # ------------------------------------------------------------------ prompts and checks

    def _prompt_outputs(self, prompts: Data, batch_size: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
        """Unit block outputs ``[block, prompt, d]`` and model probabilities at each prompt's last token."""
        model = self.model_
        names = [hook_name(self.hook_, b) for b in self.blocks_]
        outs, probs, labels = [], [], []
        if isinstance(prompts, Tensor) and self.prepend_bos_:
            prompts = model_facts(model).add_bos((prompts[None] if prompts.ndim == 1 else prompts).long(), True)
        shard = Shard("data", model)  # under torch.distributed each rank runs its share of the prompts
        for toks, idx in iter_batches(model, prompts, batch_size=batch_size, position=-1,
                                      prepend_bos=self.prepend_bos_, what="data", shard=shard):
            acts, logits = gather_at(model, toks, idx, names, logits=True)
            outs.append(torch.stack([F.normalize(acts[n].float(), dim=-1) for n in names]))
            probs.append(logits.softmax(-1))
            for row in range(toks.shape[0]):
                ids = toks[row, int(self.prepend_bos_) : int(idx[row]) + 1].tolist()
                labels.append(token_label(model, ids))
        d, v = model.cfg.d_model, model.cfg.d_vocab_out
        out = torch.cat(outs, dim=1) if outs else torch.zeros(len(names), 0, d, device=model_facts(model).device)
        prob = torch.cat(probs, dim=0) if probs else torch.zeros(0, v, device=model_facts(model).device)
        return shard.gather(out, dim=1), shard.gather(prob), tuple(shard.gather_objects(labels))

    def _thresholds(self, thresholds: Thresholds | None, name: str = "thresholds") -> Tensor:
        values = self.thresholds if thresholds is None else thresholds
        return _per_block(values, name, len(self.blocks_), check=_check_cosines)

    def _weights(self, weights: Thresholds | None) -> Tensor:
        values = self.weights if weights is None else weights
        if values is None:
            return torch.ones(len(self.blocks_))
        return _per_block(values, "weights", len(self.blocks_), check=_check_weights)

    def _token_labels(self, ids: Tensor) -> tuple[str, ...]:
        text = {i: token_label(self.model_, [i]) for i in set(ids.tolist())}
        return tuple(text[i] for i in ids.tolist())

    # ------------------------------------------------------------------ windows

    def similar(self, prompt: Union[str, Sequence[str], Tensor], block: int | None = None,
                threshold: float | None = None, *, chunk_size: int | None = None) -> SimilarWindows:
        """Windows whose ``block`` output has cosine strictly greater than ``threshold`` with the prompt's.

        Args:
            prompt: One prompt (a string, a list of one string, or token ids).
            block: An indexed block (default: the last indexed block).
            threshold: Cosine threshold (default: this block's ``thresholds``).
            chunk_size: Windows per similarity block.

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> approx.similar("def f", block=0, threshold=0.9).texts[:3]  # the prompt's last 4 characters
            ('ef f',)
        """
        block = self.blocks_[-1] if block is None else block
        if block not in self.blocks_:
            raise LensworksError(f"block {block} is not indexed; indexed blocks are {list(self.blocks_)}")
        b = self.blocks_.index(block)
        t = self._thresholds(None)[b] if threshold is None else self._thresholds(threshold, "threshold")[0]
        if isinstance(prompt, str):
            prompt = [prompt]
        q, _, labels = self._prompt_outputs(prompt, batch_size=1)
        if q.shape[1] != 1:
            raise LensworksError(f"similar: expected one prompt, got {q.shape[1]}")
        if chunk_size is not None:
            chunk_size = check_int(chunk_size, "chunk_size", low=1)
        idx_t, cos_t = self.index_.similar(q[b, 0], b, t, chunk_size)
        texts = tuple(self.window_text(int(i)) for i in idx_t)
        return SimilarWindows(prompt=labels[0], block=block, threshold=float(t), indices=idx_t, cosines=cos_t,
                              texts=texts, next_counts=self.index_.n_next(idx_t), processing=dict(self.processing_))

    def window_text(self, index: int) -> str:
        """The text of window ``index`` (token ids joined by spaces without a tokenizer).

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> approx.window_text(0)
            '\\n\\nde'
        """
        index = check_int(index, "index", low=0, high=len(self.windows_))
        return token_label(self.model_, self.windows_[index].tolist())

    def next_counts(self, index: int) -> Int[Tensor, " d_vocab"]:
        """Dense next-token counts of window ``index``.

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> int(approx.next_counts(0).sum())  # "\\n\\nde" is followed 4 times in the text
            4
        """
        index = check_int(index, "index", low=0, high=len(self.windows_))
        return self.index_.next_counts(index)

    # ------------------------------------------------------------------ predict, evaluate

    @renamed_arguments(prompts="data")
    def predict(
        self,
        data: Data,
        thresholds: Thresholds | None = None,
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
            data: The prompts: strings or token ids (any length up to ``n_ctx``; read at the last
                token). ``prompts=`` is the old name.
            thresholds: One cosine threshold, or one per indexed block (default: the
                ``thresholds`` hyper-parameter).
            weights: One weight per block, non-negative (default: the ``weights``
                hyper-parameter, all 1 when None).
            batch_size: Prompts per forward pass.
            chunk_size: Windows per similarity block (default: from a memory budget: 64 MiB on
                CPU, 1/8 of free GPU memory up to 2 GiB).
            progress: Progress bar (None: only on a terminal).

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> pred = approx.predict(["def h(z):"], [0.95, 0.94, 0.85, 0.8])  # one threshold per block
            >>> pred.to_frame()[["prompt", "top_token", "model_top_token"]].values.tolist()
            [['def h(z):', '\\n', '\\n']]
        """
        thr = self._thresholds(thresholds)
        w = self._weights(weights)
        batch_size = check_int(batch_size, "batch_size", low=1)
        if chunk_size is not None:
            chunk_size = check_int(chunk_size, "chunk_size", low=1)
        q, model_probs, labels = self._prompt_outputs(data, batch_size)
        counts, n_sim = self.index_.search(q, thr[:, None], chunk_size=chunk_size, progress=progress,
                                           low_precision=low_precision_for(self.search_dtype, self.index_.outputs))
        counts, n_sim = counts[:, 0], n_sim[:, 0]
        probs, matched = self.index_.combine(counts, w)
        probs, model_probs = probs.cpu(), model_probs.cpu()
        return NeighbourPrediction(
            probs=probs, block_counts=counts.cpu(), n_similar=n_sim.cpu(), matched=matched.cpu(),
            model_probs=model_probs, prompt_labels=labels, thresholds=tuple(thr.tolist()),
            weights=tuple(w.tolist()), blocks=self.blocks_, top_token_labels=self._token_labels(probs.argmax(-1)),
            model_top_token_labels=self._token_labels(model_probs.argmax(-1)), hook=self.hook_,
            processing=dict(self.processing_),
        )

    @renamed_arguments(prompts="data")
    def evaluate(
        self,
        data: Union[Data, NeighbourPrediction],
        thresholds: Thresholds | None = None,
        weights: Thresholds | None = None,
        *,
        batch_size: int = 256,
        chunk_size: int | None = None,
        progress: bool | None = None,
    ) -> NeighbourEvaluation:
        """Hellinger distance between :meth:`predict`'s distribution and the model's own.

        ``baseline_mean`` is the mean distance of a prediction that ignores the prompt (the
        corpus's overall next-token frequency), to read ``mean`` against.

        Args:
            data: The prompts, as for :meth:`predict`; or a :class:`NeighbourPrediction` it
                returned: then nothing is recomputed, and ``thresholds`` / ``weights`` must be None.
            thresholds: As for :meth:`predict`.
            weights: As for :meth:`predict`.
            batch_size: As for :meth:`predict`.
            chunk_size: As for :meth:`predict`.
            progress: As for :meth:`predict`.

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> prompts = ["def h(z):", "    return"]
            >>> ev = approx.evaluate(prompts, [0.95, 0.94, 0.85, 0.8], [0.01, 0.1, 1.0, 1.0])
            >>> pred = approx.predict(prompts, [0.95, 0.94, 0.85, 0.8], [0.01, 0.1, 1.0, 1.0])
            >>> approx.evaluate(pred).mean == ev.mean
            True
        """
        if isinstance(data, NeighbourPrediction):
            pred = data
            if thresholds is not None or weights is not None:
                raise LensworksError("evaluate: a NeighbourPrediction already fixes its thresholds and weights; "
                                     "pass the prompts instead to evaluate other ones")
            if tuple(pred.blocks) != self.blocks_ or pred.model_probs.shape[-1] != self.d_vocab:
                raise LensworksError(f"evaluate: the prediction is for blocks {list(pred.blocks)} and "
                                     f"{pred.model_probs.shape[-1]} tokens, this index has blocks "
                                     f"{list(self.blocks_)} and {self.d_vocab}")
        else:
            pred = self.predict(data, thresholds, weights, batch_size=batch_size, chunk_size=chunk_size,
                                progress=progress)
        base = _common.hellinger(self.unigram_[None].expand_as(pred.model_probs), pred.model_probs)
        return NeighbourEvaluation.from_prediction(pred, baseline_mean=float(base.mean()))

    # ------------------------------------------------------------------ tune

    @renamed_arguments(prompts="data")
    def tune(
        self,
        data: Data,
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
        prompt set and :meth:`evaluate` on another to avoid fitting noise. The estimator is not
        changed; ``set_params(thresholds=..., weights=...)`` adopts the result.

        Example:
            >>> text = "def f(x):\\n    return x + 1\\n\\ndef g(y):\\n    return y * 2\\n" * 4
            >>> approx = NeighbourApproximation(window=4).fit(zoo.load("char-mlp"), text)
            >>> train_prompts, test_prompts = ["def h(z):"], ["    return"]
            >>> best = approx.tune(train_prompts)
            >>> best.thresholds
            (0.6, 0.5, 0.6, 0.7)
            >>> approx = approx.set_params(thresholds=best.thresholds, weights=best.weights)
            >>> round(approx.evaluate(test_prompts).mean, 3)
            0.145
        """
        grid_list = sorted(set(_grid_values(threshold_grid, "threshold_grid")))
        grid = torch.tensor(grid_list, dtype=torch.float32)
        if grid.numel() == 0 or bool((grid < -1).any() | (grid > 1).any()):
            raise LensworksError(f"threshold_grid: expected values in [-1, 1], got {list(threshold_grid)}")
        wgrid = sorted(set(_grid_values(weight_grid, "weight_grid")))
        if not wgrid or min(wgrid) < 0:
            raise LensworksError(f"weight_grid: expected non-negative values, got {list(weight_grid)}")
        rounds = check_int(rounds, "rounds", low=0)
        q, model_probs, _ = self._prompt_outputs(data, batch_size)
        n_b = len(self.blocks_)
        counts, _ = self.index_.search(q, grid[None].expand(n_b, -1), chunk_size=chunk_size, progress=progress,
                                       low_precision=low_precision_for(self.search_dtype, self.index_.outputs))
        model_probs = model_probs.to(counts.device)

        def score(t_idx: list[int], w: list[float]) -> float:
            if sum(w) <= 0:
                return float("inf")
            bc = torch.stack([counts[b, t_idx[b]] for b in range(n_b)])
            probs, _ = self.index_.combine(bc, torch.tensor(w))
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
                          history=tuple(history), blocks=self.blocks_, processing=dict(self.processing_))
