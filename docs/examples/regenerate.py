"""Write the numbers the documentation quotes from the code that computes them, or check them.

A page quotes a computed number with a marker right after it, naming the key of the value in
``docs/examples/demo_numbers.py`` (the sources)::

    the baseline is 0.124<!-- n: induction.baseline_mean --> ± 0.007<!-- n: induction.baseline_std -->

A whole table (or a phrase) that the code writes sits between two markers::

    <!-- generated: residual.table -->
    | block | ... |
    <!-- end generated -->

A sentence whose truth the code decides (not a number) carries ``<!-- claim: KEY -->``: the key's
value must be true. A number quoted from elsewhere (a research note, a paper) is marked
``<!-- not computed: WHERE FROM -->`` so that the coverage check knows it is not ours. Markers
are HTML comments: rendered Markdown does not show them.

A number is compared at the precision it is quoted with: ``12.8`` against the computed value
rounded to one decimal, ``+1.000`` to three with the sign, ``87,380`` with thousands separators.
Rewriting keeps each quoted number's precision and writes generated text as the source gives it.

Run from the repository root::

    .venv/bin/python docs/examples/regenerate.py            # rewrite every page that has markers
    .venv/bin/python docs/examples/regenerate.py --check    # list differences, exit 1 if any
    .venv/bin/python docs/examples/regenerate.py --print    # every key and its value

``tests/test_doc_numbers.py`` runs the check: it fails naming the page, the line, the quoted value
and the computed one.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: A computed number: the number, then its marker.
#: A sign counts only after a space or an opening bracket: in "0.3-0.8" the dash is a range.
NUMBER = re.compile(r"(?P<num>(?:(?:(?<=[\s(\[=:/|])|^)[+\-])?(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
                    r"<!-- n: (?P<key>[^\s>]+) -->", re.M)
#: Text the code writes (one or more lines, or part of a line).
GENERATED = re.compile(r"<!-- generated: (?P<key>[^\s>]+) -->(?P<body>.*?)<!-- end generated -->", re.S)
#: A sentence the code decides.
CLAIM = re.compile(r"<!-- claim: (?P<key>[^\s>]+) -->")
#: A number quoted from elsewhere.
EXTERNAL = re.compile(r"(?P<num>[+\-]?\d[\d,]*(?:\.\d+)?)<!-- not computed: [^>]*-->")
_ANY_MARKER = re.compile(r"<!-- (?:n|generated|claim|not computed):")
#: Code blocks and code spans: a marker shown there as an example is not a marker.
_CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.S | re.M)


def _in_code(text: str) -> Callable[[int], bool]:
    """Whether an offset of ``text`` lies inside code."""
    spans = [m.span() for m in _CODE.finditer(text)]
    return lambda offset: any(a <= offset < b for a, b in spans)


def _markers(pattern: re.Pattern, text: str) -> list[re.Match]:
    """The matches of ``pattern`` in ``text`` outside code."""
    in_code = _in_code(text)
    return [m for m in pattern.finditer(text) if not in_code(m.start())]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One quoted value that differs from what the code gives (or a marker that names no value)."""

    page: str
    line: int
    key: str
    quoted: str
    computed: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.key}: quoted {self.quoted!r}, the code gives {self.computed!r}"


def format_like(value: Any, quoted: str) -> str:
    """``value`` written the way ``quoted`` is: its decimals, its ``+`` sign, its thousands commas.

    >>> format_like(12.8345, "11.7"), format_like(1.0, "+1.000"), format_like(87380, "87,380")
    ('12.8', '+1.000', '87,380')
    >>> format_like(-0.0001, "0.00")
    '0.00'
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a quoted number needs a numeric value, got {type(value).__name__} {value!r}")
    decimals = len(quoted.split(".", 1)[1]) if "." in quoted else 0
    spec = ("+" if quoted.startswith("+") else "") + ("," if "," in quoted else "") + f".{decimals}f"
    text = format(float(value), spec)
    if re.fullmatch(r"[+\-]?[0.,]+", text):  # no negative (or positive) zero
        text = format(0.0, spec.lstrip("+"))
        text = ("+" + text) if quoted.startswith("+") else text
    return text


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


class Values:
    """The sources' values, computed on first use and kept (each source runs once per process)."""

    def __init__(self, sources: dict[str, Callable[[], dict[str, Any]]]):
        self.sources = sources
        self._done: dict[str, dict[str, Any]] = {}

    def all(self, name: str) -> dict[str, Any]:
        """Every value of source ``name`` (computed now if not yet)."""
        if name not in self.sources:
            raise KeyError(f"no source {name!r} (sources: {', '.join(sorted(self.sources))})")
        if name not in self._done:
            self._done[name] = self.sources[name]()
        return self._done[name]

    def get(self, key: str) -> Any:
        name, _, rest = key.partition(".")
        values = self.all(name)
        if rest not in values:
            raise KeyError(f"source {name!r} has no value {rest!r}")
        return values[rest]


def _generated_body(value: Any, body: str) -> str:
    text = str(value)
    return f"\n{text}\n" if body.startswith("\n") else text


def check_text(text: str, values: Values, page: str = "page") -> list[Problem]:
    """Every quoted value of ``text`` that differs from the code, as :class:`Problem` (empty: all agree)."""
    problems: list[Problem] = []

    def value(key: str, line: int) -> tuple[bool, Any]:
        try:
            return True, values.get(key)
        except KeyError as exc:
            problems.append(Problem(page, line, key, "(marker)", f"no such value: {exc.args[0]}"))
            return False, None

    for m in _markers(GENERATED, text):
        line = _line_of(text, m.start("body"))
        ok, v = value(m["key"], line)
        if not ok:
            continue
        want = _generated_body(v, m["body"])
        if want != m["body"]:
            problems.extend(_diff_block(page, line, m["key"], m["body"], want))
    for m in _markers(NUMBER, text):
        line = _line_of(text, m.start())
        ok, v = value(m["key"], line)
        if ok:
            computed = format_like(v, m["num"])
            if computed != m["num"]:
                problems.append(Problem(page, line, m["key"], m["num"], computed))
    for m in _markers(CLAIM, text):
        line = _line_of(text, m.start())
        ok, v = value(m["key"], line)
        if ok and v is not True:
            problems.append(Problem(page, line, m["key"], "a claim the page makes", f"no longer holds ({v!r})"))
    return problems


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _diff_block(page: str, line: int, key: str, quoted: str, computed: str) -> list[Problem]:
    """One problem per differing line (per differing cell for a Markdown table row)."""
    q_lines, c_lines = quoted.split("\n"), computed.split("\n")
    header = _cells(q_lines[1]) if len(q_lines) > 1 and q_lines[1].startswith("|") else []
    out = []
    for i in range(max(len(q_lines), len(c_lines))):
        q = q_lines[i] if i < len(q_lines) else "(no line)"
        c = c_lines[i] if i < len(c_lines) else "(no line)"
        if q == c:
            continue
        qc, cc = _cells(q), _cells(c)
        if q.startswith("|") and c.startswith("|") and len(qc) == len(cc) and qc != cc:
            for j, (a, b) in enumerate(zip(qc, cc)):
                if a != b:
                    column = header[j] if j < len(header) else f"column {j + 1}"
                    out.append(Problem(page, line + i, f"{key} [{qc[0]} / {column}]", a, b))
        else:
            out.append(Problem(page, line + i, key, q, c))
    return out


def rewrite_text(text: str, values: Values) -> str:
    """``text`` with every generated block and every marked number written from the code."""
    def generated(m: re.Match) -> str:
        return f"<!-- generated: {m['key']} -->{_generated_body(values.get(m['key']), m['body'])}<!-- end generated -->"

    def number(m: re.Match) -> str:
        return format_like(values.get(m["key"]), m["num"]) + m.group(0)[len(m["num"]):]

    for pattern, write in ((GENERATED, generated), (NUMBER, number)):
        in_code = _in_code(text)
        text = pattern.sub(lambda m: m.group(0) if in_code(m.start()) else write(m), text)
    return text


_LINK = re.compile(r"\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_RESULT = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])|(?<![\w.])\d+(?:\.\d+)?%")


def unmarked_numbers(text: str, allowed: Iterable[str] = ()) -> list[tuple[int, str]]:
    """``(line, number)`` of every number with a decimal point or a ``%`` that carries no marker.

    Code, links, generated text, marked numbers and anything matching one of the ``allowed``
    regular expressions (a version, a timing that names its machine) are left out.
    """
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # keep line numbers
    for pattern in (GENERATED, NUMBER, EXTERNAL, _CODE, _LINK, _COMMENT, *[re.compile(a) for a in allowed]):
        text = pattern.sub(blank, text)
    return [(_line_of(text, m.start()), m.group(0)) for m in _RESULT.finditer(text)]


def pages() -> list[Path]:
    """README.md and every page under docs/ that holds a marker."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in candidates if _markers(_ANY_MARKER, p.read_text(encoding="utf-8"))]


def load_values() -> Values:
    """The sources of ``demo_numbers.py`` (imported from this folder)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import demo_numbers

    return Values(demo_numbers.SOURCES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to process (default: every page with a marker)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="list differences instead of rewriting; exit 1 if any")
    mode.add_argument("--print", action="store_true", help="print every key and its value")
    args = parser.parse_args(argv)
    values = load_values()
    if args.print:
        for name in values.sources:
            for key, v in values.all(name).items():
                print(f"{name}.{key} =", ("\n" + v) if isinstance(v, str) and "\n" in v else v)
        return 0
    problems = []
    for page in args.pages or pages():
        text = page.read_text(encoding="utf-8")
        rel = page.resolve().relative_to(ROOT).as_posix() if page.resolve().is_relative_to(ROOT) else str(page)
        found = check_text(text, values, rel)
        problems += found
        unknown = [p for p in found if p.quoted == "(marker)"]
        if unknown and not args.check:
            print("\n".join(map(str, unknown)), file=sys.stderr)
            return 1
        if found and not args.check:
            page.write_text(rewrite_text(text, values), encoding="utf-8")
            print(f"rewrote {rel}: {len(found)} value(s) changed")
    if args.check:
        for p in problems:
            print(p)
        return 1 if problems else 0
    claims = [p for p in problems if p.quoted == "a claim the page makes"]
    for p in claims:
        print(f"{p}: edit the sentence by hand", file=sys.stderr)
    return 1 if claims else 0


if __name__ == "__main__":
    raise SystemExit(main())
