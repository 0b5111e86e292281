"""The zoo's data, importing nothing else of the zoo: the standard-library corpus, the demo
models' vocabularies and their token helpers. ``recipes`` (training) and ``metrics``
(measurements) both read it, so neither imports the other for data."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from lensworks.errors import LensworksError

__all__ = ["CORPUS_FILES", "CORPUS_CHARS", "CORPUS_REPLACEMENT", "corpus", "INDUCTION_VOCAB", "CHAR_VOCAB",
           "repeated_tokens", "char_tokens", "char_heldout"]

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


_CONSONANTS = "bdfghjklmprstvz"
_VOWELS = "aeiou"
_CODAS = ("", "n")

#: ``induction-2l``'s vocabulary: ``"<bos>"`` then 150 syllables (one of 15 consonants, a
#: vowel, optionally a final "n": ``ba, ban, be, ben, ...``). "n" never starts a syllable, so
#: concatenated syllables split back into the same tokens under greedy longest match.
INDUCTION_VOCAB: list[str] = ["<bos>"] + [c + v + k for c in _CONSONANTS for v in _VOWELS for k in _CODAS]

#: ``char-mlp``'s vocabulary: ``"<bos>"``, newline, then printable ASCII from space to ``~``.
CHAR_VOCAB: list[str] = ["<bos>", "\n"] + [chr(i) for i in range(32, 127)]


def repeated_tokens(
    generator: torch.Generator, batch_size: int, n: int, n_tokens: int = len(INDUCTION_VOCAB) - 1
) -> Int[Tensor, "batch pos"]:
    """BOS then a random sequence of ``n`` non-BOS tokens, repeated once: ``[batch, 1 + 2n]``.

    Example:
        >>> repeated_tokens(torch.Generator().manual_seed(0), 3, 5).shape
        torch.Size([3, 11])
    """
    seq = torch.randint(1, n_tokens + 1, (batch_size, n), generator=generator)
    return torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), seq, seq], dim=1)


def char_tokens(text: str) -> Int[Tensor, "n_chars"]:
    """Token ids of ``text`` in ``char-mlp``'s vocabulary (no BOS). Raises on unknown characters.

    Example:
        >>> char_tokens("a\\n").tolist()
        [67, 1]
    """
    index = {c: i for i, c in enumerate(CHAR_VOCAB)}
    try:
        return torch.tensor([index[c] for c in text], dtype=torch.long)
    except KeyError as exc:
        raise LensworksError(f"character {exc.args[0]!r} is not in char-mlp's vocabulary (newline and printable ASCII)") from None


def char_heldout(n_chars: int = 100_000) -> str:
    """The held-out text for ``char-mlp``: corpus characters after the first 1,000,000.

    Example:
        >>> len(char_heldout(500))
        500
    """
    text = corpus(1_000_000 + n_chars)[1_000_000:]
    if len(text) < n_chars:
        raise LensworksError(f"the stdlib corpus has only {len(text)} held-out characters, {n_chars} asked for")
    return text
