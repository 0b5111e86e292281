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


# --------------------------------------------------------------------------- captions

_BEHAVIOUR = {
    "previous_token": "attention from each position to the one before it",
    "duplicate_token": "attention from the second copy of a token to its first copy",
    "induction": "attention to the token just after the previous copy of the current token",
}


def _default_caption(obj: Any) -> str:
    name = type(obj).__name__
    if name == "CompositionScores":
        target = {"Q": "queries", "K": "keys", "V": "values"}.get(obj.mode, obj.mode)
        text = (
            f"{obj.mode}-composition: how much an earlier head's output (row) is read by a later head's "
            f"{target} (column): ‖W_OV^A M^B‖_F / (‖W_OV^A‖_F ‖M^B‖_F), between 0 and 1. "
            "Blank cells are pairs that cannot compose (the reader is not in a later layer)."
        )
        if obj.baseline is not None:
            text += (f" Random factors of the same shapes score {obj.baseline.mean:.3f} ± {obj.baseline.std:.3f} "
                     f"({obj.baseline.n_samples} samples): read a cell relative to that.")
        return text
    if name == "CopyingScores":
        text = ("Copying score per head: sum of the real parts of the eigenvalues of the full OV circuit "
                "W_E W_V W_O W_U over the sum of their absolute values, from -1 (the head suppresses the token "
                "it attends to) to +1 (it copies it).")
        if obj.baseline_mean is not None:
            text += f" Random W_V, W_O with this model's embeddings score {obj.baseline_mean:+.3f} ± {obj.baseline_std:.3f}."
        return text
    if name == "BehaviourScores":
        what = _BEHAVIOUR.get(obj.kind, obj.kind)
        text = f"{obj.kind.replace('_', '-')} score per head: mean {what}, on repeated random token sequences."
        chance = getattr(obj, "chance", None)
        if chance is not None:
            try:
                text += f" Uniform attention would score about {float(chance):.3f}."
            except (TypeError, ValueError):
                pass
        return text
    if name == "InductionReport":
        return ("Induction verdict: a head is an induction head when its induction score passes the threshold, "
                "its OV circuit copies (positive copying score), and it K-composes with an earlier previous-token "
                "head well above random factors. Hover a point for the evidence.")
    if name == "ResidualStats":
        return ("Residual-stream statistics at one token position, per layer and stream (resid_pre, resid_mid, "
                "resid_post): cosine between the two data sets' mean vectors, and the mean and max over features "
                "of the per-feature variance. Growing variance with depth is the effect of summing block outputs.")
    if name == "AblationTable":
        return ("Block ablation: for each block, pass on x + mlp_out (attention dropped) or x + attn_out (MLP "
                "dropped) and measure the Hellinger distance between the final next-token distribution and the "
                "normal one; bars are the mean over prompts, whiskers one standard deviation.")
    if name == "BlockDecomposition":
        return ("The embedding and every block's attention and MLP outputs drawn tip to tail for one prompt: "
                "arrow lengths are the real norms and each arrow's angle to the running sum is the real one. "
                "The title gives the cosine between the final residual and the sum of the embedding and MLP outputs only.")
    if name == "LogitLens":
        return ("Logit lens: the residual stream after each block read through the final LayerNorm (with its own "
                "statistics) and the unembedding; colour is KL(final ‖ layer) in nats, hover shows that layer's top token.")
    if name == "ProbeResults":
        return ("Linear probes that recover the input token at each offset from the residual stream, per layer and "
                "stream: held-out top-1 accuracy beside chance (most frequent token), a randomly initialised copy of "
                "the model, and labels shuffled during training.")
    if name == "Comparison":
        return ("How the probe's read directions relate to the embedding: principal-angle overlap with W_E and W_U "
                "and where the probe's weight sits along the embedding's PCA basis, each against random matrices "
                "with the same singular values.")
    if name == "Basis":
        return "Share of the embedding matrix's variance captured by each basis direction, in order of importance."
    if name == "NeighbourEvaluation":
        return ("FFN-neighbour approximation: next-token distributions predicted from the corpus windows whose "
                "FFN outputs are most similar, compared with the model's own by Hellinger distance.")
    if name == "UnlikelyTokenUsage":
        return "How much of the activations lies along the directions of tokens the model rarely predicts."
    if name == "UpdateAlignment":
        return "Cosine between each vector and its projection onto each token's subspace."
    return ""


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


def _highlight(obj: Any) -> str | None:
    """One plain-text line with the headline of a known result, or None."""
    name = type(obj).__name__
    if name == "InductionReport":
        heads = ", ".join(f"L{l}H{h}" for l, h in obj.heads)
        return f"Induction heads: {heads}." if heads else "No induction heads (behaviour and mechanism do not agree on any head)."
    if name == "CompositionScores" and obj.n_layers > 1:
        p = obj.top(1)[0]
        base = f" (random factors: {obj.baseline.mean:.3f} ± {obj.baseline.std:.3f})" if obj.baseline is not None else ""
        return f"Strongest {obj.mode}-composition: {p.label}, {p.score:.3f}{base}."
    if name == "CopyingScores":
        label, score = obj.top(1)[0]
        n_pos = int((obj.scores > 0.5).sum())
        return f"Most copying head: {label} ({score:+.3f}); {n_pos} of {obj.scores.numel()} heads score above 0.5."
    if name == "AblationTable":
        attn, mlp = obj.drop_attn_hellinger.mean(1), obj.drop_mlp_hellinger.mean(1)
        which, values = ("attention", attn) if float(attn.max()) >= float(mlp.max()) else ("MLP", mlp)
        b = int(values.argmax())
        line = (f"Largest single ablation: dropping block {b}'s {which} moves the next-token distribution by "
                f"Hellinger {float(values[b]):.3f} on average")
        if float(mlp.abs().sum()) == 0.0:  # attention-only model
            return line + "."
        return line + f" (summed over blocks: attention {float(attn.sum()):.3f}, MLP {float(mlp.sum()):.3f})."
    if name == "ProbeResults" and 0 in obj.offsets:
        k = obj.offsets.index(0)
        first, last = obj.accuracy[0, 0, k], obj.accuracy[-1, -1, k]
        return (f"Current input token read back linearly: {float(first):.0%} at layer {obj.layers[0]} {obj.streams[0]}, "
                f"{float(last):.0%} at layer {obj.layers[-1]} {obj.streams[-1]} (chance {float(obj.chance[k]):.0%}).")
    return None


def _highlights_html(sections: Mapping[str, Sequence[tuple[Any, str | None]]]) -> str:
    lines = []
    for items in sections.values():
        for item, _ in items:
            try:
                line = _highlight(item)
            except Exception:  # a headline is a bonus; never fail the report over it
                line = None
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

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#23395d;color:#fff;padding:14px 28px}header h1{margin:0;font-size:1.5em}
header p{margin:4px 0 0;opacity:.85;font-size:.9em}
.layout{display:flex;align-items:flex-start}
nav{position:sticky;top:0;max-height:100vh;overflow:auto;min-width:230px;max-width:260px;padding:14px 10px 14px 20px;
font-size:.88em;border-right:1px solid #ddd;background:#f2f4f7;box-sizing:border-box}
nav ul{list-style:none;padding-left:0;margin:0}nav ul ul{padding-left:12px}nav li{margin:3px 0}
nav a{color:#23395d;text-decoration:none}nav a:hover{text-decoration:underline}
main{flex:1;padding:10px 28px 40px;min-width:0}
section>h2{border-bottom:2px solid #23395d;padding-bottom:4px;margin-top:28px}
figure{background:#fff;border:1px solid #ddd;border-radius:6px;margin:18px 0;padding:10px 12px}
.plot{width:100%;min-height:460px}
figcaption{font-size:.9em;color:#444;margin-top:6px;line-height:1.4}
pre.summary{background:#f4f4f4;padding:8px;font-size:.85em;overflow:auto}
table{border-collapse:collapse;font-size:.82em}td,th{border:1px solid #ddd;padding:2px 7px;text-align:left}
th{background:#eef1f5}.tablewrap{max-height:360px;overflow:auto}
table.model th{width:170px}code.tok{background:#eef1f5;padding:0 3px;margin:1px;display:inline-block;white-space:pre}
.picker{background:#fff8e1;border:1px solid #e6c86e;border-radius:6px;padding:8px 12px;margin:12px 0}
.picker ul{margin:6px 0 0;font-size:.88em}
#lw-errors{display:none;background:#fde2e2;border:1px solid #c33;padding:8px;white-space:pre-wrap}
.note{color:#777;font-size:.85em}
ul.highlights{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 10px 10px 30px;line-height:1.5}
"""

# Runs before plotly loads: records script errors (shown in a red box) so a broken figure is visible.
_ERRORS_JS = """
(function(){
  var box = null, pending = [];
  function record(msg){
    box = box || document.getElementById('lw-errors');
    if(!box){ pending.push(msg); return; }
    while(pending.length){ box.appendChild(document.createTextNode(pending.shift() + '\\n')); }
    box.appendChild(document.createTextNode(String(msg) + '\\n'));
    box.style.display = 'block';
  }
  window.lwRecordError = record;
  window.addEventListener('error', function(e){ record('error: ' + (e.message || e)); });
  window.addEventListener('unhandledrejection', function(e){ record('unhandled rejection: ' + (e.reason && e.reason.message || e.reason)); });
})();
"""

# Draws every figure from the JSON block, then wires the head picker.
_RENDER_JS = """
(function(){
  var specs = JSON.parse(document.getElementById('lw-figures').textContent);
  var config = {responsive: true, displaylogo: false};
  var jobs = specs.map(function(spec){
    var div = document.getElementById(spec.id);
    try {
      return Plotly.newPlot(div, spec.figure.data || [], spec.figure.layout || {}, config).catch(function(e){
        window.lwRecordError('figure ' + spec.id + ': ' + e); });
    } catch(e) { window.lwRecordError('figure ' + spec.id + ': ' + e); return Promise.resolve(); }
  });
  Promise.all(jobs).then(function(){
    document.body.setAttribute('data-lw-rendered', String(specs.length));
    var st = document.getElementById('lw-status'); if(st){ st.textContent = 'rendered ' + specs.length + ' figures'; }
  });

  var picker = document.getElementById('lw-head-picker');
  if(!picker){ return; }
  function top(values, labels, k){
    var pairs = [];
    for(var i = 0; i < values.length; i++){
      var v = values[i];
      if(v !== null && v !== undefined && !isNaN(v)){ pairs.push([v, labels[i]]); }
    }
    pairs.sort(function(a, b){ return b[0] - a[0]; });
    return pairs.slice(0, k);
  }
  function describe(list){
    if(!list.length){ return 'none'; }
    return list.map(function(p){ return p[1] + ' ' + p[0].toFixed(3); }).join(', ');
  }
  picker.addEventListener('change', function(){
    var head = picker.value;
    var out = document.getElementById('lw-head-summary');
    while(out.firstChild){ out.removeChild(out.firstChild); }
    document.querySelectorAll('.plot[data-kind="composition"]').forEach(function(div){
      var trace = (div.data || [])[0];
      if(!trace){ return; }
      var ys = trace.y || [], xs = trace.x || [];
      var r = ys.indexOf(head), c = xs.indexOf(head);
      var shapes = [];
      if(head && r >= 0){
        shapes.push({type:'rect', xref:'paper', yref:'y', x0:0, x1:1, y0:r-0.5, y1:r+0.5,
                     line:{color:'crimson', width:3}, fillcolor:'rgba(0,0,0,0)'});
      }
      if(head && c >= 0){
        shapes.push({type:'rect', xref:'x', yref:'paper', x0:c-0.5, x1:c+0.5, y0:0, y1:1,
                     line:{color:'orange', width:3, dash:'dot'}, fillcolor:'rgba(0,0,0,0)'});
      }
      Plotly.relayout(div, {shapes: shapes});
      if(head && r >= 0){
        var z = trace.z || [];
        var row = z[r] || [];
        var col = z.map(function(zr){ return zr[c]; });
        var li = document.createElement('li');
        li.textContent = (div.getAttribute('data-mode') || '') + '-composition: ' + head + ' is read most by ' +
          describe(top(row, xs, 3)) + '; reads most from ' + describe(top(col, ys, 3)) + '.';
        out.appendChild(li);
      }
    });
  });
})();
"""


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
        compositions = [item for item, _ in items if type(item).__name__ == "CompositionScores"]
        for item, caption in items:
            fig = _figure_of(item)
            fig_dict = _sanitize(fig.to_plotly_json())
            fig_dict.setdefault("layout", {})
            title_obj = fig_dict["layout"].get("title")
            fig_title = title_obj.get("text", "") if isinstance(title_obj, dict) else (title_obj or "")
            if fig_title and len(fig_title) > 95 and "<br" not in fig_title:
                fig_dict["layout"]["title"] = dict(title_obj if isinstance(title_obj, dict) else {}, text=_wrap(fig_title))
            fid = f"fig-{n}"
            n += 1
            caption = caption if caption is not None else _default_caption(item)
            label = _plain(fig_title) or type(item).__name__
            short = label if len(label) <= 60 else label[:57].rstrip() + "…"
            extra = ""
            if type(item).__name__ == "CompositionScores":
                extra = f' data-kind="composition" data-mode="{_esc(item.mode)}"'
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
            first_comp = next(i for i, (item, _) in enumerate(items) if type(item).__name__ == "CompositionScores")
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
        f"<title>{_esc(title)}</title><style>{_CSS}</style>"
        f"<script>{_ERRORS_JS}</script>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head>\n"
        f"<body><header><h1>{_esc(title)}</h1><p>lensworks {_esc(__version__)} · {n} figures · written {_esc(stamp)} · "
        "works offline; hover a figure for labels and values, drag to zoom, double-click to reset.</p></header>\n"
        "<div id='lw-errors' role='alert'></div>\n"
        f"<div class='layout'><nav aria-label='contents'><strong>Contents</strong><ul>{''.join(toc)}</ul>"
        f"<p class='note' id='lw-status'>rendering…</p></nav>\n"
        f"<main>{highlights}{model_section}{''.join(body)}</main></div>\n"
        f"<script type='application/json' id='lw-figures'>{payload}</script>\n"
        f"<script>{_RENDER_JS}</script>\n</body></html>\n"
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
    out: dict[str, list[Any]] = {"circuits": [], "geometry": [], "probes": []}
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
        out["circuits"] += [rep, rep.induction, rep.previous]
        if cfg.n_layers > 1:
            out["circuits"].append(rep.k_composition)
        out["circuits"].append(rep.copying)

    def run_duplicate():
        rep = state["induction"]
        out["circuits"].insert(3, circuits.head_scores(
            model, "duplicate_token", seq_len=rep.thresholds["seq_len"], seed=seed,
            prepend_bos=rep.thresholds["prepend_bos"]))

    def run_composition():
        comps = [circuits.composition_scores(model, m, progress=False) for m in ("Q", "V")]
        k = next(i for i, r in enumerate(out["circuits"]) if type(r).__name__ == "CompositionScores")
        out["circuits"][k:k] = [comps[0]]
        out["circuits"].insert(k + 2, comps[1])

    def run_data():
        state["windows"] = windows(n_prompts, "geometry: block ablation, decomposition, logit lens")

    def run_stats():
        if positive is not None:
            data_sets = {"positive": _read_prompts(positive, "positive"), "negative": _read_prompts(negative, "negative")}
            data.append(DataRead("geometry: residual statistics", "the positive and negative prompts given",
                                 sum(len(v) for v in data_sets.values()), None, "one window per prompt"))
            data_sets_ = data_sets
            out["geometry"].append(geometry.residual_stats(model, data_sets_, streams=_streams(model), progress=False))
            return
        if model.tokenizer is not None:
            from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

            builtin = {"Python code": list(BUILTIN_POSITIVE), "English prose": list(BUILTIN_NEGATIVE)}
            try:
                out["geometry"].append(geometry.residual_stats(model, builtin, streams=_streams(model), progress=False))
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
        out["geometry"].append(geometry.residual_stats(model, {"text": w, "shuffled text": shuffled},
                                                       streams=_streams(model), progress=False))

    def run_ablation():
        out["geometry"].append(geometry.block_ablation(model, state["windows"], progress=False))

    def run_decomposition():
        out["geometry"].append(geometry.block_decomposition(model, state["windows"], progress=False))

    def run_lens():
        out["geometry"].append(geometry.logit_lens(model, state["windows"][: min(12, n_prompts)], progress=False))

    def run_probes():
        w = windows(2 * n_prompts, "probes: input-token probes")
        res = probes.probe_inputs(model, w, seed=seed, progress=False)
        state["probe"] = res
        out["probes"].append(res)

    def run_compare():
        res = state["probe"]
        last = (res.layers[-1], res.streams[-1], res.offsets[0])
        cmp = probes.compare_to_embedding(res.weights(*last), model, tokens=res.classes, n_random=50, seed=seed)
        caption = (f"The probe for the input token at offset {last[2]}, read from layer {last[0]} {last[1]}, "
                   "compared with the embedding: principal-angle overlap with W_E and W_U and where its weight sits "
                   "along the embedding's PCA basis, each against random matrices with the same singular values.")
        out["probes"].append((cmp, caption))

    def run_basis():
        out["probes"].append(probes.embedding_basis(model, "pca", k=min(cfg.d_model, cfg.d_vocab, 32)))

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
    return Analyses({k: v for k, v in out.items() if v}, data=data)


def _streams(model: HookedTransformer) -> tuple[str, ...]:
    return model_streams(model)
