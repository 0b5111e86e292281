"""The API reference builds without a warning and shows every public name.

``mkdocs build --strict`` (mkdocs.yml, docs/api/) fails on any warning: a docstring griffe cannot
read (a documented parameter the signature lacks, a missing type), a broken link, a page missing
from the navigation. Then each subpackage's page must hold an entry for every name in its
``__all__``: the promise is "every public function and result class", so a name added to an
``__all__`` without documentation, or a new subpackage without a page, fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lensworks

ROOT = Path(__file__).resolve().parent.parent
#: docs/api page -> the module whose ``__all__`` it documents.
PAGES = {
    "lensworks": "lensworks",
    "model": "lensworks.model",
    "circuits": "lensworks.circuits",
    "geometry": "lensworks.geometry",
    "probes": "lensworks.probes",
    "causal": "lensworks.causal",
    "report": "lensworks.report",
    "zoo": "lensworks.zoo",
    "plotting": "lensworks.plotting",
    "cli": "lensworks.cli",
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings[python] are not installed (pip install -e '.[dev]' installs them)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_every_public_subpackage_has_a_page():
    assert set(PAGES) == {"lensworks", *lensworks._SUBPACKAGES}
    assert {p.stem for p in (ROOT / "docs" / "api").glob("*.md")} == set(PAGES) | {"index"}
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in [*PAGES, "index"]:
        assert f"api/{page}.md" in nav, f"docs/api/{page}.md is not in mkdocs.yml's nav"


def test_the_api_pages_hold_no_python_blocks():
    # tests/test_docs.py runs the Python blocks of docs/*.md only; the examples on these pages come
    # from the docstrings and run under `pytest --doctest-modules lensworks`.
    for page in (ROOT / "docs" / "api").glob("*.md"):
        assert "```python" not in page.read_text(encoding="utf-8"), page.name


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_name_in_all_is_documented(site, page):
    module = PAGES[page]
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="([^"]+)"', html))
    names = importlib.import_module(module).__all__
    if page == "lensworks":
        # Lazy names, rendered from the module that defines them under a "lensworks.NAME" heading.
        missing = [n for n in names if not any(a.rsplit(".", 1)[-1] == n for a in anchors)
                   or f"lensworks.{n}" not in html]
    else:
        missing = [n for n in names if f"{module}.{n}" not in anchors]
    assert not missing, f"docs/api/{page}.md renders no entry for {missing} of {module}.__all__"


def test_result_classes_show_their_members(site):
    html = (site / "api" / "circuits" / "index.html").read_text(encoding="utf-8")
    for member in ("CompositionScores.scores", "CompositionScores.figure", "CompositionScores.to_frame",
                   "InductionReport.summary"):
        assert f'id="lensworks.circuits.{member}"' in html, member


def test_the_cli_page_lists_every_command(site):
    from lensworks.cli import _COMMANDS

    html = (site / "api" / "cli" / "index.html").read_text(encoding="utf-8")
    missing = [c for c in _COMMANDS if f"<code>{c}</code>" not in html]
    assert not missing, f"docs/api/cli.md does not list the commands {missing}"
