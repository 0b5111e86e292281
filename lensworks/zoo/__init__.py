"""Bundled demo models (trained by lensworks itself), their recipes, the stdlib text corpus and
the built-in example prompts (:mod:`lensworks.zoo.prompts`).

``induction-2l`` and ``char-mlp`` are checkpoints in lensworks' own format (recipes in
:mod:`lensworks.zoo.recipes`); ``bpe-llama`` is a Hugging Face ``LlamaForCausalLM`` directory
with a byte-level BPE tokenizer (recipe in :mod:`lensworks.zoo.bpe`), loaded like any user's
Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Any

import torch

from lensworks.model import HookedTransformer, LensworksError, load_model
from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

__all__ = ["names", "load", "path", "corpus", "describe", "BUILTIN_POSITIVE", "BUILTIN_NEGATIVE"]

#: The bundled models, in a fixed order.
_NAMES = ("induction-2l", "char-mlp", "bpe-llama")

_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"

#: Standard-library source files that make up :func:`corpus`, relative to the stdlib folder.
#: Large modules whose text changes little between Python 3.10 and 3.13, in sorted order.
#: A file missing on this interpreter is skipped (``pathlib`` became a package in 3.13,
#: so both spellings are listed).
CORPUS_FILES = (
    "argparse.py",
    "ast.py",
    "calendar.py",
    "collections/__init__.py",
    "configparser.py",
    "contextlib.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "gettext.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "logging/__init__.py",
    "optparse.py",
    "pathlib.py",
    "pathlib/__init__.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "tempfile.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "traceback.py",
    "typing.py",
    "weakref.py",
)

#: The characters :func:`corpus` may contain: newline and printable ASCII (space to ``~``).
#: ``char-mlp``'s vocabulary is ``["<bos>", "\n", " ", "!", ..., "~"]``.
CORPUS_CHARS = "\n" + "".join(chr(i) for i in range(32, 127))

#: Replacement for characters outside :data:`CORPUS_CHARS` (after tabs and carriage returns
#: are handled): non-ASCII letters, form feeds, etc.
CORPUS_REPLACEMENT = "?"

_ALLOWED = frozenset(CORPUS_CHARS)


def names() -> list[str]:
    """Names of the bundled demo models.

    Returns:
        ``["induction-2l", "char-mlp", "bpe-llama"]``.

    Example:
        >>> names()
        ['induction-2l', 'char-mlp', 'bpe-llama']
    """
    return list(_NAMES)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in _NAMES:
        raise LensworksError(f"unknown zoo model {name!r}; the bundled models are {list(_NAMES)}")
    return name


def path(name: str) -> Path:
    """The directory holding a bundled checkpoint.

    ``induction-2l`` and ``char-mlp``: ``config.json``, ``model.safetensors``, ``vocab.json``,
    ``recipe.json`` (lensworks' format). ``bpe-llama``: a Hugging Face directory
    (``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``) plus ``recipe.json``.

    Args:
        name: One of :func:`names`.

    Returns:
        The checkpoint directory inside the installed package.

    Example:
        >>> path("char-mlp").name
        'char-mlp'
    """
    return _CHECKPOINTS / _check_name(name)


def load(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> HookedTransformer:
    """Load a bundled demo model, offline.

    Args:
        name: One of :func:`names`.
        device: Where to put the weights (default CPU).
        dtype: Floating dtype (default float32).

    Returns:
        The model in eval mode, with a tokenizer over its stored vocabulary.

    Example:
        >>> model = load("induction-2l")
        >>> model.cfg.n_layers
        2
    """
    directory = path(name)
    if not (directory / "model.safetensors").is_file():
        raise LensworksError(
            f"the bundled checkpoint {name!r} is missing at {directory}; "
            f"retrain it with `python -m lensworks.zoo train {name} --out {directory}`"
        )
    return load_model(directory, device=device, dtype=dtype)


def describe(name: str) -> dict[str, Any]:
    """What a bundled model is and how it was made: its recipe, data, final loss, what it learned.

    Args:
        name: One of :func:`names`.

    Returns:
        A JSON-ready dict with keys ``name``, ``summary``, ``hyper_parameters``,
        ``training_data``, ``final_loss``, ``metrics`` (measured after training),
        ``learned``, ``train_time_s``, ``torch_version`` and ``retrain``.

    Example:
        >>> describe("induction-2l")["hyper_parameters"]["n_layers"]
        2
    """
    recipe = _recipe(_check_name(name))
    info: dict[str, Any] = {
        "name": name,
        "summary": recipe.summary,
        "hyper_parameters": recipe.hyper_parameters(),
        "training_data": recipe.training_data,
        "learned": recipe.learned,
        "retrain": f"python -m lensworks.zoo train {name} --out DIR",
        "final_loss": None,
        "metrics": {},
        "train_time_s": None,
        "torch_version": None,
    }
    recipe_file = path(name) / "recipe.json"
    if recipe_file.is_file():
        stored = json.loads(recipe_file.read_text())
        for key in ("final_loss", "metrics", "train_time_s", "torch_version", "steps"):
            if key in stored:
                info[key] = stored[key]
        if "hyper_parameters" in stored:
            info["hyper_parameters"] = stored["hyper_parameters"]
    return info


def _recipe(name: str) -> Any:
    """The recipe object of a bundled model (``recipes.Recipe`` or ``bpe.SubwordRecipe``)."""
    from lensworks.zoo import bpe, recipes

    return recipes.RECIPES[name] if name in recipes.RECIPES else bpe.RECIPES[name]


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    if all(c in _ALLOWED for c in text):
        return text
    return "".join(c if c in _ALLOWED else CORPUS_REPLACEMENT for c in text)


def corpus(n_bytes: int | None = 1_000_000) -> str:
    """Deterministic text found on every machine: Python standard-library source code.

    The files in :data:`CORPUS_FILES` (found under ``sysconfig.get_paths()["stdlib"]``,
    missing ones skipped) are read as UTF-8, each preceded by a header line
    ``# ===== file: <relative path> =====``, and concatenated in that sorted order.
    Characters are mapped onto ``char-mlp``'s vocabulary: ``\\r\\n`` and ``\\r`` become
    ``\\n``, a tab becomes four spaces, and any other character that is not newline or
    printable ASCII becomes ``"?"``. The result is then cut to ``n_bytes`` characters (one
    byte each, as all are ASCII). On CPython 3.11 the full text is about 1.6 MB; the
    first 1,000,000 characters trained ``char-mlp`` and the text after them is held out.

    Args:
        n_bytes: How many characters to return; ``None`` for all of them.

    Returns:
        The text, ASCII only.

    Example:
        >>> text = corpus(1000)
        >>> len(text), text.splitlines()[0]
        (1000, '# ===== file: argparse.py =====')
    """
    if n_bytes is not None and (not isinstance(n_bytes, int) or isinstance(n_bytes, bool) or n_bytes < 0):
        raise LensworksError(f"n_bytes must be a non-negative int or None, got {n_bytes!r}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for rel in CORPUS_FILES:
        file = stdlib / rel
        if not file.is_file():
            continue
        raw = file.read_text(encoding="utf-8", errors="replace")
        part = _clean(f"# ===== file: {rel} =====\n{raw}")
        if not part.endswith("\n"):
            part += "\n"
        parts.append(part)
        total += len(part)
        if n_bytes is not None and total >= n_bytes:
            break
    if not parts:
        raise LensworksError(f"no corpus files found under the standard library at {stdlib} (looked for {CORPUS_FILES[:3]}...)")
    text = "".join(parts)
    return text if n_bytes is None else text[:n_bytes]

