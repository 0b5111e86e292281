"""What every report section reads: the model, its facts, the text and windows, seeds, options.

A :class:`Context` is built once per run (by :func:`lensworks.report.analyse` or a CLI command)
and handed to every section. The windows a group reads are cut from the text only when a
section first asks for them (``ctx.windows("geometry")``), and the first ask records a
:class:`DataRead` (shown on the page under "Data read"). Results one section computes for
others (the induction verdict, the probes) are kept with :meth:`Context.shared`.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from lensworks.model import HookedTransformer, LensworksError, ModelFacts, text_windows

__all__ = ["Context", "DataRead", "FALLBACK_SOURCE", "FALLBACK_NOTE"]

#: The text read when a report is asked for without any: the part of the zoo corpus the demo
#: models never trained on.
FALLBACK_SOURCE = "held-out Python standard-library source (lensworks.zoo.corpus after its first 1,000,000 characters)"
FALLBACK_NOTE = (
    "No text was given, so this is a fallback: the bundled demo models' held-out corpus, not necessarily text "
    "like this model's training data. Pass text= (CLI: --text FILE) for numbers about your own text."
)

#: The record each group of windows leaves in "Data read" (the analyses that read them).
WINDOW_READERS = {
    "geometry": "geometry: block ablation, decomposition, logit lens, effective dimensionality",
    "probes": "probes: input-token probes",
}
#: Windows each group reads, as a multiple of ``n_prompts``.
WINDOW_FACTOR = {"geometry": 1, "probes": 2}


@dataclasses.dataclass(frozen=True)
class DataRead:
    """Which text (or tokens) one group of analyses read, and how much; shown on the page.

    Attributes:
        analyses: The analyses that read it.
        source: Where it came from (``"text"``, ``"corpus"``, the fallback, random tokens).
        n_windows, tokens_per_window: How much was read.
        note: What the reader should know.
        fallback: True when no text was given and lensworks chose this one.

    Example:
        >>> DataRead("probes: input-token probes", "the text given (120 characters)", 8, 16).n_windows
        8
    """

    analyses: str
    source: str
    n_windows: int
    tokens_per_window: int | None
    note: str = ""
    fallback: bool = False


def text_windows_of(model: HookedTransformer, text: str, n_windows: int, width: int | None = None,
                    skip_unknown: bool = False) -> torch.Tensor:
    """The first ``n_windows`` windows of ``width`` tokens (default ``n_ctx``) cut from ``text``."""
    width = width or model.cfg.n_ctx
    windows = text_windows(model, text, max_tokens=n_windows * width * 2, width=width, skip_unknown=skip_unknown)
    return windows[:n_windows]


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a section reads: one per run, shared by every section.

    Attributes:
        model: The model (never modified).
        facts: ``model_facts(model)``.
        seed: Seed for random sequences, shuffles and controls.
        text: Text the windows are cut from (None: ``corpus``, else the fallback).
        corpus: Fallback text when ``text`` is None.
        positive, negative: The two data sets of the residual statistics (None: built-in ones).
        prompts: The attention explorer's prompts, already checked (None: the first windows).
        n_prompts: Windows the geometry group reads (probes read twice as many).
        prompt_len: Tokens per window.
        skip_unknown: Drop characters the vocabulary lacks instead of raising.
        windows_given: Data given by the caller per group (``"geometry"``, ``"probes"``,
            ``"terms"``): a token tensor or a list of strings, used instead of cut windows.
        options: Section options by name (e.g. ``"n_seqs"``, ``"z_min"``, ``"trigram_head"``);
            a section reads its own with :meth:`option`.

    Example:
        >>> ctx = Context.of(zoo.load("char-mlp"), text="def f(x):\\n    return x\\n" * 40)
        >>> ctx.windows("geometry").shape  # as many 64-token windows as the 880 characters hold
        torch.Size([14, 64])
    """

    model: HookedTransformer
    facts: ModelFacts
    seed: int = 0
    text: str | None = None
    corpus: str | None = None
    positive: Any = None
    negative: Any = None
    prompts: tuple[str, ...] | None = None
    n_prompts: int = 32
    prompt_len: int = 64
    skip_unknown: bool = False
    windows_given: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    _memo: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _reads: list[DataRead] = dataclasses.field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of(cls, model: HookedTransformer, **fields: Any) -> "Context":
        """A context for ``model`` (its facts looked up once); ``fields`` as in the class.

        Example:
            >>> Context.of(model, seed=1).seed
            1
        """
        from lensworks.model import model_facts

        for name in ("options", "windows_given"):
            if name in fields:
                fields[name] = MappingProxyType(dict(fields[name]))
        return cls(model=model, facts=model_facts(model), **fields)

    # ----------------------------------------------------------------------- options and records

    def option(self, name: str, default: Any = None) -> Any:
        """A section option (``options[name]``), or ``default`` when not given or None."""
        value = self.options.get(name)
        return default if value is None else value

    @property
    def data_read(self) -> list[DataRead]:
        """The :class:`DataRead` records so far, in the order the data was first read."""
        return list(self._reads)

    def record(self, read: DataRead) -> None:
        """Add a "Data read" record (a section that reads data of its own calls this)."""
        self._reads.append(read)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context: a value several sections read (e.g. the induction verdict).

        Example:
            >>> ctx = Context.of(model)
            >>> ctx.shared("answer", lambda: 42)
            42
            >>> ctx.shared("answer", lambda: 0)  # computed once per context
            42
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # ----------------------------------------------------------------------- windows

    def windows(self, group: str) -> Any:
        """The data ``group`` reads: given by the caller, or ``WINDOW_FACTOR[group] * n_prompts``
        windows of ``prompt_len`` tokens from the text, the corpus, the fallback text or repeated
        random tokens (recorded in "Data read" the first time)."""
        if group in self.windows_given:
            return self.windows_given[group]
        if group not in WINDOW_FACTOR:
            raise LensworksError(f"unknown window group {group!r}; expected one of {sorted(WINDOW_FACTOR)}")
        return self.shared(f"windows:{group}", lambda: self._cut(group))

    def windows_source(self, group: str) -> str:
        """Where ``group``'s windows came from (the :class:`DataRead` source)."""
        self.windows(group)
        return self._memo.get(f"source:{group}", "the data given")

    def _cut(self, group: str) -> torch.Tensor:
        w, source, note = self._choose(WINDOW_FACTOR[group] * self.n_prompts)
        fallback = note == FALLBACK_NOTE
        note = "fallback text, chosen by lensworks (see the note above)" if fallback else note
        self.record(DataRead(WINDOW_READERS[group], source, int(w.shape[0]), int(w.shape[1]), note, fallback))
        self._memo[f"source:{group}"] = source
        return w

    def _choose(self, n: int) -> tuple[torch.Tensor, str, str]:
        model, prompt_len = self.model, self.prompt_len
        given = self.text if self.text is not None else self.corpus
        if given is not None:
            if model.tokenizer is None:
                raise LensworksError("the model has no tokenizer, so it cannot read text; leave text/corpus out")
            name = "text" if self.text is not None else "corpus"
            skipped = " (characters the vocabulary lacks were skipped, as asked)" if self.skip_unknown else ""
            return (text_windows_of(model, given, n, prompt_len, skip_unknown=self.skip_unknown),
                    f"the {name} given ({len(given):,} characters)", f"consecutive windows from its start{skipped}")
        if model.tokenizer is not None:
            from lensworks import zoo

            source = zoo.corpus(1_000_000 + 40 * n * prompt_len)[1_000_000:]
            what = FALLBACK_SOURCE
            if len(source) < 4 * n * prompt_len:  # short standard library: use all of it
                source, what = zoo.corpus(None), "Python standard-library source (lensworks.zoo.corpus)"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # lensworks' own fallback text: skipping is expected
                    windows = text_windows_of(model, source, n, prompt_len, skip_unknown=True)
                from lensworks._zoo_index import ZOO_TRAINED_ON_CORPUS

                if getattr(model.cfg, "model_name", None) in ZOO_TRAINED_ON_CORPUS:  # the demo model's own kind of text
                    return windows, what, (f"held-out text of the corpus {model.cfg.model_name} was trained on "
                                           "(never seen in training)")
                return windows, what, FALLBACK_NOTE
            except LensworksError:  # a vocabulary that cannot spell Python source: random tokens instead
                pass
        from lensworks.circuits.heads import repeated_tokens

        bos = self.facts.uses_bos()
        half = (prompt_len - int(bos)) // 2
        toks = repeated_tokens(model, seq_len=max(2, half), n_seqs=n, seed=self.seed, prepend_bos=bos)
        why = "the model has no tokenizer" if model.tokenizer is None else "its vocabulary cannot spell the fallback text"
        return toks, f"random token sequences, each repeated once (seed {self.seed})", f"No text could be read: {why}."


def read_prompts(value: Any, what: str) -> list[str]:
    """Prompts given as one string (one per line) or a sequence; at least 2 non-empty ones."""
    if isinstance(value, str):
        lines = [line for line in value.splitlines() if line.strip()]
    else:
        lines = [str(v) for v in value if str(v).strip()]
    if len(lines) < 2:
        raise LensworksError(f"{what} needs at least 2 non-empty prompts (one per line), got {len(lines)}")
    return lines

