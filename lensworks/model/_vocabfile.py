"""Vocabularies that live outside a checkpoint: nanoGPT's ``meta.pkl``, a training corpus, a
list of characters, a ``vocab.json``, or a directory of Hugging Face tokenizer files.

``meta.pkl`` is a pickle, so it is read by an unpickler that builds only dicts, lists, strings
and integers: no class is ever looked up, no code runs, and anything else is refused naming
the file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Sequence, Union

from lensworks._text import decode_utf8
from lensworks.model._core import LensworksError

__all__ = ["VocabSource", "read_meta_pkl", "read_text", "read_json", "vocab_from_source", "chars_of_corpus"]

#: What ``load_model(vocab=...)`` accepts: token strings in id order, or a path to a file
#: (``meta.pkl``, ``vocab.json``, a UTF-8 training corpus) or a tokenizer directory.
VocabSource = Union[Sequence[str], str, os.PathLike]

#: Largest meta.pkl read (a character vocabulary takes a few kB).
_MAX_META_BYTES = 64 << 20
_ALLOWED = (dict, list, str, int)


def _open_bytes(path: Path, what: str) -> bytes:
    """A file's bytes, with a message that says why it cannot be read."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise LensworksError(f"{path}: is a directory; expected a {what} file") from None
    except PermissionError:
        raise LensworksError(f"{path}: permission denied (the {what} exists but cannot be read)") from None
    except FileNotFoundError:
        raise LensworksError(f"{path}: no such file (expected a {what})") from None
    except OSError as exc:
        raise LensworksError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_text(path: str | os.PathLike, what: str = "text") -> str:
    """The whole of a UTF-8 text file; a file in another encoding is refused naming the byte.

    Example:
        >>> n_bytes = Path("input.txt").write_text("First Citizen:", encoding="utf-8")
        >>> read_text("input.txt", "training corpus")[:5]
        'First'
    """
    path = Path(path)
    return decode_utf8(_open_bytes(path, what), f"{path}: the {what}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A parsed UTF-8 JSON file; a directory, an unreadable file, other encodings and bad JSON
    are refused in one line that names the file.

    Example:
        >>> read_json(zoo.path("char-mlp") / "config.json", "config")["n_layers"]
        4
    """
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LensworksError(f"{path}: the {what} is not valid JSON ({exc})") from None


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes build; every class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent reference")


def _check_plain(obj: Any, path: Path, depth: int = 0) -> None:
    if depth > 20:
        raise LensworksError(f"{path}: refused: nested deeper than a vocabulary file is")
    if type(obj) not in _ALLOWED:
        raise LensworksError(f"{path}: refused: a meta.pkl may hold only dicts, lists, strings and integers, "
                             f"this one holds a {type(obj).__name__}")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, path, depth + 1)
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v, path, depth + 1)


def read_meta_pkl(path: str | os.PathLike) -> list[str]:
    """The vocabulary of a nanoGPT ``meta.pkl`` (``stoi``/``itos``), read without running code.

    Only dicts, lists, strings and integers are built; a pickle that names any class or
    function (which an ordinary unpickler would import and call) is refused naming the file.

    Returns:
        Token strings in id order.

    Example:
        >>> meta = {"vocab_size": 3, "itos": {0: "\\n", 1: " ", 2: "!"}, "stoi": {"\\n": 0, " ": 1, "!": 2}}
        >>> n_bytes = Path("meta.pkl").write_bytes(pickle.dumps(meta))
        >>> read_meta_pkl("meta.pkl")
        ['\\n', ' ', '!']
    """
    path = Path(path)
    raw = _open_bytes(path, "meta.pkl")
    if len(raw) > _MAX_META_BYTES:
        raise LensworksError(f"{path}: {len(raw)} bytes is larger than a vocabulary file ({_MAX_META_BYTES} at most)")
    try:
        meta = _DataOnlyUnpickler(io.BytesIO(raw)).load()
    except LensworksError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from malformed bytes
        raise LensworksError(f"{path}: refused: not a plain-data pickle ({exc}); lensworks never runs code "
                             "from a file") from None
    _check_plain(meta, path)
    if not isinstance(meta, dict) or not ("itos" in meta or "stoi" in meta):
        keys = sorted(map(str, meta))[:8] if isinstance(meta, dict) else type(meta).__name__
        raise LensworksError(f"{path}: expected nanoGPT's meta.pkl, a dict with 'stoi' and 'itos', got {keys}")
    if "itos" in meta:
        itos = meta["itos"]
        ids = itos if isinstance(itos, dict) else dict(enumerate(itos))
    else:
        ids = {i: s for s, i in meta["stoi"].items()} if isinstance(meta["stoi"], dict) else {}
    vocab = _ordered(ids, path, "itos")
    if "stoi" in meta and "itos" in meta and isinstance(meta["stoi"], dict):
        if any(meta["stoi"].get(s) != i for i, s in enumerate(vocab)) or len(meta["stoi"]) != len(vocab):
            raise LensworksError(f"{path}: 'stoi' and 'itos' disagree (they must be inverse maps)")
    size = meta.get("vocab_size")
    if size is not None and size != len(vocab):
        raise LensworksError(f"{path}: vocab_size={size} but 'itos' has {len(vocab)} entries")
    return vocab


def _ordered(ids: dict[Any, Any], path: Path, what: str) -> list[str]:
    """Strings of an ``{id: string}`` map whose ids are exactly 0..n-1, in id order."""
    if not ids or sorted(ids) != list(range(len(ids))) or not all(isinstance(s, str) and s for s in ids.values()):
        raise LensworksError(f"{path}: '{what}' must map each id 0..n-1 exactly once to a non-empty string")
    return [ids[i] for i in range(len(ids))]


def chars_of_corpus(text: str) -> list[str]:
    """The character vocabulary a "Let's build GPT" / nanoGPT char script builds from its
    training text: every distinct character, sorted by code point.

    Example:
        >>> chars_of_corpus("hello\\n")
        ['\\n', 'e', 'h', 'l', 'o']
    """
    return sorted(set(text))


def vocab_from_source(source: VocabSource, *, where: str) -> Any:
    """Token strings (a list) or a Hugging Face tokenizer, from what a user passed as ``vocab``.

    - a list/tuple of strings: the vocabulary itself, in id order;
    - a path ending in ``.pkl``: nanoGPT's meta.pkl (read as plain data only);
    - a ``.json`` file: a list of token strings or a ``{token: id}`` map;
    - a directory: Hugging Face tokenizer files (``tokenizer.json``, or ``vocab.json`` with
      ``merges.txt``);
    - any other file: a UTF-8 training corpus, whose sorted distinct characters are the
      vocabulary (how "Let's build GPT" and nanoGPT's char data are built).

    Example:
        >>> vocab_from_source(["\\n", "a", "b"], where="vocab")
        ['\\n', 'a', 'b']
    """
    if isinstance(source, (list, tuple)):
        if not all(isinstance(s, str) for s in source):
            raise LensworksError(f"{where}: vocab must be a list of strings, got a {type(source).__name__} "
                                 "holding other things")
        return list(source)
    if not isinstance(source, (str, os.PathLike)):
        raise LensworksError(f"{where}: vocab must be a list of token strings or a path, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        return tokenizer_from_dir(path)
    if path.suffix == ".pkl":
        return read_meta_pkl(path)
    if path.suffix == ".json":
        return vocab_json(path)
    text = read_text(path, "training corpus")
    if not text:
        raise LensworksError(f"{path}: the training corpus is empty; expected the text the model was trained on")
    return chars_of_corpus(text)


def vocab_json(path: Path) -> list[str]:
    """A stored vocabulary: a list of token strings, or a ``{token: id}`` map with ids 0..n-1."""
    raw = read_json(path, "vocabulary")
    if isinstance(raw, dict):
        ids = sorted(raw.values()) if all(isinstance(i, int) and not isinstance(i, bool) for i in raw.values()) else None
        if ids != list(range(len(raw))):
            raise LensworksError(f"{path}: a {{token: id}} vocabulary must give each id 0..{len(raw) - 1} exactly once")
        raw = sorted(raw, key=raw.__getitem__)
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise LensworksError(f"{path}: expected a list of token strings or a {{token: id}} map")
    return raw


def has_tokenizer_files(path: Path) -> bool:
    """Whether a directory holds Hugging Face tokenizer files."""
    return (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())


def tokenizer_from_dir(path: Path) -> Any:
    """A Hugging Face tokenizer from local files only (``tokenizer.json``, or a GPT-2 style
    ``vocab.json`` + ``merges.txt`` pair); nothing is downloaded."""
    from lensworks.model._compat import quiet

    if not has_tokenizer_files(path):
        found = sorted(p.name for p in path.iterdir())[:10]
        raise LensworksError(f"{path}: no tokenizer files: expected tokenizer.json, or vocab.json with merges.txt "
                             f"(GPT-2's byte-level BPE); found {found}")
    try:
        with quiet():
            if (path / "tokenizer_config.json").is_file() or not (path / "merges.txt").is_file():
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            else:
                from transformers import GPT2TokenizerFast

                tok = GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise LensworksError(f"{path}: the tokenizer files could not be read ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if tok.pad_token is None and tok.eos_token is not None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token  # as GPT-2 is used everywhere (it has no padding token of its own)
    return tok


#: nanoGPT's GPT-2 vocabulary sizes: 50257 tokens, padded to 50304 for speed.
GPT2_VOCAB_SIZES = (50257, 50304)


def nanogpt_vocab(ckpt: Path, run: dict[str, Any], d_vocab: int) -> Any:
    """The vocabulary of a nanoGPT checkpoint, found where nanoGPT's own scripts keep it.

    1. ``meta.pkl`` beside ``ckpt.pt``;
    2. ``data/<dataset>/meta.pkl`` next to the out directory (nanoGPT's layout: ``out-x/ckpt.pt``
       beside ``data/x/meta.pkl``), or below the working directory, ``<dataset>`` from the
       checkpoint's ``config``;
    3. without a meta.pkl and with ``vocab_size`` 50257 or 50304, GPT-2's byte-level BPE from
       tokenizer files beside the checkpoint (``tokenizer.json``, or ``vocab.json`` +
       ``merges.txt``), else from the local Hugging Face cache (never downloaded).

    Returns token strings, a tokenizer, or None (with a warning saying where the files belong).
    """
    dataset = run.get("dataset") if isinstance(run.get("dataset"), str) else None
    places = [ckpt.parent / "meta.pkl"]
    if dataset:
        places += [ckpt.parent.parent / "data" / dataset / "meta.pkl", Path("data") / dataset / "meta.pkl"]
    for place in places:
        if place.is_file():
            return read_meta_pkl(place)
    if d_vocab in GPT2_VOCAB_SIZES:
        if has_tokenizer_files(ckpt.parent):
            return tokenizer_from_dir(ckpt.parent)
        cached = _cached_gpt2_tokenizer()
        if cached is not None:
            return cached
        warn_no_vocab(ckpt, f"no meta.pkl in {', '.join(str(p.parent) for p in places)}, and GPT-2's tokenizer files "
                      f"(tokenizer.json, or vocab.json and merges.txt) are neither in {ckpt.parent} nor in the local "
                      "Hugging Face cache (nothing is downloaded); put them beside the checkpoint or pass vocab=DIR")
        return None
    warn_no_vocab(ckpt, f"no meta.pkl in {', '.join(str(p.parent) for p in places)}")
    return None


def _cached_gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer from the local Hugging Face cache, or None; never downloads."""
    from lensworks.model._compat import quiet

    try:
        from transformers import AutoTokenizer

        with quiet():
            return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception:
        return None


def warn_no_vocab(path: Path, why: str) -> None:
    """Say that a checkpoint loads without a tokenizer, why, and how to give it one."""
    import warnings

    warnings.warn(f"{path}: loaded without a tokenizer ({why}); weight analyses work, text needs a vocabulary: "
                  "load_model(path, vocab=...) with the training text, a meta.pkl or a list of characters "
                  "(CLI: --vocab FILE)", UserWarning, stacklevel=4)
