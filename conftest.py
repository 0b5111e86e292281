"""The namespace the library's docstring examples run in (``pytest --doctest-modules lensworks``).

This file sits at the repository root, outside the ``lensworks`` package, so it is never
installed or imported by users; pytest loads it for the test suite too, where it does nothing
(no import of lensworks or torch happens until a doctest runs).

Every example sees these names, as if the reader had typed them first:

- ``torch``;
- ``zoo``: :mod:`lensworks.zoo` whose ``load`` keeps each bundled model once per session
  (analyses never change a model, and loading the same checkpoint again costs up to 0.7 s
  under TransformerLens 4);
- ``model``: ``zoo.load("induction-2l")``, the 2-layer attention-only demo model with induction
  heads (a ``HookedTransformer`` under TransformerLens 3, a ``TransformerBridge`` under 4).

Each example runs in a fresh temporary directory, so examples that write files
(``"out/report.html"``) leave nothing in the checkout. Hub downloads are switched off.

Examples of features TransformerLens 4 removed are skipped under that line, with the reason, by
:data:`TL3_ONLY`; every other example runs under both lines.
"""

from __future__ import annotations

import functools
import os
import types

import pytest

#: Doctests (``module.qualname``) that need TransformerLens 3, and why. Under TransformerLens 4
#: they are reported as skipped with this reason.
TL3_ONLY = {
    "lensworks.zoo.recipes.train": "training a zoo model builds a HookedTransformer, which TransformerLens 4 removed",
    "lensworks.zoo.recipes.train_and_save": "training a zoo model builds a HookedTransformer, which TransformerLens 4 "
                                            "removed",
    "lensworks.model._hf.convert_weights": "TransformerLens 3's weight converters and HookedTransformerConfig; "
                                           "under 4 a Hugging Face directory loads through TransformerBridge",
    "lensworks.model._hf.read_converted": "TransformerLens 3's weight converters and HookedTransformerConfig; "
                                          "under 4 transformers reads a Hugging Face directory",
    "lensworks.model._process.load_and_process": "TransformerLens 3's weight processing of a HookedTransformer",
    "lensworks.model._save.save_model": "save_model writes TransformerLens 3 checkpoints (a TransformerBridge is "
                                        "saved with its Hugging Face model's save_pretrained)",
    "lensworks.geometry._window_forward.prefix_sharing_supported": "prefix sharing runs on HookedTransformer's "
                                                                   "key-value cache; a TransformerBridge answers False",
}


@functools.lru_cache(maxsize=None)
def _doctest_globals() -> dict:
    import torch

    from lensworks import zoo as real_zoo

    load = functools.lru_cache(maxsize=None)(real_zoo.load)
    zoo = types.SimpleNamespace(**{name: getattr(real_zoo, name) for name in real_zoo.__all__})
    zoo.load = load
    zoo.__doc__ = real_zoo.__doc__
    return {"torch": torch, "zoo": zoo, "model": load("induction-2l")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the :data:`TL3_ONLY` doctests under TransformerLens 4, saying why."""
    doctests = [item for item in items if type(item).__name__ == "DoctestItem"]
    if not doctests:
        return
    from lensworks.model import TL_MAJOR

    if TL_MAJOR < 4:
        return
    for item in doctests:
        reason = TL3_ONLY.get(item.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"TransformerLens 3 only: {reason}"))


@pytest.fixture(autouse=True)
def _lensworks_doctest_namespace(request: pytest.FixtureRequest) -> None:
    """Fill ``doctest_namespace`` and move into a temporary directory, for doctests only."""
    if type(request.node).__name__ != "DoctestItem":
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    request.getfixturevalue("doctest_namespace").update(_doctest_globals())
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
