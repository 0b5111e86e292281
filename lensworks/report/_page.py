"""Building the page: sections, figures as escaped JSON, tables, the model and data tables."""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import torch

from lensworks.model import HookedTransformer, LensworksError
from lensworks.model._io import write_atomic
from lensworks.report._context import DataRead, FALLBACK_NOTE
from lensworks.report._markup import esc as _esc, plain as _plain, sanitize as _sanitize, wrap as _wrap

__all__ = ["build", "SECTIONS"]

#: Known sections, in page order (others follow in the order they first appear).
SECTIONS = ("circuits", "geometry", "probes", "causal")

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
    "causal": (
        "What the output depends on, found by changing activations: a clean and a corrupted prompt that differ in "
        "one token, the clean run with one activation at a time taken from the corrupted run (activation patching: "
        "1 = no effect, 0 = as corrupted), its gradient estimate (attribution patching), and what each head and MLP "
        "writes directly to the logit difference (direct logit attribution)."
    ),
}

Item = Any  # a result with .figure(), a plotly Figure, or (item, caption)
Results = Union[Sequence[Item], Mapping[str, Sequence[Item]]]


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


def _check_same_model(sections: Mapping[str, list[tuple[Any, str | None]]], model: Any) -> None:
    """Refuse results computed on different models, or on another model than ``model``: the
    page's model card would describe weights the numbers never came from."""
    from lensworks.model import model_facts

    seen: dict[str, str] = {}
    for items in sections.values():
        for item, _ in items:
            processing = getattr(item, "processing", None)
            ident = processing.get("model") if isinstance(processing, dict) else None
            if ident:
                seen.setdefault(ident, type(item).__name__)
    if len(seen) > 1:
        names = "; ".join(f"{who} on {ident}" for ident, who in seen.items())
        raise LensworksError(f"these results come from {len(seen)} different models ({names}); "
                             "build one page per model")
    if model is not None and seen:
        ident, who = next(iter(seen.items()))
        mine = model_facts(model).identity
        if ident != mine:
            raise LensworksError(f"model= is not the model these results were computed on ({who} on {ident}, "
                                 f"model= is {mine}); pass the model the results came from")


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


def _note_of(obj: Any) -> str:
    """A result's ``note`` (how it was made: why this head, how few samples), as page markup."""
    note = getattr(obj, "note", None)
    return f" <span class='note'>{_esc(note)}</span>" if isinstance(note, str) and note else ""


def _skipped_html(skipped: Sequence[Any]) -> str:
    """The sections that did not apply to the model, and why (from ``Section.applies``)."""
    if not skipped:
        return ""
    items = "".join(f"<li>{_esc(s.group)}: {_esc(s.section)}: {_esc(s.reason)}</li>" for s in skipped)
    return f"<section id='not-shown'><h2>Not shown</h2><p>Sections that do not apply to this model:</p><ul>{items}</ul></section>"


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
            ("d_head", cfg.d_head), ("d_mlp", "none (attention only)" if cfg.attn_only else cfg.d_mlp), ("n_ctx", cfg.n_ctx),
            ("d_vocab", cfg.d_vocab),
            ("parameters", sum(p.numel() for p in model.parameters()))]
    for k, v in processing_state(model).items():
        if k == "architecture" and v is None:  # a TransformerLens-format or nanoGPT checkpoint: no HF class name
            v = "TransformerLens layout (no Hugging Face architecture recorded)"
        elif k == "model":
            k = "weights identity"
        elif k == "normalization_type" and v is None:
            v = "none"
        elif k == "n_key_value_heads" and v is None:
            v = f"{cfg.n_heads} (no grouped-query attention)"
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
            ``(item, caption)`` pairs, placed in the circuits / geometry / probes / causal section by the
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
        >>> build([copying_scores(model)], "out/report.html", model=model)
        PosixPath('out/report.html')
    """
    import plotly.offline

    data_read: Sequence[DataRead] = list(getattr(results, "data", ()))
    sections = _normalise(results)
    _check_same_model(sections, model)
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
            # a (result, caption) pair brings its caption (with any note); a result brings its own and its note
            note = "" if caption is not None else _note_of(item)
            caption = caption if caption is not None else (_ask(item, "caption") or "")
            label = _plain(fig_title) or type(item).__name__
            short = label if len(label) <= 60 else label[:57].rstrip() + "…"
            extra = "".join(f' data-{_esc(k)}="{_esc(v)}"' for k, v in attrs[i].items())
            entries.append(
                f"<figure id='{fid}'><div class='plot' id='{fid}-plot' role='img' aria-label='{_esc(label)}'{extra}></div>"
                f"<figcaption>{_esc(caption)}{note}</figcaption>{_summary_html(item)}{_table_html(item, max_table_rows)}"
                "</figure>"
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

    model_section = _model_html(model, model_name) + _data_html(data_read) + _skipped_html(getattr(results, "skipped", ()))
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
