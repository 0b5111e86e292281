"""The offline HTML report: self-contained, every section, escaped tokens, CLI, bad input."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser

import pytest
import torch
from helpers import CHAR_VOCAB, save_checkpoint, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from lensworks import report
from lensworks.cli import main
from lensworks.model import LensworksError

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
HOSTILE_VOCAB = CHAR_VOCAB + HOSTILE
#: Text made only of vocabulary entries, so the hostile tokens survive tokenization.
HOSTILE_TEXT = ("def f x return x 1 " + HOSTILE[0] + " and " + HOSTILE[1] + " end.\n") * 80


def hostile_model():
    return tiny_model(seed=5, n_layers=2, attn_only=False, d_mlp=32, n_ctx=32, vocab=HOSTILE_VOCAB)


def figures_json(page: str):
    m = re.search(r"<script type='application/json' id='lw-figures'>(.*?)</script>", page, re.S)
    assert m, "no figure JSON block"
    return json.loads(m.group(1))


def all_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from all_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from all_strings(v)


@pytest.fixture(scope="module")
def hostile():
    model = hostile_model()
    results = report.analyse(model, text=HOSTILE_TEXT, n_prompts=4, prompt_len=32, progress=False)
    return model, results


@pytest.fixture(scope="module")
def page(hostile, tmp_path_factory):
    model, results = hostile
    path = report.build(results, tmp_path_factory.mktemp("report") / "r.html", model=model, model_name=HOSTILE[0])
    return path.read_text(encoding="utf-8")


def test_analyse_runs_every_section(hostile):
    _, results = hostile
    assert list(results) == ["circuits", "geometry", "probes", "causal"]
    names = {s: [type(r[0] if isinstance(r, tuple) else r).__name__ for r in v] for s, v in results.items()}
    assert names["circuits"].count("CompositionScores") == 3
    assert sorted(r.mode for r in results["circuits"] if type(r).__name__ == "CompositionScores") == ["K", "Q", "V"]
    assert {"InductionReport", "CopyingScores", "BehaviourScores", "TermImportance", "SkipTrigrams"} <= set(names["circuits"])
    kinds = {r.kind for r in results["circuits"] if type(r).__name__ == "BehaviourScores"}
    assert kinds == {"previous_token", "duplicate_token", "induction"}
    assert names["geometry"] == ["ResidualStats", "AblationTable", "BlockDecomposition", "LogitLens",
                                 "EffectiveDimensionality"]
    assert names["probes"] == ["ProbeResults", "Comparison", "Basis"]
    assert names["causal"] == ["ActivationPatching", "AttributionPatching", "DirectLogitAttribution"]


def test_effective_dimensionality_reads_the_geometry_windows(hostile):
    """The report's effective dimensionality is the library call on the windows block ablation reads,
    and the Data read table says so."""
    from lensworks.geometry import effective_dimensionality
    from lensworks.model import text_windows

    model, results = hostile
    got, caption = next(r for r in results["geometry"] if isinstance(r, tuple)
                        and type(r[0]).__name__ == "EffectiveDimensionality")
    windows = text_windows(model, HOSTILE_TEXT, max_tokens=4 * 32 * 2, width=32)[:4]
    ref = effective_dimensionality(model, windows)
    assert got.n_samples == 4 and got.streams == ref.streams and got.layers == ref.layers
    assert torch.allclose(got.participation_ratio, ref.participation_ratio, rtol=1e-5)
    assert torch.equal(got.n_components_90, ref.n_components_90)
    assert "rank at most 3" in caption  # 4 windows < d_model: the bound is on the page
    read = next(d for d in results.data if "effective dimensionality" in d.analyses)
    assert "block ablation" in read.analyses and read.n_windows == 4 and read.tokens_per_window == 32
    explorer = next(d for d in results.data if d.analyses == "circuits: attention explorer")
    assert explorer.source == read.source and explorer.n_windows == 2 and explorer.tokens_per_window == 24


def test_term_importance_and_trigrams_in_the_report(hostile):
    """The report's term importance is the library call on the first geometry windows (Data read
    says so); its skip-trigrams belong to the verdict's first induction head, or the most copying head."""
    from lensworks.circuits import skip_trigrams, term_importance
    from lensworks.model import text_windows

    model, results = hostile
    got = next(r[0] for r in results["circuits"] if isinstance(r, tuple) and type(r[0]).__name__ == "TermImportance")
    windows = text_windows(model, HOSTILE_TEXT, max_tokens=4 * 32 * 2, width=32)[:4]
    ref = term_importance(model, windows, max_order=2)
    torch.testing.assert_close(got.loss_by_order, ref.loss_by_order)
    torch.testing.assert_close(got.loss_without, ref.loss_without)
    assert got.terms == ref.terms
    read = next(d for d in results.data if d.analyses == "circuits: term importance")
    assert read.n_windows == 4 and read.tokens_per_window == 32
    verdict = next(r for r in results["circuits"] if type(r).__name__ == "InductionReport")
    tri = next(r[0] for r in results["circuits"] if isinstance(r, tuple) and type(r[0]).__name__ == "SkipTrigrams")
    want = verdict.heads[0] if verdict.heads else tuple(int(x) for x in verdict.copying.top(1)[0][0][1:].split("H"))
    assert (tri.layer, tri.head) == want
    torch.testing.assert_close(tri.ov, skip_trigrams(model, *want, k=15).ov)


def test_causal_sections_are_the_library_calls_on_the_pair(hostile, page):
    """The report patches the induction pair drawn with its seed (Data read says so): the numbers
    are activation_patching / attribution_patching / direct_logit_attribution's on that pair, and
    each result's note names the prompts."""
    from lensworks.causal import (activation_patching, attribution_patching, direct_logit_attribution,
                                  induction_pair)

    model, results = hostile
    exact, approx, dla = results["causal"]
    pair = induction_pair(model, n_seqs=4, seed=0)
    args = dict(answer_tokens=pair.answer, wrong_tokens=pair.wrong, what=("resid_pre", "attn_out", "mlp_out", "head_z"))
    want = activation_patching(model, pair.clean, pair.corrupted, "logit_diff", **args)
    assert set(exact.scores) == set(args["what"])
    for target in exact.scores:
        assert torch.equal(exact[target], want[target]), target
    ref = attribution_patching(model, pair.clean, pair.corrupted, "logit_diff", exact=want, **args)
    assert approx.correlation == pytest.approx(ref.correlation) and set(approx.correlation) == set(args["what"])
    torch.testing.assert_close(dla.attributions, direct_logit_attribution(model, pair.clean, pair.answer,
                                                                          wrong_tokens=pair.wrong).attributions)
    for res in (exact, approx, dla):
        assert pair.describe() in res.note and res.note in page
    read = next(d for d in results.data if d.analyses.startswith("causal:"))
    assert (read.n_windows, read.tokens_per_window) == tuple(pair.clean.shape)
    assert "seed 0" in read.source and not read.fallback


def test_causal_sections_say_why_they_do_not_apply():
    model = tiny_model(seed=3, n_ctx=5)  # no room for two tokens and a wrong one, repeated
    run = report.run_sections(report.Context.of(model), report.registry("causal"))
    assert not run.entries
    assert [s.section for s in run.skipped] == ["activation patching", "attribution patching", "direct logit attribution"]
    assert all(s.reason.startswith("no clean/corrupted pair of repeated tokens fits this model: ") and "n_ctx=5" in s.reason
               for s in run.skipped), run.skipped
    attn = tiny_model(seed=1)  # attention only: no MLP to patch, the other targets are there
    patched = report.run_sections(report.Context.of(attn), report.registry(names=["activation patching"]))
    assert list(patched.result("activation patching").scores) == ["resid_pre", "attn_out", "head_z"]


def test_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts and all("src" not in s for s in scripts)
    assert not re.search(r"<(link|img|iframe)\b", page, re.I)
    assert page.count("plotly.js v") <= 2  # plotly.js's banner: the library is inlined once
    assert len(page) > 3_000_000  # plotly.js itself is ~4.8 MB


def test_page_has_every_section_and_toc(page, hostile):
    _, results = hostile
    for sid in ("highlights", "model", "section-circuits", "section-geometry", "section-probes", "section-causal"):
        assert f"id='{sid}'" in page
        assert f"href='#{sid}'" in page
    n = sum(len(v) for v in results.values())
    specs = figures_json(page)
    assert len(specs) == n
    for spec in specs:
        assert f"id='{spec['id']}'" in page
        assert spec["figure"]["layout"]["title"]["text"]  # every figure has a title
    assert page.count("<figcaption>") == n
    with_rows = sum(1 for v in results.values() for r in v
                    if len(getattr(r[0] if isinstance(r, tuple) else r, "to_frame", lambda: ())()))
    assert page.count("<details>") >= with_rows >= n - 2  # a data table for every result with rows


def test_highlights_quote_the_results(page, hostile):
    _, results = hostile
    verdict = next(r for r in results["circuits"] if type(r).__name__ == "InductionReport")
    if verdict.heads:
        assert "Induction heads: " + ", ".join(f"L{l}H{h}" for l, h in verdict.heads) in page
    else:
        assert "No induction heads" in page
    k = next(r for r in results["circuits"] if type(r).__name__ == "CompositionScores" and r.mode == "K")
    best = k.top(1)[0]
    assert f"Strongest K-composition: {html.escape(best.label)}, {best.score:.3f}" in page
    probes = results["probes"][0]
    assert f"(chance {float(probes.chance[0]):.0%})" in page


def test_numbers_in_page_are_the_results(page, hostile):
    """Each figure in the page carries exactly the numbers of the result it came from."""
    _, results = hostile
    specs = figures_json(page)
    comp = next(r for r in results["circuits"] if type(r).__name__ == "CompositionScores")
    i = [type(r).__name__ for r in results["circuits"]].index("CompositionScores")
    z = specs[i]["figure"]["data"][0]["z"]
    n = comp.n_layers * comp.n_heads
    expected = comp.scores.reshape(n, n)
    for a in range(n):
        for b in range(n):
            got = z[a][b]
            if a // comp.n_heads < b // comp.n_heads:
                assert got == pytest.approx(float(expected[a, b]), rel=1e-6)
            else:
                assert got is None or math.isnan(got)


class _Elements(HTMLParser):
    """Every element and attribute of a page, and its text, as a browser's parser sees them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text, self.scripts = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_tokens_only_escaped(page):
    assert "<script>alert(1)" not in page
    assert "alert(1)</script>" not in page
    assert not re.search(r"<img\b", page, re.I)
    parsed = _Elements()
    parsed.feed(page)
    assert "img" not in parsed.tags
    assert parsed.scripts == 4  # error recorder, plotly.js, figure JSON, renderer
    assert not [a for a in parsed.attrs if a.lower().startswith("on")]  # no event-handler attribute anywhere
    text = "".join(parsed.text)
    assert HOSTILE[0] in text and HOSTILE[1] in text  # shown as text
    # The tokens are shown, escaped, in the model's vocabulary list and as its name.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    for s in all_strings(figures_json(page)):
        assert "<script" not in s and "<img" not in s, s


def test_head_picker_lists_every_head(page, hostile):
    model, _ = hostile
    assert "id='lw-head-picker'" in page
    for label in ("L0H0", f"L{model.cfg.n_layers - 1}H{model.cfg.n_heads - 1}"):
        assert f"<option value='{label}'>{label}</option>" in page
    assert page.count(' data-kind="composition" data-mode=') == 3


def test_plain_figures_are_sanitised(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=HOSTILE, y=[1, 2], hovertext=HOSTILE, text=["</script><script>alert(2)</script>", "b"]))
    fig.update_layout(title="<b>bold</b> " + HOSTILE[1], xaxis_title="token", yaxis_title="count")
    path = report.build({"my <section>": [(fig, "caption " + HOSTILE[0])]}, tmp_path / "p.html", title=HOSTILE[0])
    page = path.read_text()
    assert "<script>alert" not in page and "alert(2)</script>" not in page and "<img" not in page
    assert "My &lt;section&gt;" in page
    assert "caption &lt;script&gt;" in page
    spec = figures_json(page)[0]["figure"]
    assert spec["data"][0]["x"][0] == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert spec["layout"]["title"]["text"].startswith("<b>bold</b> ")  # plotly's own tags are kept
    assert "&lt;img" in spec["layout"]["title"]["text"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("<>/ab =\"'&;") + ["<br>", "<b>", "</b>", "<script>", "<img ", "<extra>"]), max_size=30).map("".join))
def test_safe_markup_property(text):
    out = report.safe_markup(text)
    assert report.safe_markup(out) == out  # idempotent
    stripped = re.sub(r"</?(?:b|i|em|sup|sub|s|u|extra)>|<br\s*/?>", "", out, flags=re.I)
    assert "<" not in stripped and ">" not in stripped


def test_safe_markup_examples():
    assert report.safe_markup("a<br>b") == "a<br>b"
    assert report.safe_markup("&lt;b&gt;") == "&lt;b&gt;"
    assert report.safe_markup(HOSTILE[0]) == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_bad_input(tmp_path, attn_model):
    with pytest.raises(LensworksError, match="empty"):
        report.build([], tmp_path / "x.html")
    with pytest.raises(LensworksError, match="figure"):
        report.build([object()], tmp_path / "x.html")
    with pytest.raises(LensworksError, match="list or a dict"):
        report.build("not results", tmp_path / "x.html")
    with pytest.raises(LensworksError, match="positive and negative"):
        report.analyse(attn_model, positive=["a", "b"], progress=False)
    with pytest.raises(LensworksError, match="HookedTransformer"):
        report.analyse("gpt2", progress=False)
    with pytest.raises(LensworksError, match="tokenizer"):
        report.analyse(attn_model, text="some text", progress=False)


def test_attention_only_model_without_tokenizer(attn_model, tmp_path):
    before = {k: v.clone() for k, v in attn_model.state_dict().items()}
    results = report.analyse(attn_model, n_prompts=4, prompt_len=24, progress=False)
    assert set(results) == {"circuits", "geometry", "probes", "causal"}
    path = report.build(results, tmp_path / "a.html", model=attn_model)
    assert "section-geometry" in path.read_text()
    after = attn_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is untouched


def test_contrastive_datasets(hostile):
    model, _ = hostile
    pos = "\n".join(["the cat sat on the mat.", "a dog ran far away.", "birds fly south."])
    neg = "\n".join(["12 34 56 78", "90 12 34", "5 6 7 8 9 0"])
    results = report.analyse(model, text=HOSTILE_TEXT, positive=pos, negative=neg, n_prompts=2, prompt_len=16,
                             progress=False)
    stats = results["geometry"][0]
    assert list(stats.datasets) == ["positive", "negative"]


def test_cli_writes_report(tmp_path, capsys):
    model = hostile_model()
    ckpt = save_checkpoint(model, tmp_path / "ckpt", vocab=HOSTILE_VOCAB)
    text = tmp_path / "t.txt"
    text.write_text(HOSTILE_TEXT)
    out = tmp_path / "out" / "report.html"
    rc = main(["report", str(ckpt), "-o", str(out), "--text", str(text), "--n-prompts", "3", "--prompt-len", "24",
               "--no-progress"])
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "section-probes" in page and "<script>alert(1)" not in page


def test_cli_bad_input(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a prompt\nanother\n")
    assert main(["report", "--positive", str(tmp_path / "p.txt"), "-o", str(tmp_path / "r.html")]) == 2
    assert "negative" in capsys.readouterr().err
    assert main(["report", "--text", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "is a directory; expected a text file" in capsys.readouterr().err
    assert main(["report", "--text", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_docs_examples_compile():
    """The scripts in docs/examples/ are valid Python that imports only public-enough names."""
    import ast
    from pathlib import Path

    examples = sorted((Path(__file__).parent.parent / "docs" / "examples").glob("*.py"))
    assert {p.name for p in examples} >= {"circuits.py", "geometry.py", "probes.py"}
    for path in examples:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lensworks"):
                module = __import__(node.module, fromlist=[a.name for a in node.names])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: {node.module}.{alias.name} does not exist"


def test_attention_explorer_on_strings_and_bad_input(mlp_model):
    from lensworks.plotting import attention_explorer

    fig = attention_explorer(mlp_model, ["the cat", "a dog sat down"], heads=[(0, 1), (2, 3)])
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["prompt 0 · L0H1", "prompt 0 · L2H3", "prompt 1 · L0H1", "prompt 1 · L2H3"]
    first = fig.layout.updatemenus[0].buttons[0].args[0]
    assert len(first["x"][0]) == len(mlp_model.to_tokens("the cat")[0])  # no padding shown
    assert first["x"][0][0].startswith("0:")
    with pytest.raises(LensworksError, match="max_tokens"):
        attention_explorer(mlp_model, ["x"], max_tokens=0)
    with pytest.raises(LensworksError, match="head"):
        attention_explorer(mlp_model, ["x"], heads=[(0, 99)])


def test_attention_grid_names_the_tokens_and_refuses_bad_input(hostile, mlp_model):
    """The grid's hover names both tokens, escaped (a hostile token is text, never markup); every
    head of the layer is one trace; a layer without heads, a prompt out of range or a grid option
    without the grid is refused by name."""
    from lensworks.circuits import attention_patterns
    from lensworks.plotting import attention_explorer

    model, _ = hostile
    prompt = "the " + HOSTILE[0] + " x"
    res = attention_patterns(model, ["a cat", prompt])
    fig = res.grid_figure(prompt=1, layer=0)
    assert [t.name for t in fig.data] == [f"L0H{h}" for h in range(model.cfg.n_heads)]
    hover = [cell for row in fig.data[0].text for cell in row]
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in cell for cell in hover)
    assert not any("<script>" in cell for cell in hover)
    torch.testing.assert_close(torch.tensor(fig.data[2].z), res.pattern(1, 0, 2), equal_nan=True)
    assert "layer 0 on prompt 1" in fig.layout.title.text
    sub = attention_patterns(mlp_model, ["the cat"], heads=[(0, 1), (2, 3), (2, 0)])
    grid = sub.grid_figure()  # layers 0 and 2: a menu; the head titles follow the layer shown
    assert [t.name for t in grid.data] == ["L0H1", "L2H3", "L2H0"] and [t.visible for t in grid.data] == [True, False, False]
    layer2 = grid.layout.updatemenus[0].buttons[1].args
    assert layer2[0]["visible"] == [False, True, True] and [a["text"] for a in layer2[1]["annotations"]] == ["L2H3", "L2H0"]
    with pytest.raises(LensworksError, match=r"layer 1 has no head among the heads shown; expected one of \[0, 2\]"):
        sub.grid_figure(layer=1)
    with pytest.raises(LensworksError, match="prompt"):
        sub.grid_figure(prompt=1)
    with pytest.raises(LensworksError, match="view must be 'menu' or 'grid'"):
        attention_explorer(mlp_model, ["x"], view="heads")
    with pytest.raises(LensworksError, match="pass view='grid'"):
        attention_explorer(mlp_model, ["x"], layer=1)


# --------------------------------------------------------------------------- the explorer on the user's prompts

PROMPTS = ["the cat sat on the mat.", HOSTILE[0] + " x " + HOSTILE[1], "one more line, 12 3"]


def _explorer_views(page: str) -> dict[str, list[str]]:
    """The attention explorer's views in a written page: menu label -> the x-axis token labels."""
    spec = next(s["figure"] for s in figures_json(page)
                if s["figure"]["layout"]["title"]["text"].startswith("Attention pattern:"))
    return {b["label"]: b["args"][0]["x"][0] for b in spec["layout"]["updatemenus"][0]["buttons"]}


def test_cli_prompts_in_the_attention_explorer(tmp_path, capsys):
    from lensworks.model import encode_text, token_strings
    from lensworks.plotting import escape_label

    model = hostile_model()
    ckpt = save_checkpoint(model, tmp_path / "ckpt", vocab=HOSTILE_VOCAB)
    text, prompts = tmp_path / "t.txt", tmp_path / "prompts.txt"
    text.write_text(HOSTILE_TEXT)
    prompts.write_text(PROMPTS[0] + "\n\n" + PROMPTS[1] + "\r\n" + PROMPTS[2] + "\n")
    out = tmp_path / "report.html"
    assert main(["report", str(ckpt), "-o", str(out), "--text", str(text), "--prompts", str(prompts),
                 "--n-prompts", "2", "--prompt-len", "16", "--no-progress"]) == 0
    page = out.read_text()
    views = _explorer_views(page)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    assert len(views) == len(PROMPTS) * n_heads
    for p, prompt in enumerate(PROMPTS):
        ids = encode_text(model, prompt)
        expected = [report.safe_markup(escape_label(f"{i}:{t}")) for i, t in enumerate(token_strings(model, ids))]
        assert views[f"prompt {p} · L1H2"] == expected  # every token of the prompt, no padding, no window text
    assert "0:&lt;bos&gt;" in views["prompt 1 · L0H0"] and "1:t" in views["prompt 0 · L0H0"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in "".join(views["prompt 1 · L0H0"])  # escaped, as everywhere
    assert "<script>alert" not in page
    assert "the prompts given (3)" in page and "the prompts given (3 of 3 shown" in page  # Data read + caption


def test_analyse_prompts_limits_and_errors(attn_model, tmp_path, monkeypatch):
    from lensworks.report import _analyse, _context

    model = hostile_model()
    # checked before any analysis runs: each refusal names the prompt
    monkeypatch.setattr(_context, "text_windows_of", lambda *a, **k: pytest.fail("analyses ran before the check"))
    for prompts, match in [
        ("fine\nnot fine {}\n", r"prompts line 2: 2 characters the vocabulary lacks: '\{' at 9"),
        ("\n  \n", "no non-empty prompt"),
        ([], "no non-empty prompt"),
        (["ok", "  "], r"prompts\[1\] is empty"),
        (["ok", 3], r"prompts\[1\] must be a string"),
        (7, "a string .one prompt per line. or a list"),
        (["ab" * 40], r"prompts\[0\] has 81 tokens, more than the model's n_ctx=32"),
    ]:
        with pytest.raises(LensworksError, match=match):
            report.analyse(model, prompts=prompts, progress=False)
    with pytest.raises(LensworksError, match="no tokenizer"):
        report.analyse(attn_model, prompts=["a b"], progress=False)
    monkeypatch.undo()
    # more prompts than the explorer shows: the first ones, and the page says how many were left out
    monkeypatch.setattr(_analyse, "EXPLORER_MAX_PROMPTS", 2)
    many = report.analyse(model, text=HOSTILE_TEXT, prompts=[f"line {i}" for i in range(5)], n_prompts=2,
                          prompt_len=16, progress=False)
    fig, caption = next(r for r in many["circuits"] if isinstance(r, tuple) and "explorer" in r[1])
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert {label.split(" · ")[0] for label in labels} == {"prompt 0", "prompt 1"}
    assert "2 of 5 shown" in caption
    read = next(d for d in many.data if d.analyses == "circuits: attention explorer")
    assert read.n_windows == 2 and "the other 3 are not shown" in read.note


def test_cli_prompts_bad_files(tmp_path, capsys):
    model = hostile_model()
    ckpt = save_checkpoint(model, tmp_path / "ckpt", vocab=HOSTILE_VOCAB)
    out = str(tmp_path / "r.html")
    empty, blank, latin1, unknown = (tmp_path / n for n in ("empty.txt", "blank.txt", "latin1.txt", "unknown.txt"))
    empty.write_text("")
    blank.write_text("\n   \n")
    latin1.write_bytes("the cat\ncaf\xe9\n".encode("latin-1"))
    unknown.write_text("the cat\n\nthe {dog}\n")
    text = tmp_path / "t.txt"
    text.write_text(HOSTILE_TEXT)
    for path, expected in [(tmp_path / "missing.txt", "no such file"), (empty, "is empty"), (blank, "is empty"),
                           (latin1, "not UTF-8 text: byte 0xe9 on line 2"),
                           (unknown, "prompts line 3: 2 characters the vocabulary lacks: '{' at 4")]:
        assert main(["report", str(ckpt), "--text", str(text), "--prompts", str(path), "-o", out, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lensworks report: error: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.html").exists()


def test_term_importance_in_the_report_reads_less_on_models_with_many_heads():
    """Above 300 terms the report lists single heads only, on 2 windows of 32 tokens (each term is a
    copy of the batch), and says so."""
    from helpers import CHAR_VOCAB, tiny_model
    from lensworks.circuits import term_importance
    from lensworks.model import text_windows

    model = tiny_model(n_layers=4, n_heads=8, d_head=4, vocab=CHAR_VOCAB, d_vocab=len(CHAR_VOCAB))
    text = "the cat sat on the mat and the dog ran to the park. " * 20
    results = report.analyse(model, text=text, n_prompts=4, prompt_len=48, progress=False)
    got, caption = next(r for r in results["circuits"] if isinstance(r, tuple) and type(r[0]).__name__ == "TermImportance")
    assert got.max_order == 1 and len(got.terms) == 1 + 32
    assert "single heads only" in caption and "2 windows of 32 tokens" in caption
    w = text_windows(model, text, max_tokens=4 * 48 * 2, width=48)[:2, :32]
    ref = term_importance(model, w, max_order=1)
    torch.testing.assert_close(got.loss_without, ref.loss_without)
    read = next(d for d in results.data if d.analyses == "circuits: term importance")
    assert (read.n_windows, read.tokens_per_window) == (2, 32)


# --------------------------------------------------------------------------- the registry of sections


def test_registry_lists_the_sections_the_report_shows(hostile, page):
    """analyse() runs the registry in order: one entry per section, each in the group the page shows
    it in, and the dict it returns lists exactly those results (pairs and the explorer's figure too)."""
    _, results = hostile
    names = [s.name for s in report.registry()]
    assert len(set(names)) == len(names)
    assert [e.section for e in results.entries] == names  # a 2-layer model: every section applies
    assert not results.skipped and "id='not-shown'" not in page
    assert {s.group for s in report.registry()} == set(report.SECTIONS)
    for group in report.SECTIONS:
        assert [e.section for e in results.entries if e.group == group] == [s.name for s in report.registry(group)]
        assert len(results[group]) == len(report.registry(group))
    by_name = {e.section: e for e in results.entries}
    assert by_name["attention explorer"].result.figure().layout.updatemenus  # the explorer is a Result now
    assert "Head chosen:" in by_name["skip-trigrams"].result.note  # caption notes are result fields
    assert by_name["skip-trigrams"].result.note in page
    assert report.section("logit lens").group == "geometry"
    with pytest.raises(LensworksError, match="unknown sections"):
        report.registry(names=["no such section"])


def test_a_section_that_does_not_apply_is_skipped_with_its_reason(tmp_path):
    from lensworks.circuits import copying_scores

    model = tiny_model(seed=3, n_layers=1)
    ran = []
    never = report.Section("never", "circuits", lambda ctx: ran.append("never"), applies=lambda m: False)
    why = report.Section("why", "geometry", lambda ctx: ran.append("why"), applies=lambda m: "needs a miracle")
    copying = report.Section("copying", "circuits", lambda ctx: copying_scores(ctx.model))
    sections = (never, copying, why, *report.registry(names=["Q composition", "circuit graph"]))
    run = report.run_sections(report.Context.of(model), sections)
    assert not ran and [e.section for e in run.entries] == ["copying"]
    assert [(s.section, s.group, s.reason) for s in run.skipped] == [
        ("never", "circuits", "does not apply to this model"), ("why", "geometry", "needs a miracle"),
        ("Q composition", "circuits", "needs at least 2 layers; the model has 1"),
        ("circuit graph", "circuits", "needs at least 2 layers; the model has 1")]
    with pytest.raises(LensworksError, match="needs a miracle"):
        run.result("why")
    bad = report.Section("bad", "circuits", lambda ctx: None, applies=lambda m: 0)
    with pytest.raises(LensworksError, match="True, False or a reason string"):
        report.run_sections(report.Context.of(model), [bad])
    # the page lists what was not shown, and why
    analyses = report.Analyses.of(run, sections)
    assert list(analyses) == ["circuits"] and analyses.skipped == list(run.skipped)
    page = report.build(analyses, tmp_path / "s.html").read_text()
    assert "id='not-shown'" in page and "needs a miracle" in page and "Q composition" in page


def test_attention_patterns_result(mlp_model):
    from lensworks.circuits import AttentionPatterns, attention_patterns

    res = attention_patterns(mlp_model, ["the cat", "a dog sat down"], heads=[(0, 1), (2, 3)])
    assert isinstance(res, AttentionPatterns) and res.heads == ((0, 1), (2, 3))
    assert res.labels == ("prompt 0 · L0H1", "prompt 0 · L2H3", "prompt 1 · L0H1", "prompt 1 · L2H3")
    _, cache = mlp_model.run_with_cache(mlp_model.to_tokens("a dog sat down"))
    n = len(res.tokens[1])
    ref = cache["blocks.2.attn.hook_pattern"][0, 3, :n, :n]
    got = res.pattern(1, 2, 3)
    lower = torch.ones(n, n).tril().bool()
    torch.testing.assert_close(got[lower], ref[lower])
    assert torch.isnan(got[~lower]).all()
    frame = res.to_frame()
    assert len(frame) == 2 * sum(len(t) * (len(t) + 1) // 2 for t in res.tokens)
    assert [b.label for b in res.figure().layout.updatemenus[0].buttons] == list(res.labels)
    with pytest.raises(LensworksError, match="not among the heads"):
        res.pattern(0, 1, 1)


def test_build_refuses_results_of_another_model(tmp_path):
    """docs/getting-started.md once passed char-mlp as the model of induction-2l's results: the page
    showed one model's card beside another's numbers."""
    from lensworks import zoo
    from lensworks.circuits import copying_scores
    from lensworks.errors import LensworksError

    ind, char = zoo.load("induction-2l"), zoo.load("char-mlp")
    a, b = copying_scores(ind, baseline=False), copying_scores(char, baseline=False)
    assert a.processing["model"] != b.processing["model"]
    with pytest.raises(LensworksError, match="model= is not the model these results were computed on"):
        report.build([a], tmp_path / "x.html", model=char)
    with pytest.raises(LensworksError, match="come from 2 different models"):
        report.build([a, b], tmp_path / "y.html")
    assert report.build([a], tmp_path / "ok.html", model=ind).is_file()
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


def test_model_card_names_the_layout_instead_of_none(tmp_path):
    from lensworks import zoo
    from lensworks.circuits import copying_scores

    model = zoo.load("induction-2l")  # a TransformerLens-format checkpoint: no Hugging Face class name
    page = report.build([copying_scores(model, baseline=False)], tmp_path / "p.html", model=model).read_text()
    card = page[page.index("id='model'"):]
    assert "<th>architecture</th><td>TransformerLens layout" in card and "<td>None</td>" not in card.split("</table>")[0]


def test_a_demo_models_own_held_out_text_is_not_called_a_fallback():
    from lensworks import zoo
    from lensworks.report import Context

    own = Context.of(zoo.load("char-mlp"))
    own.windows("geometry")
    (read,) = own.data_read
    assert not read.fallback and "held-out text of the corpus char-mlp was trained on" in read.note
    other = Context.of(zoo.load("induction-2l"))
    other.windows("geometry")
    (read,) = other.data_read
    assert read.fallback  # trained on synthetic syllables: the corpus is a fallback for it
