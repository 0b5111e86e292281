"""Bundled demo models (trained by lensworks itself), their recipes, the stdlib text corpus and
the built-in example prompts (:mod:`lensworks.zoo.prompts`).

``induction-2l`` and ``char-mlp`` are checkpoints in lensworks' own format (recipes in
:mod:`lensworks.zoo.recipes`); ``bpe-llama`` is a Hugging Face ``LlamaForCausalLM`` directory
with a byte-level BPE tokenizer (recipe in :mod:`lensworks.zoo.bpe`), loaded like any user's
Hugging Face checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lensworks._zoo_index import ZOO_CHECKPOINTS, ZOO_NAMES
from lensworks.model import HookedTransformer, LensworksError, load_model
from lensworks.zoo._data import CORPUS_CHARS, CORPUS_FILES, CORPUS_REPLACEMENT, corpus  # noqa: F401 (public names)
from lensworks.zoo.prompts import BUILTIN_NEGATIVE, BUILTIN_POSITIVE

__all__ = ["names", "load", "path", "corpus", "describe", "BUILTIN_POSITIVE", "BUILTIN_NEGATIVE"]

#: The bundled models, in a fixed order.
_NAMES = ZOO_NAMES

_CHECKPOINTS = ZOO_CHECKPOINTS



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
