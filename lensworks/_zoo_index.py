"""Where the bundled demo checkpoints are, importing nothing of lensworks: ``load_model`` resolves
zoo names through this module, so the model package never imports the zoo (which imports it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ZOO_NAMES", "ZOO_CHECKPOINTS", "ZOO_TRAINED_ON_CORPUS", "zoo_checkpoint", "name_hint"]

#: The bundled demo models, in the order the docs list them.
ZOO_NAMES = ("induction-2l", "char-mlp", "bpe-llama")
#: The demo models trained on the first 1,000,000 characters of ``lensworks.zoo.corpus()``: the text
#: after those is held-out text of their own kind, not a fallback.
ZOO_TRAINED_ON_CORPUS = ("char-mlp", "bpe-llama")
#: The directory holding one sub-directory per bundled checkpoint.
ZOO_CHECKPOINTS = Path(__file__).resolve().parent / "zoo" / "checkpoints"


def zoo_checkpoint(name: str) -> Path | None:
    """The checkpoint directory of a bundled model, or None when ``name`` is not one.

    Example:
        >>> zoo_checkpoint("char-mlp").name, zoo_checkpoint("gpt2")
        ('char-mlp', None)
    """
    return ZOO_CHECKPOINTS / name if isinstance(name, str) and name in ZOO_NAMES else None


def name_hint(name: str, known: "list[str] | tuple[str, ...]" = ()) -> str:
    """``"; did you mean 'x'?"`` for a mistyped model name (the zoo's names and ``known``), or "".

    Example:
        >>> name_hint("induction2l"), name_hint("pythia-70m")
        ("; did you mean 'induction-2l'?", '')
    """
    import difflib

    close = difflib.get_close_matches(name, [*ZOO_NAMES, *known], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
