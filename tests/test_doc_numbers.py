"""The numbers the docs quote are the numbers the code gives (issue 23, item 1).

A page marks each computed number with the key of its value in ``docs/examples/demo_numbers.py``
(``0.124<!-- n: induction.baseline_mean -->``), holds generated tables between
``<!-- generated: KEY -->`` and ``<!-- end generated -->``, and marks sentences the code decides
with ``<!-- claim: KEY -->`` (``docs/examples/regenerate.py`` describes the markers and rewrites
them). Here every marked page is checked against a fresh computation, at the precision each number
is quoted with, and the pages that must be fully covered are searched for result-like numbers
(decimals, percentages) that carry no marker. The mechanism itself is tested on a small source.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lensworks.model import TL_MAJOR

ROOT = Path(__file__).resolve().parents[1]


def _load_regenerate():
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "examples" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


regen = _load_regenerate()
PAGES = regen.pages()

#: Pages where every decimal or percentage must be marked, with the patterns of the numbers that
#: are not analysis results (versions; timings belong to benchmarks.md and name their machine).
MUST_COVER = {
    "docs/seed-experiments.md": [],
    "README.md": [r"\b3\.\d+\+"],  # Python 3.10+ (its test times sit in a code block and name the machine)
    "docs/getting-started.md": [r"\b3\.\d+\+"],
}


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- the pages


def test_the_pages_with_quoted_numbers_are_found():
    names = {_rel(p) for p in PAGES}
    assert {"docs/seed-experiments.md", "docs/zoo.md", "docs/circuits.md"} <= names, sorted(names)


@pytest.mark.parametrize("page", sorted(MUST_COVER))
def test_every_result_number_on_the_page_is_marked(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    unmarked = regen.unmarked_numbers(text, MUST_COVER[page])
    assert unmarked == [], (
        f"{page}: numbers without a marker (add <!-- n: KEY --> after a computed one, "
        f"<!-- not computed: WHERE FROM --> after a quoted one): "
        + ", ".join(f"line {line}: {num}" for line, num in unmarked))


@pytest.fixture(scope="module")
def values():
    """The sources' values, shared by every page (each experiment runs once)."""
    return regen.load_values()


@pytest.mark.skipif(TL_MAJOR >= 4, reason="the quoted numbers are measured on TransformerLens 3; the analyses' "
                                          "agreement across the lines is the cross-line tests' job (CI time)")
@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_quoted_numbers_are_what_the_code_gives(page, values):
    problems = regen.check_text(page.read_text(encoding="utf-8"), values, _rel(page))
    assert not problems, ("\n".join(map(str, problems))
                          + "\nrewrite them with: .venv/bin/python docs/examples/regenerate.py (claims: by hand)")


# --------------------------------------------------------------------------- the mechanism


def _values(**sources):
    return regen.Values({name: (lambda v=v: v) for name, v in sources.items()})


TOY = _values(toy={"z": 12.8345, "copy": 0.99996, "count": 87380, "tab": "| a | b |\n| --- | --- |\n| x | 0.125 |",
                   "words": "L1H0, L1H3", "holds": True, "broken": False, "neg": -0.00004})


def test_format_like_keeps_the_quoted_precision_sign_and_commas():
    assert regen.format_like(12.8345, "11.7") == "12.8"
    assert regen.format_like(0.99996, "+1.000") == "+1.000"
    assert regen.format_like(87380, "1,000") == "87,380"
    assert regen.format_like(94.53, "94") == "95"
    assert regen.format_like(-0.00004, "0.000") == "0.000"  # no negative zero
    with pytest.raises(TypeError):
        regen.format_like("12", "12")


def test_a_stale_number_is_reported_with_page_line_and_both_values():
    text = "intro\nthe z is 11.7<!-- n: toy.z --> and copying +1.000<!-- n: toy.copy -->\n"
    problems = regen.check_text(text, TOY, "docs/x.md")
    assert [(p.line, p.key, p.quoted, p.computed) for p in problems] == [(2, "toy.z", "11.7", "12.8")]
    assert str(problems[0]) == "docs/x.md:2: toy.z: quoted '11.7', the code gives '12.8'"


def test_numbers_agree_at_the_quoted_precision():
    assert regen.check_text("z 12.8<!-- n: toy.z -->, 12.83<!-- n: toy.z -->, 13<!-- n: toy.z -->, "
                            "87,380<!-- n: toy.count --> and 0.0<!-- n: toy.neg -->", TOY) == []
    assert [p.quoted for p in regen.check_text("z 12.84<!-- n: toy.z -->", TOY)] == ["12.84"]


def test_a_range_dash_is_not_a_minus_sign():
    assert regen.check_text("z 12.8<!-- n: toy.z -->-13<!-- n: toy.z -->", TOY) == []
    assert [p.computed for p in regen.check_text("(-12.8<!-- n: toy.z -->)", TOY)] == ["12.8"]


def test_a_generated_table_names_the_differing_cell():
    text = "x\n<!-- generated: toy.tab -->\n| a | b |\n| --- | --- |\n| x | 0.124 |\n<!-- end generated -->\n"
    problems = regen.check_text(text, TOY, "p.md")
    assert [(p.line, p.key, p.quoted, p.computed) for p in problems] == [(5, "toy.tab [x / b]", "0.124", "0.125")]


def test_generated_text_inside_a_line_and_claims():
    ok = "heads <!-- generated: toy.words -->L1H0, L1H3<!-- end generated --> agree<!-- claim: toy.holds -->"
    assert regen.check_text(ok, TOY) == []
    bad = "heads <!-- generated: toy.words -->L1H3<!-- end generated --> agree<!-- claim: toy.broken -->"
    assert [(p.key, p.quoted, p.computed) for p in regen.check_text(bad, TOY)] == [
        ("toy.words", "L1H3", "L1H0, L1H3"), ("toy.broken", "a claim the page makes", "no longer holds (False)")]


def test_a_marker_without_a_value_is_a_problem():
    problems = regen.check_text("see 1.0<!-- n: toy.nothing --> and 2<!-- n: other.x -->", TOY)
    assert [p.key for p in problems] == ["toy.nothing", "other.x"]
    assert "no such value" in problems[0].computed and "no source 'other'" in problems[1].computed


def test_rewrite_writes_the_code_values_and_then_the_check_passes():
    text = ("z 11.7<!-- n: toy.z --> (+0.990<!-- n: toy.copy -->), 1,000<!-- n: toy.count --> windows\n"
            "<!-- generated: toy.tab -->\nold table\n<!-- end generated -->\n"
            "heads <!-- generated: toy.words --><!-- end generated -->.\n")
    new = regen.rewrite_text(text, TOY)
    assert new == ("z 12.8<!-- n: toy.z --> (+1.000<!-- n: toy.copy -->), 87,380<!-- n: toy.count --> windows\n"
                   "<!-- generated: toy.tab -->\n| a | b |\n| --- | --- |\n| x | 0.125 |\n<!-- end generated -->\n"
                   "heads <!-- generated: toy.words -->L1H0, L1H3<!-- end generated -->.\n")
    assert regen.check_text(new, TOY) == []


def test_markers_shown_as_code_are_examples_not_markers():
    text = "write `0.5<!-- n: toy.nothing -->` or\n```\n1.0<!-- generated: toy.x -->2<!-- end generated -->\n```\n"
    assert regen.check_text(text, TOY) == []
    assert regen.rewrite_text(text, TOY) == text


def test_unmarked_numbers_are_found_and_code_links_and_markers_are_not():
    text = ("a 0.25 b 94% c 0.3<!-- n: toy.z --> d `x = 0.5` e [l](a/1.5.md) f 0.17<!-- not computed: note -->\n"
            "```\ny = 2.5\n```\n<!-- generated: toy.tab -->\n| 0.125 |\n<!-- end generated -->\ng 3.10+ h 7\n")
    assert regen.unmarked_numbers(text) == [(1, "0.25"), (1, "94%"), (8, "3.10")]
    assert regen.unmarked_numbers(text, [r"3\.10\+"]) == [(1, "0.25"), (1, "94%")]
