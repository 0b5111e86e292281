"""The report in a real browser: headless Chromium opens it from disk, plotly draws every figure,
no script error or alert happens, the hostile tokens show as text, and the head picker works.

Needs Debian's ``chromium`` package (``.ci/run`` installs it when missing); skipped with a
message where no Chromium binary exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import CHAR_VOCAB, tiny_model

from lensworks import report
from lensworks.plotting import escape_label, head_heatmap

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
TEXT = ("def f x return x 1 " + HOSTILE[0] + " and " + HOSTILE[1] + " end.\n") * 80


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (install Debian's package: apt-get install -y chromium); .ci/run installs it",
)

# Injected first in <head>: record alerts, console errors and any element that should not exist.
_PROBE_HEAD = """<script>
window.__lw = {alerts: [], console: []};
window.alert = window.confirm = window.prompt = function(m){ window.__lw.alerts.push(String(m)); };
(function(){ var e = console.error; console.error = function(){
  window.__lw.console.push(Array.prototype.join.call(arguments, ' ')); return e.apply(console, arguments); }; })();
</script>"""

# Injected last in <body>: once every figure has rendered, exercise hover and the head picker,
# then write what was seen into <pre id="lw-test-result"> for --dump-dom.
_PROBE_TAIL = """<script>
(function(){
  function hover(){
    var tok = document.getElementById('hostile-plot');
    if(tok){ try { Plotly.Fx.hover(tok, {xval: 1, yval: 0}); } catch(e) { window.__lw.hoverError = String(e); } }
    setTimeout(finish, 300);
  }
  function finish(){
    var out = {rendered: document.body.getAttribute('data-lw-rendered'), figures: [], hover: '', picker: null};
    document.querySelectorAll('.plot').forEach(function(div){
      out.figures.push({id: div.id, svg: div.querySelectorAll('svg.main-svg').length,
                        ticks: Array.prototype.map.call(div.querySelectorAll('.xtick text, .ytick text'),
                                                        function(t){ return t.textContent; })});
    });
    var tok = document.getElementById('hostile-plot');
    if(tok){
      var h = tok.querySelector('.hoverlayer');
      out.hover = window.__lw.hoverError || (h ? h.textContent : '');
    }
    var picker = document.getElementById('lw-head-picker');
    if(picker){
      picker.value = picker.options[1].value;
      picker.dispatchEvent(new Event('change'));
      var comps = document.querySelectorAll('.plot[data-kind="composition"]');
      out.picker = {head: picker.value, summary: document.getElementById('lw-head-summary').textContent,
                    shapes: Array.prototype.map.call(comps, function(d){
                      return (d.layout.shapes || []).length; })};
    }
    out.errors = document.getElementById('lw-errors').textContent;
    out.alerts = window.__lw.alerts;
    out.console = window.__lw.console;
    out.images = document.images.length;
    out.injected = document.querySelectorAll('img, iframe, object, embed').length;
    out.text = document.body.textContent;
    out.resources = performance.getEntriesByType('resource').map(function(r){ return r.name; });
    var pre = document.createElement('pre'); pre.id = 'lw-test-result';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  function wait(n){
    if(document.body.getAttribute('data-lw-rendered') || n > 200){ setTimeout(hover, 50); }
    else { setTimeout(function(){ wait(n + 1); }, 50); }
  }
  wait(0);
})();
</script>"""


def chromium(args: list[str], tmp_path: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,2400", *args,
    ]
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """A report from a tiny model whose vocabulary holds hostile strings, plus one figure whose
    axis labels are those strings (so they reach plotly's SVG text and hover labels)."""
    model = tiny_model(seed=5, n_layers=2, attn_only=False, d_mlp=32, n_ctx=32, vocab=CHAR_VOCAB + HOSTILE)
    results = report.analyse(model, text=TEXT, n_prompts=4, prompt_len=32, progress=False)
    heat = head_heatmap([[0.1, 0.9], [0.5, 0.2]], title="hostile tokens on the axes", x_labels=HOSTILE,
                        y_labels=HOSTILE, x_title="token", y_title="token", colorbar_title="value (unitless)")
    results["tokens"] = [heat]
    folder = tmp_path_factory.mktemp("browser")
    path = report.build(results, folder / "report.html", model=model, model_name="hostile")
    page = path.read_text(encoding="utf-8")
    # the extra figure gets a known id so the probe can hover it
    last = len(re.findall(r"<figure id='fig-", page)) - 1
    page = page.replace(f"id='fig-{last}-plot'", "id='hostile-plot'").replace(f'"id":"fig-{last}-plot"', '"id":"hostile-plot"')
    probed = folder / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>", 1))
    return path, probed, sum(len(v) for v in results.values()), results


def test_report_renders_in_chromium(report_page, tmp_path):
    path, probed, n_figures, results = report_page
    run = chromium(["--dump-dom", "--virtual-time-budget=30000", probed.resolve().as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r'<pre id="lw-test-result">(.*?)</pre>', run.stdout, re.S)
    assert m, "the page never finished rendering:\n" + run.stdout[-1000:] + run.stderr[-2000:]
    import html

    out = json.loads(html.unescape(m.group(1)))
    # plotly drew every figure
    assert out["rendered"] == str(n_figures)
    assert len(out["figures"]) == n_figures
    assert all(f["svg"] >= 1 for f in out["figures"]), [f["id"] for f in out["figures"] if f["svg"] < 1]
    # no script errors, console errors or alerts; nothing injected; nothing fetched from the network
    assert out["errors"] == ""
    assert out["console"] == []
    assert out["alerts"] == []
    assert out["images"] == 0 and out["injected"] == 0
    assert all(r.startswith(("file:", "data:", "blob:")) for r in out["resources"]), out["resources"]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)]
    assert console == [], console
    # the hostile tokens are shown as text: in the vocabulary list, the axis ticks and the hover label
    assert HOSTILE[0] in out["text"] and HOSTILE[1] in out["text"]
    ticks = next(f["ticks"] for f in out["figures"] if f["id"] == "hostile-plot")
    assert HOSTILE[0] in ticks and HOSTILE[1] in ticks
    assert HOSTILE[1] in out["hover"] and HOSTILE[0] in out["hover"], out["hover"]
    assert escape_label(HOSTILE[0]) not in out["text"]  # escaped once, not twice
    # the head picker outlines the chosen head in all three composition heatmaps and summarises it
    assert out["picker"]["head"] == "L0H0"
    assert out["picker"]["shapes"] == [2, 2, 2]  # its row and its column
    assert out["picker"]["summary"].count("L0H0 is read most by L1H") == 3
    assert out["picker"]["summary"].count("reads most from none") == 3  # nothing comes before layer 0
    for comp in (r for r in results["circuits"] if type(r).__name__ == "CompositionScores"):
        row = comp.scores[0, 0, 1]  # L0H0 -> every head of layer 1
        best = int(row.argmax())
        assert f"{comp.mode}-composition: L0H0 is read most by L1H{best} {float(row[best]):.3f}" in out["picker"]["summary"]


def test_report_screenshot(report_page, tmp_path):
    path, _, _, _ = report_page
    shot = tmp_path / "report.png"
    run = chromium([f"--screenshot={shot}", "--virtual-time-budget=30000", path.resolve().as_uri()], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real, non-blank page
