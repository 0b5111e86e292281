"""What the package declares matches what it imports: every third-party module the library
imports (at any depth) is a declared runtime dependency or comes with one, nothing declared goes
unused, and the type marker ships."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import lensworks

ROOT = Path(lensworks.__file__).resolve().parent
PYPROJECT = ROOT.parent / "pyproject.toml"
#: Import name -> distribution name, where they differ.
DIST = {"sklearn": "scikit-learn", "transformer_lens": "transformer-lens", "yaml": "pyyaml"}
#: Installed with a declared dependency (transformer-lens brings transformers and tokenizers;
#: jaxtyping brings typing helpers), so not declared separately.
BROUGHT = {"transformers": "transformer-lens", "tokenizers": "transformer-lens", "huggingface_hub": "transformer-lens"}


def _declared() -> set[str]:
    with PYPROJECT.open("rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}


def _third_party_imports() -> set[str]:
    out = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for n in names:
                top = n.split(".")[0]
                if top != "lensworks" and top not in sys.stdlib_module_names:
                    out.add(top)
    return out


def test_every_import_is_declared_and_every_declaration_is_used():
    declared = _declared()
    used = _third_party_imports()
    missing = {m for m in used if DIST.get(m, m) not in declared and BROUGHT.get(m) not in declared}
    assert not missing, f"imported by lensworks but not in [project].dependencies: {sorted(missing)}"
    unused = {d for d in declared if d not in {DIST.get(m, m) for m in used}}
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_to_frame_needs_pandas_so_it_is_a_runtime_dependency():
    assert "pandas" in _declared() and "scikit-learn" not in _declared()


def test_the_type_marker_ships():
    assert (ROOT / "py.typed").is_file()
    with PYPROJECT.open("rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["lensworks"]
    assert "py.typed" in data
