"""Running every analysis that applies to a model, and recording which text each one read."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from lensworks.model import (
    HookedTransformer, LensworksError, check_int, check_model, encode_text, model_streams, text_windows, uses_bos,
)

__all__ = ["analyse", "Analyses", "DataRead", "FALLBACK_SOURCE", "FALLBACK_NOTE"]


@dataclasses.dataclass(frozen=True)
class DataRead:
    """Which text (or tokens) one group of analyses read, and how much; shown on the page.

    Attributes:
        analyses: The analyses that read it.
        source: Where it came from (``"text"``, ``"corpus"``, the fallback, random tokens).
        n_windows, tokens_per_window: How much was read.
        note: What the reader should know.
        fallback: True when no text was given and lensworks chose this one.
    """

    analyses: str
    source: str
    n_windows: int
    tokens_per_window: int | None
    note: str = ""
    fallback: bool = False


class Analyses(dict):
    """What :func:`analyse` returns: a dict ``section -> results`` that also carries ``data``,
    the :class:`DataRead` records saying which text each group of analyses read.

    Example:
        >>> results = analyse(model)  # doctest: +SKIP
        >>> list(results), results.data[0].source  # doctest: +SKIP
        (['circuits', 'geometry', 'probes'], 'random token sequences, each repeated once (seed 0)')
    """

    def __init__(self, sections: Mapping[str, list[Any]], *, data: Sequence[DataRead] = ()):
        super().__init__(sections)
        self.data: list[DataRead] = list(data)


#: The text read when a report is asked for without any: the part of the zoo corpus the demo
#: models never trained on.
FALLBACK_SOURCE = "held-out Python standard-library source (lensworks.zoo.corpus after its first 1,000,000 characters)"
FALLBACK_NOTE = (
    "No text was given, so this is a fallback: the bundled demo models' held-out corpus, not necessarily text "
    "like this model's training data. Pass text= (CLI: --text FILE) for numbers about your own text."
)


# --------------------------------------------------------------------------- analyse


def _text_windows(model: HookedTransformer, text: str, n_windows: int, width: int | None = None,
                  skip_unknown: bool = False) -> torch.Tensor:
    width = width or model.cfg.n_ctx
    windows = text_windows(model, text, max_tokens=n_windows * width * 2, width=width, skip_unknown=skip_unknown)
    return windows[:n_windows]


def _read_prompts(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        lines = [line for line in value.splitlines() if line.strip()]
    else:
        lines = [str(v) for v in value if str(v).strip()]
    if len(lines) < 2:
        raise LensworksError(f"{what} needs at least 2 non-empty prompts (one per line), got {len(lines)}")
    return lines


#: The attention explorer on prompts given by the user: at most this many prompts, this many
#: tokens of each, and (prompt, head) views, so the page stays a few MB on models with many heads.
EXPLORER_MAX_PROMPTS = 8
EXPLORER_MAX_TOKENS = 48
EXPLORER_MAX_VIEWS = 256
#: Term importance reads this many windows (one copy of them per term in every pass) and lists
#: virtual heads one by one only while the table stays under TERMS_MAX terms; above that it lists
#: single heads (or, above TERMS_MAX_HEADS heads, the direct path only) on fewer, shorter windows:
#: on a GPT-2-small shape (144 heads) single heads would cost about a minute on a 2-core CPU.
TERMS_WINDOWS = 4
TERMS_MAX = 300
TERMS_MAX_HEADS = 64
TERMS_WINDOWS_LARGE = 2
TERMS_TOKENS_LARGE = 32


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
) -> dict[str, list[Any]]:
    """Run the analyses that apply to a model; the result goes straight into :func:`build`.

    Circuits always run (composition Q/K/V when there are at least two layers, copying scores,
    previous-token / duplicate-token / induction scores, the induction verdict, the circuit graph,
    the attention explorer). Geometry (residual statistics, block ablation, decomposition, logit
    lens, effective dimensionality) and probes (input-token probes with controls, their
    comparison with the embedding, the embedding's PCA basis) run on ``n_prompts`` windows of
    ``prompt_len`` tokens: from ``text``, else ``corpus``, else the held-out part of
    :func:`lensworks.zoo.corpus` for a model with a tokenizer, else repeated random token
    sequences. The attention explorer shows ``prompts`` when given, else the first two windows.

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
        An :class:`Analyses` dict ``{"circuits": [...], "geometry": [...], "probes": [...]}``
        whose ``.data`` lists which text each group of analyses read (:class:`DataRead`;
        :func:`build` shows it under "Data read", with a plain warning for fallback text).

    Example:
        >>> from lensworks import zoo
        >>> results = analyse(zoo.load("char-mlp"))  # doctest: +SKIP
        >>> build(results, "report.html")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from lensworks import circuits, geometry, probes
    from lensworks.circuits.heads import repeated_tokens

    check_model(model)
    if (positive is None) != (negative is None):
        raise LensworksError("give both positive and negative prompts, or neither")
    n_prompts = check_int(n_prompts, "n_prompts", low=2)
    cfg = model.cfg
    prompt_len = min(64, cfg.n_ctx) if prompt_len is None else check_int(prompt_len, "prompt_len", low=4)
    if prompt_len > cfg.n_ctx:
        raise LensworksError(f"prompt_len={prompt_len} is longer than the model's n_ctx={cfg.n_ctx}; pass at most "
                             f"{cfg.n_ctx} (--prompt-len)")
    explorer_prompts = None if prompts is None else _explorer_prompts(model, prompts)
    # Named places on the page, in page order; each analysis fills its own.
    slots: dict[str, dict[str, Any]] = {
        "circuits": dict.fromkeys(["verdict", "induction", "previous_token", "duplicate_token", "Q composition",
                                   "K composition", "V composition", "circuit graph", "term importance",
                                   "skip-trigrams", "copying", "attention explorer"]),
        "geometry": dict.fromkeys(["residual statistics", "block ablation", "decomposition", "logit lens",
                                   "effective dimensionality"]),
        "probes": dict.fromkeys(["input-token probes", "comparison with W_E", "embedding basis"]),
    }
    circuits_out, geometry_out, probes_out = slots["circuits"], slots["geometry"], slots["probes"]
    state: dict[str, Any] = {}
    data: list[DataRead] = []

    def windows(n: int, analyses: str) -> torch.Tensor:
        w, source, note = _windows(n)
        fallback = note == FALLBACK_NOTE
        note = "fallback text, chosen by lensworks (see the note above)" if fallback else note
        data.append(DataRead(analyses, source, int(w.shape[0]), int(w.shape[1]), note, fallback))
        return w

    def _windows(n: int) -> tuple[torch.Tensor, str, str]:
        given = text if text is not None else corpus
        if given is not None:
            if model.tokenizer is None:
                raise LensworksError("the model has no tokenizer, so it cannot read text; leave text/corpus out")
            name = "text" if text is not None else "corpus"
            skipped = " (characters the vocabulary lacks were skipped, as asked)" if skip_unknown else ""
            return (_text_windows(model, given, n, prompt_len, skip_unknown=skip_unknown),
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
                    return _text_windows(model, source, n, prompt_len, skip_unknown=True), what, FALLBACK_NOTE
            except LensworksError:  # a vocabulary that cannot spell Python source: random tokens instead
                pass
        bos = uses_bos(model)
        half = (prompt_len - int(bos)) // 2
        toks = repeated_tokens(model, seq_len=max(2, half), n_seqs=n, seed=seed, prepend_bos=bos)
        why = "the model has no tokenizer" if model.tokenizer is None else "its vocabulary cannot spell the fallback text"
        return toks, f"random token sequences, each repeated once (seed {seed})", f"No text could be read: {why}."

    def run_induction():
        rep = circuits.find_induction_heads(model, seed=seed, progress=False)
        state["induction"] = rep
        circuits_out.update({"verdict": rep, "induction": rep.induction, "previous_token": rep.previous,
                             "copying": rep.copying})
        if cfg.n_layers > 1:
            circuits_out["K composition"] = rep.k_composition

    def run_duplicate():
        rep = state["induction"]
        circuits_out["duplicate_token"] = (circuits.head_scores(
            model, "duplicate_token", seq_len=rep.thresholds["seq_len"], seed=seed,
            prepend_bos=rep.thresholds["prepend_bos"]))

    def run_composition():
        comps = [circuits.composition_scores(model, m, progress=False) for m in ("Q", "V")]
        circuits_out["Q composition"], circuits_out["V composition"] = comps

    def run_graph():
        c = circuits_out
        given = {"previous_token": c["previous_token"], "induction": c["induction"],
                 "duplicate_token": c["duplicate_token"], "copying": c["copying"]}
        given.update({m: c[f"{m} composition"] for m in "QKV" if c.get(f"{m} composition") is not None})
        circuits_out["circuit graph"] = circuits.circuit_graph(model, seed=seed, precomputed=given)

    def run_explorer():
        from lensworks.plotting import attention_explorer

        how = "pick a (prompt, head) in the menu at the top right. Rows are destination tokens, columns source tokens."
        if explorer_prompts is None:
            w = state["windows"][:2, :24]
            fig = attention_explorer(model, w, max_tokens=24, max_prompts=2)
            data.append(DataRead("circuits: attention explorer", state["windows_source"], int(w.shape[0]), int(w.shape[1]),
                                 "the first geometry windows, first 24 tokens; pass prompts= (CLI: --prompts FILE) "
                                 "to explore your own prompts"))
            circuits_out["attention explorer"] = (fig, (
                "Attention explorer: the attention pattern of any head on the first two text windows (first 24 "
                f"tokens); {how}"))
            return
        n_heads = cfg.n_layers * cfg.n_heads
        shown = explorer_prompts[: max(1, min(EXPLORER_MAX_PROMPTS, EXPLORER_MAX_VIEWS // n_heads))]
        fig = attention_explorer(model, shown, max_tokens=EXPLORER_MAX_TOKENS, max_prompts=len(shown))
        left = len(explorer_prompts) - len(shown)
        more = f"; the other {left} are not shown (at most {len(shown)} on a model with {n_heads} heads)" if left else ""
        data.append(DataRead("circuits: attention explorer", f"the prompts given ({len(explorer_prompts)})", len(shown),
                             None, f"first {EXPLORER_MAX_TOKENS} tokens of each{more}"))
        circuits_out["attention explorer"] = (fig, (
            f"Attention explorer: the attention pattern of any head on the prompts given ({len(shown)} of "
            f"{len(explorer_prompts)} shown, first {EXPLORER_MAX_TOKENS} tokens of each); {how}"))

    def run_trigrams():
        rep = state["induction"]
        if rep.heads:
            (layer, head), why = rep.heads[0], "the first induction head of the verdict"
        else:
            label, _ = rep.copying.top(1)[0]
            layer, head = (int(x) for x in label[1:].split("H"))
            why = "the head with the highest copying score"
        res = circuits.skip_trigrams(model, layer, head, k=15)
        circuits_out["skip-trigrams"] = (res, f"{res.caption()} Head chosen: {why}.")

    def run_terms():
        from lensworks.circuits.terms import count_terms

        n_heads, n_layers = cfg.n_heads, cfg.n_layers
        if n_layers >= 2 and count_terms(n_layers, n_heads, 2) <= TERMS_MAX:
            order, w = 2, state["windows"][:TERMS_WINDOWS]
            more = ""
        else:  # many heads: every term is a copy of the batch, so read less and list less
            order = 1 if n_layers * n_heads <= TERMS_MAX_HEADS else 0
            w = state["windows"][:TERMS_WINDOWS_LARGE, :TERMS_TOKENS_LARGE]
            more = (f" With {n_layers * n_heads} heads the report lists "
                    + ("single heads only (virtual heads would be too many terms)" if order == 1 else
                       f"only the direct path (single heads are listed up to {TERMS_MAX_HEADS} heads)")
                    + f" and reads {w.shape[0]} windows of {w.shape[1]} tokens; call "
                      "lensworks.circuits.term_importance for more.")
        res = circuits.term_importance(model, w, max_order=min(order, n_layers), progress=False)
        data.append(DataRead("circuits: term importance", state["windows_source"], int(w.shape[0]), int(w.shape[1]),
                             "the first geometry windows" + ("" if not more else ", cut short (many heads)")))
        circuits_out["term importance"] = (res, res.caption() + more)

    def run_data():
        state["windows"] = windows(n_prompts, "geometry: block ablation, decomposition, logit lens, "
                                              "effective dimensionality")
        state["windows_source"] = data[-1].source

    def run_stats():
        if positive is not None:
            data_sets = {"positive": _read_prompts(positive, "positive"), "negative": _read_prompts(negative, "negative")}
            data.append(DataRead("geometry: residual statistics", "the positive and negative prompts given",
                                 sum(len(v) for v in data_sets.values()), None, "one window per prompt"))
            data_sets_ = data_sets
            geometry_out["residual statistics"] = geometry.residual_stats(model, data_sets_, streams=_streams(model),
                                                                          progress=False)
            return
        if model.tokenizer is not None:
            from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

            builtin = {"Python code": list(BUILTIN_POSITIVE), "English prose": list(BUILTIN_NEGATIVE)}
            try:
                geometry_out["residual statistics"] = geometry.residual_stats(model, builtin, streams=_streams(model),
                                                                              progress=False)
                data.append(DataRead("geometry: residual statistics", "lensworks' built-in prompts: Python code against "
                                     "English prose", len(BUILTIN_POSITIVE) + len(BUILTIN_NEGATIVE), None,
                                     "one window per prompt; pass positive=/negative= (CLI: --positive/--negative) "
                                     "to compare your own data sets"))
                return
            except LensworksError:  # the vocabulary cannot spell them: compare text with shuffled text
                pass
        w = state["windows"]
        gen = torch.Generator().manual_seed(seed)
        shuffled = w.clone()
        start = int(uses_bos(model))
        for i in range(shuffled.shape[0]):
            perm = torch.randperm(shuffled.shape[1] - start, generator=gen) + start
            shuffled[i, start:] = w[i, perm]
        geometry_out["residual statistics"] = geometry.residual_stats(model, {"text": w, "shuffled text": shuffled},
                                                                      streams=_streams(model), progress=False)

    def run_ablation():
        geometry_out["block ablation"] = geometry.block_ablation(model, state["windows"], progress=False)

    def run_decomposition():
        geometry_out["decomposition"] = geometry.block_decomposition(model, state["windows"], progress=False)

    def run_lens():
        geometry_out["logit lens"] = geometry.logit_lens(model, state["windows"][: min(12, n_prompts)], progress=False)

    def run_dimensionality():
        w = state["windows"]
        res = geometry.effective_dimensionality(model, w, progress=False)
        caption = res.caption()
        if res.n_samples <= cfg.d_model:
            caption += (f" Read from {res.n_samples} windows (one sample each, at the last token): the covariance has "
                        f"rank at most {res.n_samples - 1}, below d_model={cfg.d_model}, so both numbers are bounded "
                        "by the sample count; raise n_prompts (CLI: --n-prompts) for larger samples.")
        geometry_out["effective dimensionality"] = (res, caption)

    def run_probes():
        w = windows(2 * n_prompts, "probes: input-token probes")
        res = probes.probe_inputs(model, w, seed=seed, progress=False)
        state["probe"] = res
        probes_out["input-token probes"] = res

    def run_compare():
        res = state["probe"]
        last = (res.layers[-1], res.streams[-1], res.offsets[0])
        cmp = probes.compare_to_embedding(model, res.weights(*last), tokens=res.classes, n_random=50, seed=seed)
        caption = (f"The probe for the input token at offset {last[2]}, read from layer {last[0]} {last[1]}, "
                   "compared with the embedding: principal-angle overlap with W_E and W_U and where its weight sits "
                   "along the embedding's PCA basis, each against random matrices with the same singular values.")
        probes_out["comparison with W_E"] = (cmp, caption)

    def run_basis():
        probes_out["embedding basis"] = probes.embedding_basis(model, "pca", k=min(cfg.d_model, cfg.d_vocab, 32))

    steps: list[tuple[str, Callable[[], None]]] = [
        ("circuits: induction verdict", run_induction),
        ("circuits: duplicate-token scores", run_duplicate),
    ]
    if cfg.n_layers > 1:
        steps.append(("circuits: Q/V composition", run_composition))
        steps.append(("circuits: circuit graph", run_graph))
    steps += [
        ("geometry: data", run_data),
        ("circuits: attention explorer", run_explorer),
        ("circuits: skip-trigrams", run_trigrams),
        ("circuits: term importance", run_terms),
        ("geometry: residual statistics", run_stats),
        ("geometry: block ablation", run_ablation),
        ("geometry: decomposition", run_decomposition),
        ("geometry: logit lens", run_lens),
        ("geometry: effective dimensionality", run_dimensionality),
        ("probes: input-token probes", run_probes),
        ("probes: comparison with W_E", run_compare),
        ("probes: embedding basis", run_basis),
    ]
    bar = tqdm(steps, desc="lensworks report", unit="analysis", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        fn()
    bar.close()
    rep = state.get("induction")
    if rep is not None:
        n_seq = rep.thresholds["seq_len"]
        data.insert(0, DataRead("circuits: head scores, induction verdict", f"random token sequences, each repeated once "
                                f"(seed {seed})", int(rep.thresholds["n_seqs"]),
                                int(rep.thresholds["prepend_bos"]) + 2 * n_seq, "No text: weights and synthetic tokens only."))
    sections = {name: [r for r in slot.values() if r is not None] for name, slot in slots.items()}
    return Analyses({k: v for k, v in sections.items() if v}, data=data)


def _streams(model: HookedTransformer) -> tuple[str, ...]:
    return model_streams(model)
