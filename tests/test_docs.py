"""Every Python block in README.md and docs/*.md runs as written.

Blocks of one page run in order in one namespace, as a reader would paste them, in a temporary
working directory. A block that cannot run here (a path on the reader's machine, torchrun on
GPUs, the shape of an entry rather than code) is marked ```` ```python fragment ```` and says why in
its first line; every other block must run.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from lensworks.model import TL_MAJOR

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(info string, code) of every Python block of ``page``."""
    return [(m.group(1).strip(), m.group(2)) for m in BLOCK.finditer(page.read_text(encoding="utf-8"))]


def test_the_extractor_finds_blocks_and_fragments(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n```python\nx = 1\n```\n\n```python fragment\n# a path of yours\nload('~/x')\n```\n"
                    "```\nlensworks heads\n```\n")
    assert blocks(page) == [("", "x = 1\n"), ("fragment", "# a path of yours\nload('~/x')\n")]


def test_fragments_say_why():
    for page in PAGES:
        for info, code in blocks(page):
            if info == "fragment":
                assert code.lstrip().startswith("#"), f"{page.name}: a fragment must say why in its first line"
            else:
                assert info == "", f"{page.name}: unknown block marker {info!r}"


RUNNABLE = [p for p in PAGES if any(info == "" for info, _ in blocks(p))]


@pytest.mark.skipif(TL_MAJOR >= 4, reason="the pages' code is the same on both lines; run once to keep CI fast "
                                          "(every analysis is checked on TransformerLens 4 by the architecture tests)")
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    namespace: dict = {"__name__": "__docs__"}
    for i, (info, code) in enumerate(blocks(page)):
        if info == "fragment":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(code, f"{page.name}, python block {i + 1}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the failure message is the point
                pytest.fail(f"{page.name}, python block {i + 1} fails as written: {type(exc).__name__}: {exc}")
    assert os.getcwd() == str(tmp_path)
