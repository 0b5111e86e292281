"""Saving: a model as a directory that :func:`load_model` reads back offline (TransformerLens
config, safetensors weights and the tokenizer), written file by file atomically, never over
a user's files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from lensworks.model import _hf
from lensworks.model._compat import check_model, is_bridge, quiet
from lensworks.model._core import HookedTransformer, LensworksError
from lensworks.model._io import atomic_path, check_writable, write_atomic
from lensworks.model._load import _CFG_FILE, _TOKENIZER_FILES, _VOCAB_FILE, _WEIGHTS_FILE
from lensworks.model._tlconfig import cfg_to_dict
from lensworks.model._tokens import VOCAB_TOKENIZER_NAME, model_vocab

__all__ = ["save_model"]


def save_model(model: HookedTransformer, path: str | Path, *, vocab: Sequence[str] | None = None,
               overwrite: bool = False) -> Path:
    """Write a model as a directory: ``config.json``, ``model.safetensors`` and its tokenizer.

    A vocabulary tokenizer (bundled character models) is stored as ``vocab.json``; a Hugging
    Face tokenizer is stored with its own files (``tokenizer.json``, ``tokenizer_config.json``),
    so the directory reloads offline with the same token ids.

    The directory must be new or empty: files already there (a tokenizer, merges, anything of
    the user's) are never replaced or deleted. ``overwrite=True`` replaces an earlier
    ``save_model`` directory, and only one that holds nothing but what ``save_model`` writes.

    Args:
        model: The model to save.
        path: Target directory (created).
        vocab: Token strings, one per id, to store alongside (overrides the tokenizer).
        overwrite: Replace a directory that an earlier ``save_model`` wrote.

    Returns:
        The directory.

    Example:
        >>> from lensworks import load_model
        >>> save_model(model, "ckpt")
        PosixPath('ckpt')
        >>> load_model("ckpt").cfg.d_model == model.cfg.d_model
        True
    """
    from safetensors.torch import save_file

    check_model(model)
    if is_bridge(model):
        raise LensworksError(
            "save_model writes TransformerLens 3 checkpoints; save a TransformerBridge's Hugging Face model with "
            "model.original_model.save_pretrained(dir) and its tokenizer with model.tokenizer.save_pretrained(dir)"
        )
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LensworksError(f"save_model needs a directory, but {path} is a file")
    _check_save_target(path, overwrite)
    check_writable(path / _CFG_FILE, what="checkpoint")
    cfg = cfg_to_dict(model.cfg)
    cfg.pop("tokenizer_name", None)  # the tokenizer travels as files, never as a hub name
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.endswith(("IGNORE", ".mask"))}
    tok = model.tokenizer
    if vocab is None and tok is not None and getattr(tok, "name_or_path", "") == VOCAB_TOKENIZER_NAME:
        vocab = model_vocab(model)
    # Every file goes to a temporary sibling and is renamed into place: a failed save leaves
    # the previous checkpoint readable, never a mix of half-written files.
    with atomic_path(path / _WEIGHTS_FILE) as tmp:
        save_file(sd, str(tmp))
    write_atomic(path / _CFG_FILE, json.dumps(cfg, indent=1, sort_keys=True))
    for stale in (_VOCAB_FILE, *_TOKENIZER_FILES, "special_tokens_map.json", "vocab.txt", "merges.txt"):
        (path / stale).unlink(missing_ok=True)
    if vocab is not None:
        write_atomic(path / _VOCAB_FILE, json.dumps(list(vocab)))
    elif tok is not None:
        with tempfile.TemporaryDirectory(dir=path, prefix=".tokenizer.") as staging:
            with quiet():
                tok.save_pretrained(staging)
            for f in Path(staging).iterdir():
                if f.name != "chat_template.jinja":  # a config-free tokenizer: nothing may shadow ours
                    os.replace(f, path / f.name)
    return path


#: Every file name save_model writes (a tokenizer's own files included).
_SAVED_FILES = {_CFG_FILE, _WEIGHTS_FILE, _VOCAB_FILE, *_TOKENIZER_FILES, "special_tokens_map.json", "vocab.txt",
                "merges.txt", "added_tokens.json"}


def _check_save_target(path: Path, overwrite: bool) -> None:
    """Refuse a directory holding anything save_model did not write; without ``overwrite``,
    any non-empty directory."""
    if not path.is_dir():
        return
    try:
        present = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise LensworksError(f"cannot list {path}: {exc.strerror or exc}") from None
    if not present:
        return
    if not overwrite:
        raise LensworksError(f"save_model: {path} already holds {present[:5]}{' ...' if len(present) > 5 else ''}; "
                             "save into a new or empty directory (overwrite=True replaces an earlier save_model "
                             "directory, never other files)")
    foreign = [n for n in present if n not in _SAVED_FILES]
    is_ours = (path / _CFG_FILE).is_file() and not _hf.is_hf_dir(path)
    if foreign or not is_ours:
        why = f"it holds files save_model does not write: {foreign[:5]}" if foreign else "it is not a save_model directory"
        raise LensworksError(f"save_model: will not overwrite {path}: {why}; choose a new or empty directory")
