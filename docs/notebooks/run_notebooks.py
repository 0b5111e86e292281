"""Execute the notebooks in docs/notebooks; with ``--write``, store them back with their outputs.

    .venv/bin/python docs/notebooks/run_notebooks.py            # run all, report the time of each
    .venv/bin/python docs/notebooks/run_notebooks.py --write    # ... and save the outputs
    .venv/bin/python docs/notebooks/run_notebooks.py --write quickstart.ipynb

``tests/test_notebooks.py`` runs the same :func:`execute` on every notebook, so a notebook that
stops running fails the tests. The kernel is ipykernel's built-in ``python3``, which
jupyter_client starts with the interpreter that runs this file (``sys.executable``); kernel specs
installed elsewhere are not consulted, and :func:`execute` checks that the kernel's ``sys.prefix``
is this interpreter's.

What is stored (``--write``): each figure's output keeps its plotly JSON
(``application/vnd.plotly.v1+json``, drawn offline by JupyterLab, Notebook 7 and VS Code) and
its HTML. The one output that carries plotly.js itself (4.8 MB, embedded once per notebook by
the ``notebook`` renderer, so a re-run notebook works offline in any Jupyter) is dropped from
the stored copy: with it every notebook would weigh about 5 MB. Timing metadata is not recorded,
so re-running changes only what the computation changed. (plotly's ``notebook`` renderer also
adds a MathJax ``<script src>`` from a CDN to each figure's HTML; MathJax only typesets LaTeX
labels, which these figures do not have, so offline the figures draw without it.)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent

#: Seconds one cell may run before the execution fails.
CELL_TIMEOUT = 180

#: Outputs larger than this (characters of HTML) that hold plotly.js are left out when stored.
_BUNDLE_MIN_CHARS = 1_000_000

#: Text that marks plotly.js loaded from a network (the ``notebook_connected`` renderer).
_NETWORK_PLOTLY = "cdn.plot.ly"

#: The random id plotly gives each figure's <div>.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_KERNEL_CHECK = "import sys\nprint(sys.prefix)"


def notebooks() -> list[Path]:
    """The notebooks of docs/notebooks, sorted by name."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def execute(path: Path, *, timeout: int = CELL_TIMEOUT, threads: int | None = 1) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel; return it with its outputs.

    The kernel runs in the notebook's folder, with ``threads`` torch/OpenMP threads (None: the
    default, one per core). One is the default because the demo models are tiny: on a CPU
    shared with other jobs, torch's thread pool then spends most of its time waiting (measured
    on 2 busy cores: 4 s instead of 0.1 s for one ``find_induction_heads``). A cell that raises
    stops the run with ``nbclient.exceptions.CellExecutionError`` (its traceback in the message). Before the
    notebook's own cells, one cell prints the kernel's ``sys.prefix``; it must be this
    interpreter's (the same virtual environment), else ``RuntimeError``. That cell is removed
    from the returned notebook, whose cells are numbered from 1 as in a top-to-bottom run.
    """
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_KERNEL_CHECK, id="kernel-check"))
    # Only ipykernel's own spec: a "python3" kernel.json elsewhere (user or system Jupyter) is ignored.
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, kernel_name="python3", timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    client.execute(env=env, cleanup_kc=True)  # cleanup_kc: shut the kernel down (we made its manager)
    check = nb.cells.pop(0)
    for cell in nb.cells:  # number the notebook's own cells from 1 again
        if cell.cell_type == "code" and cell.execution_count is not None:
            cell.execution_count -= 1
            for output in cell.outputs:
                if output.get("execution_count") is not None:
                    output["execution_count"] -= 1
    printed = "".join(o.get("text", "") for o in check.outputs if o.output_type == "stream").strip()
    if Path(printed).resolve() != Path(sys.prefix).resolve():
        raise RuntimeError(f"{path.name} ran in the kernel of {printed!r}, not of this interpreter ({sys.prefix!r})")
    return nb


def html_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """The ``text/html`` of every output of every code cell."""
    return [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]


def has_plotly_bundle(html: str) -> bool:
    """Whether an HTML output is the one that embeds plotly.js."""
    return len(html) >= _BUNDLE_MIN_CHARS and "window.Plotly = Plotly" in html


def has_figures(nb: nbformat.NotebookNode) -> bool:
    """Whether any output is a plotly figure."""
    return any("application/vnd.plotly.v1+json" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def offline_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Why the executed notebook's figures would not draw offline (empty when they would).

    Figures need plotly.js embedded exactly once (the ``notebook`` renderer's first output),
    and no output may load plotly.js from a network.
    """
    html = html_outputs(nb)
    problems = []
    n_bundles = sum(map(has_plotly_bundle, html))
    if has_figures(nb) and n_bundles != 1:
        problems.append(f"plotly.js is embedded {n_bundles} times, expected once "
                        "(set plotly.io.renderers.default = 'plotly_mimetype+notebook' in the first cell)")
    if any(_NETWORK_PLOTLY in h for h in html if not has_plotly_bundle(h)):
        problems.append("an output loads plotly.js from the network (the 'notebook_connected' renderer?)")
    return problems


def for_storage(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook as it is committed.

    The plotly.js output is dropped (see the module doc), consecutive pieces of one stream are
    joined (the kernel chunks them as it likes), and the random id plotly gives each figure's
    ``<div>`` becomes ``plotly-<cell>-<output>-<n>``: storing an unchanged notebook again
    changes nothing.
    """
    for c, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            if has_plotly_bundle(output.get("data", {}).get("text/html", "")):
                continue
            previous = outputs[-1] if outputs else None
            if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                    and previous.name == output.name):
                previous.text += output.text  # one stream output however the kernel chunked it
                continue
            outputs.append(output)
        cell.outputs = outputs
        for o, output in enumerate(cell.outputs):
            html = output.get("data", {}).get("text/html")
            if isinstance(html, str):
                for n, uuid in enumerate(dict.fromkeys(_UUID.findall(html))):
                    html = html.replace(uuid, f"plotly-{c}-{o}-{n}")
                output["data"]["text/html"] = html
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each kernel (0: torch's default)")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks with their outputs")
    args = parser.parse_args(argv)
    paths = [NOTEBOOK_DIR / n for n in args.names] if args.names else notebooks()
    total = 0.0
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, threads=args.threads or None)
        seconds = time.perf_counter() - start
        total += seconds
        if args.write:
            nbformat.write(for_storage(nb), path)
        size = path.stat().st_size / 1e6
        print(f"{path.name}: {seconds:.1f} s" + (f", stored ({size:.2f} MB)" if args.write else ""))
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
