"""The notebooks in docs/notebooks run from the first cell to the last, offline, in this venv (issue 14).

Each notebook is executed in a fresh kernel by ``docs/notebooks/run_notebooks.py`` (the same
code that stores them with ``--write``): ipykernel's ``python3`` kernel, which jupyter_client
starts with this interpreter, checked through the kernel's ``sys.prefix``. A cell that raises, or
runs longer than ``CELL_TIMEOUT`` seconds, fails the test with the cell's traceback. The stored
copies are checked too: executed (outputs present), small, and without plotly.js itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "docs" / "notebooks"
MAX_STORED_BYTES = 1_500_000


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOK_DIR / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
NOTEBOOKS = runner.notebooks()


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert "quickstart.ipynb" in names, f"docs/notebooks holds {sorted(names)}"
    assert len([n for n in names if n.startswith("seed-")]) >= 1, f"no seed notebook in {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = runner.execute(path)  # raises CellExecutionError naming the cell, or RuntimeError for a foreign kernel
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "some code cells did not run"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert runner.offline_problems(nb) == [], runner.offline_problems(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook(path: Path):
    size = path.stat().st_size
    assert size < MAX_STORED_BYTES, f"{path.name} is {size / 1e6:.2f} MB; store it with run_notebooks.py --write"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name} is not stored as one top-to-bottom run (execution counts {counts}); "
        "run docs/notebooks/run_notebooks.py --write " + path.name)
    assert any(c.outputs for c in code), f"{path.name} is stored without outputs"
    assert not any(runner.has_plotly_bundle(h) for h in runner.html_outputs(nb)), "plotly.js is stored in the file"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
