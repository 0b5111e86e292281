"""Running every section that applies to a model, and recording which text each one read.

:func:`analyse` checks its arguments, builds one :class:`~lensworks.report.Context` and runs the
registry (:func:`lensworks.report.registry`) through :func:`~lensworks.report.run_sections`;
what it returns, :class:`Analyses`, is a dict ``group -> results`` for :func:`build`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from lensworks._threads import adaptive_threads
from lensworks.model import HookedTransformer, LensworksError, check_int, check_model, encode_text
from lensworks.report._circuit_sections import (  # noqa: F401 - the term-importance limits, importable here as before
    TERMS_MAX, TERMS_MAX_HEADS, TERMS_TOKENS_LARGE, TERMS_WINDOWS, TERMS_WINDOWS_LARGE,
)
from lensworks.report._context import FALLBACK_NOTE, FALLBACK_SOURCE, Context, DataRead, read_prompts, text_windows_of
from lensworks.report._sections import Entry, SectionRun, Skipped, run_sections

__all__ = ["analyse", "Analyses", "DataRead", "FALLBACK_SOURCE", "FALLBACK_NOTE"]


class Analyses(dict):
    """What :func:`analyse` returns: a dict ``group -> results`` that also carries ``data``,
    the :class:`DataRead` records saying which text each group of analyses read.

    Each section's result is listed as it always was: the result, or a ``(result, caption)``
    pair for the sections marked ``pair`` (the caption ends with the result's note), and the
    attention explorer as its drawn figure. ``entries`` holds every section's result itself
    (:class:`~lensworks.report.Entry`), and ``skipped`` the sections that did not apply, with
    their reason (:class:`~lensworks.report.Skipped`; the page lists them).

    Example:
        >>> from lensworks.report import Context, registry, run_sections
        >>> sections = registry(names=["copying", "induction"])  # analyse(model) runs them all
        >>> results = Analyses.of(run_sections(Context.of(model), sections), sections)
        >>> list(results), results.data[0].source
        (['circuits'], 'random token sequences, each repeated once (seed 0)')
    """

    def __init__(self, sections: Mapping[str, list[Any]], *, data: Sequence[DataRead] = (),
                 entries: Sequence[Entry] = (), skipped: Sequence[Skipped] = ()):
        super().__init__(sections)
        self.data: list[DataRead] = list(data)
        self.entries: list[Entry] = list(entries)
        self.skipped: list[Skipped] = list(skipped)

    @classmethod
    def of(cls, run: SectionRun, sections: Sequence[Any]) -> "Analyses":
        """The dict view of a :func:`run_sections` run (``sections`` are the sections it ran).

        Example:
            >>> from lensworks.report import Context, registry, run_sections
            >>> sections = registry(names=["copying", "induction"])
            >>> dict(Analyses.of(run_sections(Context.of(model), sections), sections)).keys()
            dict_keys(['circuits'])
        """
        by_name = {s.name: s for s in sections}
        groups: dict[str, list[Any]] = {}
        for e in run.entries:
            s = by_name[e.section]
            item = e.result.figure() if s.drawn else e.result
            groups.setdefault(e.group, []).append((item, e.caption) if s.pair else item)
        return cls(groups, data=run.data, entries=run.entries, skipped=run.skipped)


#: The attention explorer on prompts given by the user: at most this many prompts, this many
#: tokens of each, and (prompt, head) views, so the page stays a few MB on models with many heads.
EXPLORER_MAX_PROMPTS = 8
EXPLORER_MAX_TOKENS = 48
EXPLORER_MAX_VIEWS = 256


_text_windows = text_windows_of  # the old private name


_read_prompts = read_prompts


def _explorer_prompts(model: HookedTransformer, prompts: str | Sequence[str]) -> list[str]:
    """The prompts for the attention explorer, each checked now (before any analysis runs).

    A string is one prompt per line (blank lines skipped; errors name the line); a sequence
    holds one prompt per item (errors name the index).
    """
    if isinstance(prompts, str):
        items = [(f"prompts line {n}", line.rstrip("\r")) for n, line in enumerate(prompts.split("\n"), 1)]
        items = [(what, line) for what, line in items if line.strip()]
    else:
        try:
            items = list(enumerate(prompts))
        except TypeError:
            raise LensworksError(f"prompts must be a string (one prompt per line) or a list of strings, "
                                 f"got {type(prompts).__name__}") from None
        for i, p in items:
            if not isinstance(p, str):
                raise LensworksError(f"prompts[{i}] must be a string, got {type(p).__name__}")
            if not p.strip():
                raise LensworksError(f"prompts[{i}] is empty; expected text")
        items = [(f"prompts[{i}]", p) for i, p in items]
    if not items:
        raise LensworksError("prompts: no non-empty prompt; expected at least one (one prompt per line)")
    if model.tokenizer is None:
        raise LensworksError("prompts: the model has no tokenizer, so it cannot read text prompts; leave prompts out")
    for what, p in items:
        n = len(encode_text(model, p, what=what))  # refuses characters the vocabulary lacks, naming them
        if n > model.cfg.n_ctx:
            raise LensworksError(f"{what} has {n} tokens, more than the model's n_ctx={model.cfg.n_ctx}; shorten it")
    return [p for _, p in items]


@adaptive_threads
def analyse(
    model: HookedTransformer,
    *,
    text: str | None = None,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    corpus: str | None = None,
    n_prompts: int = 32,
    prompt_len: int | None = None,
    seed: int = 0,
    progress: bool = True,
    skip_unknown: bool = False,
    prompts: str | Sequence[str] | None = None,
) -> Analyses:
    """Run the analyses that apply to a model; the result goes straight into :func:`build`.

    Circuits always run (composition Q/K/V when there are at least two layers, copying scores,
    previous-token / duplicate-token / induction scores, the induction verdict, the circuit graph,
    the attention explorer). Geometry (residual statistics, block ablation, decomposition, logit
    lens, effective dimensionality) and probes (input-token probes with controls, their
    comparison with the embedding, the embedding's PCA basis) run on ``n_prompts`` windows of
    ``prompt_len`` tokens: from ``text``, else ``corpus``, else the held-out part of
    :func:`lensworks.zoo.corpus` for a model with a tokenizer, else repeated random token
    sequences. The attention explorer shows ``prompts`` when given, else the first two windows.
    Causal (activation patching of the residual stream, attention and MLP outputs and head
    outputs, attribution patching beside it, direct logit attribution) runs on a clean/corrupted
    pair of repeated random tokens (:func:`lensworks.causal.induction_pair`, 4 short prompts).

    Args:
        model: The model (not modified).
        text: Text the geometry and probes read.
        positive: Prompts (a list, or one prompt per line) for the residual statistics; with
            ``negative``, the two data sets compared. Default: the geometry CLI's built-in lines
            of Python against lines of English when the vocabulary can spell them, else the
            text windows against the same windows with their tokens shuffled.
        negative: The second data set.
        corpus: Fallback text when ``text`` is None (e.g. a corpus file's contents).
        n_prompts: Windows read by geometry and probes (probes use 2x as many).
        prompt_len: Tokens per window, 4 to ``n_ctx`` (default 64, or ``n_ctx`` when shorter).
        seed: Seed for random sequences, shuffles and controls.
        progress: Show a progress bar over the analyses.
        skip_unknown: Drop characters of ``text`` / ``corpus`` the vocabulary lacks (with a
            warning counting them) instead of raising.
        prompts: Prompts for the attention explorer (a list, or one prompt per line), instead of
            the first two text windows. Shown: the first ``EXPLORER_MAX_PROMPTS`` (8), fewer when
            the model has many heads (at most ``EXPLORER_MAX_VIEWS`` = 256 prompt-head views), the
            first ``EXPLORER_MAX_TOKENS`` (48) tokens of each. Checked before anything runs: a
            prompt with characters the vocabulary lacks or more than ``n_ctx`` tokens raises.

    Returns:
        An :class:`Analyses` dict ``{"circuits": [...], "geometry": [...], "probes": [...], "causal": [...]}``
        whose ``.data`` lists which text each group of analyses read (:class:`DataRead`;
        :func:`build` shows it under "Data read", with a plain warning for fallback text).

    Example:
        >>> from lensworks.report import build
        >>> results = analyse(model, n_prompts=2, prompt_len=8, progress=False)  # small, for speed
        >>> list(results)
        ['circuits', 'geometry', 'probes', 'causal']
        >>> build(results, "report.html", model=model)
        PosixPath('report.html')
    """
    from lensworks.report._registry import registry

    check_model(model)
    if (positive is None) != (negative is None):
        raise LensworksError("give both positive and negative prompts, or neither")
    n_prompts = check_int(n_prompts, "n_prompts", low=2)
    n_ctx = model.cfg.n_ctx
    prompt_len = min(64, n_ctx) if prompt_len is None else check_int(prompt_len, "prompt_len", low=4)
    if prompt_len > n_ctx:
        raise LensworksError(f"prompt_len={prompt_len} is longer than the model's n_ctx={n_ctx}; pass at most "
                             f"{n_ctx} (--prompt-len)")
    explorer_prompts = None if prompts is None else tuple(_explorer_prompts(model, prompts))
    ctx = Context.of(
        model, seed=seed, text=text, corpus=corpus, positive=positive, negative=negative, prompts=explorer_prompts,
        n_prompts=n_prompts, prompt_len=prompt_len, skip_unknown=skip_unknown,
        options={"explorer_max_prompts": EXPLORER_MAX_PROMPTS, "explorer_max_tokens": EXPLORER_MAX_TOKENS,
                 "explorer_max_views": EXPLORER_MAX_VIEWS},
    )
    sections = registry()
    return Analyses.of(run_sections(ctx, sections, progress=progress), sections)
