"""One self-contained, offline HTML page from many lensworks results.

:func:`build` writes a single file: plotly.js inlined once, every figure as escaped JSON, a
table of contents, one section per area (circuits, geometry, probes), a caption and a data
table under each figure, and a head picker that outlines one head's row and column in the
composition heatmaps. :func:`analyse` runs the analyses that apply to a model and returns
results ready for :func:`build`.

Escaping: every string that reaches the page goes through :func:`html.escape`; strings inside
figures are made safe for plotly.js (a ``<`` that does not open one of plotly's few formatting
tags becomes ``&lt;``), and the figure JSON escapes ``<``, ``>`` and ``/`` so ``</script>`` in a
token cannot close the script element.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch

from lensworks.model import HookedTransformer, LensworksError, check_model, model_streams, text_windows, uses_bos
from lensworks.model._io import write_atomic

__all__ = ["build", "analyse", "Analyses", "DataRead", "SECTIONS", "safe_markup"]

#: Known sections, in page order (others follow in the order they first appear).
SECTIONS = ("circuits", "geometry", "probes")

_SECTION_INTRO = {
    "circuits": (
        "How attention heads compose and what they do. Composition heatmaps: rows are the earlier "
        "head that writes into the residual stream, columns the later head that reads it; use the head "
        "picker to outline one head. Copying and behavioural scores are one number per head."
    ),
    "geometry": (
        "How the residual stream moves from layer to layer: statistics of two data sets, the effect of "
        "dropping each block's attention or MLP, the block outputs drawn tip to tail, and the logit lens."
    ),
    "probes": (
        "What information each layer still carries: held-out accuracy of linear probes that recover the "
        "input tokens, beside chance and two controls, and how the probe's directions relate to the embedding."
    ),
}

Item = Any  # a result with .figure(), a plotly Figure, or (item, caption)
Results = Union[Sequence[Item], Mapping[str, Sequence[Item]]]


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

# Tags plotly.js itself interprets in text; any other "<" or ">" is escaped.
_ALLOWED_TAG = re.compile(r"(</?(?:b|i|em|sup|sub|s|u|extra)>|<br\s*/?>)", re.IGNORECASE)


def safe_markup(text: str) -> str:
    """Make a string safe for plotly.js text: escape every ``<`` and ``>`` that is not part of
    one of plotly's formatting tags (``<b>``, ``<i>``, ``<br>``, ``<sup>``, ``<sub>``, ``<extra>``, ...).

    Idempotent; already-escaped labels (``&lt;b&gt;``) pass through unchanged, except that
    ``&quot;`` and ``&#x27;`` become ``&#34;`` and ``&#39;``, which plotly.js shows as quotes.

    Example:
        >>> safe_markup('a<br>"><img src=x onerror=alert(1)>')
        'a<br>"&gt;&lt;img src=x onerror=alert(1)&gt;'
    """
    parts = _ALLOWED_TAG.split(str(text))
    out = "".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))
    # plotly.js decodes numeric entities but not &quot; (which html.escape writes): same text, numeric form
    return out.replace("&quot;", "&#34;").replace("&#x27;", "&#39;")


def _sanitize(value: Any) -> Any:
    """Apply :func:`safe_markup` to every string in a plotly figure dict."""
    if isinstance(value, str):
        return safe_markup(value)
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in ("U", "S", "O"):
        return [_sanitize(v) for v in value.tolist()]
    return value


def _plain(text: str) -> str:
    """Figure markup -> plain text (tags dropped, entities decoded), for the TOC and alt text."""
    return html.unescape(re.sub(r"<[^>]*>", " ", str(text))).strip()


def _wrap(title: str, width: int = 90) -> str:
    """Break a long figure title into lines of about ``width`` characters (plotly does not wrap)."""
    lines, line = [], ""
    for word in title.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "<br>".join(lines)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- what results say


def _ask(obj: Any, method: str) -> Any:
    """``obj.<method>()`` for a result that has it (plain figures have none); never fails the page."""
    fn = getattr(obj, method, None)
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception:  # a caption or headline is a bonus; never fail the report over it
        return None


def _section_of(obj: Any) -> str:
    module = type(obj).__module__
    for s in SECTIONS:
        if module.startswith(f"lensworks.{s}"):
            return s
    return "figures"


def _figure_of(obj: Any):
    import plotly.graph_objects as go

    if isinstance(obj, go.Figure):
        return obj
    if isinstance(obj, dict) and "data" in obj:
        return go.Figure(obj)
    fig = getattr(obj, "figure", None)
    if not callable(fig):
        raise LensworksError(
            f"report items must be lensworks results (with .figure()), plotly Figures or (item, caption) pairs; "
            f"got {type(obj).__name__}"
        )
    out = fig()
    if not isinstance(out, go.Figure):
        raise LensworksError(f"{type(obj).__name__}.figure() returned {type(out).__name__}, expected a plotly Figure")
    return out


def _normalise(results: Results) -> dict[str, list[tuple[Any, str | None]]]:
    if isinstance(results, Mapping):
        pairs = [(str(k), v) for k, v in results.items()]
    else:
        if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
            raise LensworksError(f"results must be a list or a dict of section -> list, got {type(results).__name__}")
        pairs = [(None, [item]) for item in results]
    sections: dict[str, list[tuple[Any, str | None]]] = {}
    for section, items in pairs:
        if not isinstance(items, (list, tuple)):
            items = [items]
        for item in items:
            caption = None
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str):
                item, caption = item
            sections.setdefault(section or _section_of(item), []).append((item, caption))
    if not any(sections.values()):
        raise LensworksError("results is empty; expected at least one result or figure to put in the report")
    order = [s for s in SECTIONS if s in sections] + [s for s in sections if s not in SECTIONS]
    return {s: sections[s] for s in order}


# --------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    if isinstance(v, torch.Tensor):
        return _fmt(v.item()) if v.numel() == 1 else str(v.tolist())
    try:
        import numpy as np

        if isinstance(v, np.floating):
            return _fmt(float(v))
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def _table_html(obj: Any, max_rows: int) -> str:
    to_frame = getattr(obj, "to_frame", None)
    if not callable(to_frame):
        return ""
    try:
        frame = to_frame()
    except Exception as exc:  # a table is a bonus; never fail the report over it
        return f'<p class="note">no data table: {_esc(exc)}</p>'
    n = len(frame)
    if n == 0:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for r in frame.head(max_rows).itertuples(index=False):
        rows.append("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in r) + "</tr>")
    more = f" (first {max_rows} of {n} rows)" if n > max_rows else f" ({n} rows)"
    return (f"<details><summary>data table{more}</summary><div class='tablewrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div></details>")


def _summary_html(obj: Any) -> str:
    summary = getattr(obj, "summary", None)
    if not callable(summary):
        return ""
    try:
        text = summary()
    except Exception:
        return ""
    return f"<pre class='summary'>{_esc(text)}</pre>" if isinstance(text, str) else ""


def _highlights_html(sections: Mapping[str, Sequence[tuple[Any, str | None]]]) -> str:
    lines = []
    for items in sections.values():
        for item, _ in items:
            line = _ask(item, "headline")
            if line:
                lines.append(f"<li>{_esc(line)}</li>")
    if not lines:
        return ""
    return f"<section id='highlights'><h2>At a glance</h2><ul class='highlights'>{''.join(lines)}</ul></section>"


def _data_html(data_read: Sequence[DataRead]) -> str:
    """The "Data read" table: which text each analysis read, how much, and caveats."""
    if not data_read:
        return ""
    head = "<tr><th>analyses</th><th>source</th><th>windows</th><th>tokens each</th><th>note</th></tr>"
    rows = "".join(
        f"<tr><td>{_esc(d.analyses)}</td><td>{_esc(d.source)}</td><td>{d.n_windows}</td>"
        f"<td>{'varies' if d.tokens_per_window is None else d.tokens_per_window}</td><td>{_esc(d.note)}</td></tr>"
        for d in data_read
    )
    fallback = any(d.fallback for d in data_read)
    warn = f"<p class='note'><strong>Fallback text.</strong> {_esc(FALLBACK_NOTE)}</p>" if fallback else ""
    return f"<section id='data-read'><h2>Data read</h2>{warn}<table class='model'>{head}{rows}</table></section>"


def _model_html(model: Any, name: str | None) -> str:
    if model is None:
        return ""
    from lensworks.model import model_vocab, processing_state

    cfg = model.cfg
    rows = [("model", name or getattr(cfg, "model_name", "")),
            ("layers", cfg.n_layers), ("heads per layer", cfg.n_heads), ("d_model", cfg.d_model),
            ("d_head", cfg.d_head), ("d_mlp", None if cfg.attn_only else cfg.d_mlp), ("n_ctx", cfg.n_ctx),
            ("d_vocab", cfg.d_vocab),
            ("parameters", sum(p.numel() for p in model.parameters()))]
    for k, v in processing_state(model).items():
        rows.append((k.replace("_", " "), v))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    vocab = model_vocab(model)
    vocab_html = ""
    if vocab:
        shown = vocab[:48]
        tokens = " ".join(f"<code class='tok'>{_esc(json.dumps(t, ensure_ascii=False)[1:-1])}</code>" for t in shown)
        vocab_html = (f"<p class='vocab'>vocabulary ({len(vocab)} tokens"
                      f"{', first ' + str(len(shown)) if len(vocab) > len(shown) else ''}): {tokens}</p>")
    return f"<section id='model'><h2>Model</h2><table class='model'>{body}</table>{vocab_html}</section>"


# --------------------------------------------------------------------------- page

def _asset(name: str) -> str:
    """A file shipped in ``lensworks/assets`` (the page's CSS and scripts), as text."""
    from importlib.resources import files

    return files("lensworks").joinpath("assets", name).read_text(encoding="utf-8")



def build(
    results: Results,
    path: str | Path,
    *,
    title: str = "lensworks report",
    model: HookedTransformer | None = None,
    model_name: str | None = None,
    max_table_rows: int = 40,
) -> Path:
    """Write one self-contained HTML report (plotly.js inlined, opens offline) from results.

    Args:
        results: A list of lensworks results (anything with ``.figure()``), plotly Figures or
            ``(item, caption)`` pairs, placed in the circuits / geometry / probes section by the
            module they come from (plain figures go to "figures"); or a dict ``section -> list``
            (an :class:`Analyses` from :func:`analyse` also brings its "Data read" table).
        path: The ``.html`` file to write (parent folders are created).
        title: Page title.
        model: When given, a table of its configuration, weight processing and vocabulary.
        model_name: Name shown for the model (e.g. the checkpoint).
        max_table_rows: Rows shown in each result's data table (``to_frame()``).

    Returns:
        The path written.

    Example:
        >>> from lensworks.circuits import copying_scores
        >>> build([copying_scores(model)], "out/report.html", model=model)  # doctest: +SKIP
        PosixPath('out/report.html')
    """
    import plotly.offline

    data_read: Sequence[DataRead] = list(getattr(results, "data", ()))
    sections = _normalise(results)
    specs: list[dict[str, Any]] = []
    body: list[str] = []
    toc: list[str] = []
    n = 0
    for section, items in sections.items():
        sid = "section-" + re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")
        entries: list[str] = []
        toc_items: list[str] = []
        attrs = [(_ask(item, "html_attrs") or {}) for item, _ in items]
        compositions = [item for (item, _), a in zip(items, attrs) if a.get("kind") == "composition"]
        for i, (item, caption) in enumerate(items):
            fig = _figure_of(item)
            fig_dict = _sanitize(fig.to_plotly_json())
            fig_dict.setdefault("layout", {})
            title_obj = fig_dict["layout"].get("title")
            fig_title = title_obj.get("text", "") if isinstance(title_obj, dict) else (title_obj or "")
            if fig_title and len(fig_title) > 95 and "<br" not in fig_title:
                fig_dict["layout"]["title"] = dict(title_obj if isinstance(title_obj, dict) else {}, text=_wrap(fig_title))
            fid = f"fig-{n}"
            n += 1
            caption = caption if caption is not None else (_ask(item, "caption") or "")
            label = _plain(fig_title) or type(item).__name__
            short = label if len(label) <= 60 else label[:57].rstrip() + "…"
            extra = "".join(f' data-{_esc(k)}="{_esc(v)}"' for k, v in attrs[i].items())
            entries.append(
                f"<figure id='{fid}'><div class='plot' id='{fid}-plot' role='img' aria-label='{_esc(label)}'{extra}></div>"
                f"<figcaption>{_esc(caption)}</figcaption>{_summary_html(item)}{_table_html(item, max_table_rows)}</figure>"
            )
            toc_items.append(f"<li><a href='#{fid}' title='{_esc(label)}'>{_esc(short)}</a></li>")
            specs.append({"id": f"{fid}-plot", "figure": fig_dict})
        picker = ""
        if compositions:
            labels = compositions[0].labels
            options = "".join(f"<option value='{_esc(h)}'>{_esc(h)}</option>" for h in labels)
            picker = (
                "<div class='picker'><label>Head picker: <select id='lw-head-picker'>"
                f"<option value=''>(none)</option>{options}</select></label> outlines the head's row (red: what it "
                "writes into) and column (orange: what it reads from) in every composition heatmap."
                "<ul id='lw-head-summary'></ul></div>"
            )
            first_comp = next(i for i, a in enumerate(attrs) if a.get("kind") == "composition")
            entries.insert(first_comp, picker)
        intro = _SECTION_INTRO.get(section, "")
        body.append(f"<section id='{sid}'><h2>{_esc(section.capitalize())}</h2>"
                    f"{'<p>' + _esc(intro) + '</p>' if intro else ''}{''.join(entries)}</section>")
        toc.append(f"<li><a href='#{sid}'>{_esc(section.capitalize())}</a><ul>{''.join(toc_items)}</ul></li>")

    from lensworks import __version__

    model_section = _model_html(model, model_name) + _data_html(data_read)
    highlights = _highlights_html(sections)
    if model_section:
        toc.insert(0, "<li><a href='#model'>Model</a></li>")
    if highlights:
        toc.insert(0, "<li><a href='#highlights'>At a glance</a></li>")
    # Plotly's JSON writer escapes <, > and / (so "</script>" cannot end the block); check it anyway.
    payload = _figures_json(specs)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{_asset('report.css')}</style>"
        f"<script>{_asset('report_errors.js')}</script>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head>\n"
        f"<body><header><h1>{_esc(title)}</h1><p>lensworks {_esc(__version__)} · {n} figures · written {_esc(stamp)} · "
        "works offline; hover a figure for labels and values, drag to zoom, double-click to reset.</p></header>\n"
        "<div id='lw-errors' role='alert'></div>\n"
        f"<div class='layout'><nav aria-label='contents'><strong>Contents</strong><ul>{''.join(toc)}</ul>"
        f"<p class='note' id='lw-status'>rendering…</p></nav>\n"
        f"<main>{highlights}{model_section}{''.join(body)}</main></div>\n"
        f"<script type='application/json' id='lw-figures'>{payload}</script>\n"
        f"<script>{_asset('report_render.js')}</script>\n</body></html>\n"
    )
    return write_atomic(path, page)


def _figures_json(specs: list[dict[str, Any]]) -> str:
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(specs, cls=PlotlyJSONEncoder, separators=(",", ":"), allow_nan=True)
    # Belt and braces: plotly escapes these already; never let a figure end the <script> block.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("/", "\\u002f")
    if "</" in text:  # pragma: no cover - impossible after the replacement
        raise LensworksError("figure JSON still contains '</'")
    return text


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


def analyse(
    model: HookedTransformer,
    *,
    text: str | None = None,
    positive: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
    corpus: str | None = None,
    n_prompts: int = 32,
    prompt_len: int = 64,
    seed: int = 0,
    progress: bool = True,
    skip_unknown: bool = False,
) -> dict[str, list[Any]]:
    """Run the analyses that apply to a model; the result goes straight into :func:`build`.

    Circuits always run (composition Q/K/V when there are at least two layers, copying scores,
    previous-token / duplicate-token / induction scores, the induction verdict). Geometry
    (residual statistics, block ablation, decomposition, logit lens) and probes (input-token
    probes with controls, their comparison with the embedding, the embedding's PCA basis) run
    on ``n_prompts`` windows of ``prompt_len`` tokens: from ``text``, else ``corpus``, else the
    held-out part of :func:`lensworks.zoo.corpus` for a model with a tokenizer, else repeated
    random token sequences.

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
        prompt_len: Tokens per window (at most ``n_ctx``).
        seed: Seed for random sequences, shuffles and controls.
        progress: Show a progress bar over the analyses.
        skip_unknown: Drop characters of ``text`` / ``corpus`` the vocabulary lacks (with a
            warning counting them) instead of raising.

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
    if n_prompts < 2:
        raise LensworksError(f"n_prompts must be >= 2, got {n_prompts}")
    cfg = model.cfg
    prompt_len = max(4, min(int(prompt_len), cfg.n_ctx))
    # Named places on the page, in page order; each analysis fills its own.
    slots: dict[str, dict[str, Any]] = {
        "circuits": dict.fromkeys(["verdict", "induction", "previous_token", "duplicate_token", "Q composition",
                                   "K composition", "V composition", "copying"]),
        "geometry": dict.fromkeys(["residual statistics", "block ablation", "decomposition", "logit lens"]),
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
        rep = circuits.find_induction_heads(model, seed=seed)
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

    def run_data():
        state["windows"] = windows(n_prompts, "geometry: block ablation, decomposition, logit lens")

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
    steps += [
        ("geometry: data", run_data),
        ("geometry: residual statistics", run_stats),
        ("geometry: block ablation", run_ablation),
        ("geometry: decomposition", run_decomposition),
        ("geometry: logit lens", run_lens),
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
