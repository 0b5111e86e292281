"""What the subcommands share: the default models, the shared options, loading, writing, tables.

Every option more than one command takes is declared here once (:data:`SHARED_OPTIONS` and
:func:`add_model_argument`), and every command's default model is named here once
(:data:`DEFAULT_MODEL`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "DEFAULT_MODEL",
    "SHARED_OPTIONS",
    "default_model",
    "add_model_argument",
    "add_option",
    "add_outputs",
    "model_from_args",
    "read_lines",
    "read_text_file",
    "records",
    "write_outputs",
    "format_table",
]

#: The bundled model each command reads when no CHECKPOINT is given.
DEFAULT_MODEL: dict[str, str] = {
    "heads": "induction-2l",
    "geometry": "char-mlp",
    "neighbours": "char-mlp",
    "probes": "char-mlp",
    "patch": "induction-2l",
    "report": "char-mlp",
}

#: Read instead of the default when the default's weights are not bundled. Only the report has
#: one: every report section that applies runs on the attention-only demo too.
_FALLBACK_MODEL: dict[str, str] = {"report": "induction-2l"}

def _number(kind: type, lo: float | None, what: str):
    """An argparse ``type=`` that reads a ``kind`` and refuses NaN, inf and values below ``lo``,
    so a bad number is an argument error before torch is even imported."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: argparse types: a positive integer, an integer of at least 2 (4), a non-negative integer, a finite float.
positive_int = _number(int, 1, "a positive integer")
at_least_two = _number(int, 2, "an integer of at least 2")
at_least_four = _number(int, 4, "an integer of at least 4")
non_negative_int = _number(int, 0, "a non-negative integer")
finite_float = _number(float, None, "a finite number")


def text_file(text: str) -> str:
    """An argparse ``type=`` for an input file: it must exist and be a file (not a directory)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; expected a text file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    return text


#: Options several commands take: flag -> argparse keywords. A command adds one with
#: :func:`add_option`, overriding the help text or the default where its own differ.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--seed": {"type": non_negative_int, "default": 0},
    "--batch-size": {"type": positive_int},
    "--json": {"metavar": "PATH", "default": None},
    "--html": {"metavar": "PATH", "default": None},
}

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float64"}


def default_model(command: str) -> str:
    """The bundled model ``command`` reads when no CHECKPOINT is given.

    :data:`DEFAULT_MODEL` names it; the report falls back to ``"induction-2l"`` when
    ``char-mlp``'s weights are not bundled.

    Args:
        command: A subcommand name, e.g. ``"heads"``.

    Returns:
        A zoo name.

    Example:
        >>> default_model("heads")
        'induction-2l'
        >>> default_model("report") in ("char-mlp", "induction-2l")
        True
    """
    name = DEFAULT_MODEL[command]
    fallback = _FALLBACK_MODEL.get(command)
    if fallback is None:
        return name
    try:
        from lensworks import zoo

        if (zoo.path(name) / "model.safetensors").is_file():
            return name
    except Exception:  # zoo missing or broken: fall back to the attention-only demo
        pass
    return fallback


def add_option(parser: argparse.ArgumentParser, flag: str, **overrides: Any) -> None:
    """Add one of :data:`SHARED_OPTIONS` to ``parser``.

    Args:
        parser: A subcommand's parser.
        flag: A key of :data:`SHARED_OPTIONS`, e.g. ``"--seed"``.
        **overrides: argparse keywords that replace the shared ones (``default``, ``help``).

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_option(p, "--batch-size", default=32)
        >>> p.parse_args([]).batch_size
        32
    """
    parser.add_argument(flag, **{**SHARED_OPTIONS[flag], **overrides})


def add_outputs(parser: argparse.ArgumentParser, json_help: str | None = None, html_help: str | None = None) -> None:
    """Add ``--json PATH`` and ``--html PATH`` (written by :func:`write_outputs`).

    Args:
        parser: A subcommand's parser.
        json_help: Help text of ``--json``.
        html_help: Help text of ``--html``.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_outputs(p, "write the numbers as JSON")
        >>> p.parse_args(["--json", "o.json"]).json
        'o.json'
    """
    add_option(parser, "--json", help=json_help)
    add_option(parser, "--html", help=html_help)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """Add the optional positional CHECKPOINT (bundled demo when absent), ``--device``, ``--dtype``
    and ``--no-processing``.

    Args:
        parser: A subcommand's parser.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_model_argument(p)
        >>> p.parse_args(["char-mlp", "--dtype", "float64"]).dtype
        'float64'
    """
    parser.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint directory, .pt/.pth file, zoo name or pretrained name (default: bundled demo)",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="load the weights in this precision (default float32)")
    parser.add_argument("--no-processing", action="store_true",
                        help="load a Hugging Face checkpoint without folding LayerNorm or centring weights")
    parser.add_argument("--vocab", default=None, metavar="FILE",
                        help="the vocabulary, for checkpoints that store none (\"Let's build GPT\" state dicts) or to "
                             "override the stored one: the training text (its sorted characters), a nanoGPT meta.pkl, "
                             "a vocab.json or a tokenizer directory")
    parser.add_argument("--revision", default=None, metavar="NAME",
                        help="one of several checkpoints in the CHECKPOINT directory: its subfolder NAME "
                             "(e.g. step1000), or a Hugging Face cache folder's refs/NAME")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
                        help="split a model too big for one GPU over the visible devices (TransformerLens 4, Hugging "
                             "Face directories; see docs/distributed.md)")
    parser.add_argument("--n-devices", type=int, default=None, metavar="N",
                        help="split the model's layers over N CUDA devices")


def model_from_args(args: argparse.Namespace) -> tuple[Any, str]:
    """Load ``args.checkpoint``, a bundled zoo name, or the command's default model when none was given.

    Args:
        args: Parsed arguments of a subcommand (``command``, ``checkpoint``, ``device`` and the
            optional ``dtype``/``no_processing``).

    Returns:
        ``(model, name)``: the loaded model and the name it was asked for.

    Example:
        >>> args = argparse.Namespace(command="heads", checkpoint=None, device="cpu")
        >>> model, name = model_from_args(args)
        >>> name, model.cfg.n_layers
        ('induction-2l', 2)
    """
    from lensworks.model import load_model

    import torch

    name = args.checkpoint or default_model(args.command)
    source, said = resolve_source(name)
    kwargs = {}
    if getattr(args, "dtype", None):
        kwargs["dtype"] = getattr(torch, _DTYPES[args.dtype])
    if getattr(args, "no_processing", False):
        kwargs.update(fold_ln=False, center_writing_weights=False, center_unembed=False)
    if getattr(args, "vocab", None):
        kwargs["vocab"] = args.vocab
    if getattr(args, "revision", None):
        kwargs["revision"] = args.revision
    for option in ("device_map", "n_devices"):
        if getattr(args, option, None) is not None:
            kwargs[option] = getattr(args, option)
    model = load_model(source, device=args.device, **kwargs)
    from lensworks._dist import is_main

    if said and is_main():  # the name could mean a local path or a bundled model: say which
        print(f"lensworks {args.command}: {said}", file=sys.stderr)
    return model, name


def resolve_source(name: str) -> tuple[Any, str]:
    """What a CHECKPOINT argument names: a local path always wins over a bundled demo model of
    the same spelling, as in ``load_model``. The line says which one, when the name is a zoo
    name (empty otherwise: a path means itself).

    Example:
        >>> resolve_source("char-mlp")[1]  # no local file of that name
        'model: bundled demo model char-mlp'
    """
    from lensworks import zoo

    local = Path(name).expanduser()
    ambiguous = name in zoo.names()
    if local.exists():
        kind = "directory" if local.is_dir() else "file"
        return local, f"model: local {kind} {local.resolve()} (not the bundled demo model {name})" if ambiguous else ""
    if ambiguous:
        return zoo.path(name), f"model: bundled demo model {name}"
    return name, ""


def read_text_file(path: str, what: str) -> str:
    """The whole of a UTF-8 text file named by option ``--what``.

    Raises:
        LensworksError: The file is missing or is not UTF-8 (one line naming the byte and its line).

    Example:
        >>> n_chars = Path("prompts.txt").write_text("first prompt\\nsecond prompt\\n", encoding="utf-8")
        >>> read_text_file("prompts.txt", "prompts")
        'first prompt\\nsecond prompt\\n'
    """
    from lensworks.model import LensworksError

    p = Path(path)
    if p.is_dir():
        raise LensworksError(f"--{what}: {path!r} is a directory; expected a text file")
    if not p.is_file():
        raise LensworksError(f"--{what}: no such file {path!r}")
    try:
        raw = p.read_bytes()
    except PermissionError:
        raise LensworksError(f"--{what}: {path!r}: permission denied") from None
    from lensworks._text import decode_utf8

    return decode_utf8(raw, f"--{what} {path!r}")


def read_lines(path: str | None, what: str) -> list[str] | None:
    """The non-empty lines of a prompt file (one prompt per line); ``None`` when ``path`` is.

    Args:
        path: The file, or ``None``.
        what: The option's name without dashes, for error messages (``"positive"``).

    Returns:
        At least two lines, without their line endings.

    Raises:
        LensworksError: The file is missing, is not UTF-8, or has fewer than two non-empty lines.

    Example:
        >>> read_lines(None, "positive") is None
        True
    """
    from lensworks.model import LensworksError

    if path is None:
        return None
    content = read_text_file(path, what)
    lines = [line.rstrip("\r\n") for line in content.splitlines()]
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2:
        raise LensworksError(f"--{what}: {path!r} has {len(lines)} non-empty lines; need at least 2 (one prompt per line)")
    return lines


def fit_fallback(model: Any, text: str | list[str], what: str) -> Any:
    """Built-in fallback text (or lines) with the characters the model's vocabulary lacks
    dropped, saying how many; lines left empty are dropped. A user's own text is never changed:
    it goes through the analyses' own checks, which refuse unknown characters by name."""
    from lensworks.model import LensworksError, encodable_part

    lines = [text] if isinstance(text, str) else list(text)
    kept, dropped = [], 0
    for line in lines:
        part, n = encodable_part(model, line, what=what)
        dropped += n
        if part.strip():
            kept.append(part)
    if dropped:
        print(f"{what}: dropped {dropped:,} characters of the built-in fallback text that this model's vocabulary lacks")
    if not kept:
        raise LensworksError(f"{what}: this model's vocabulary encodes none of the built-in fallback text; "
                             "pass your own text")
    return kept[0] if isinstance(text, str) else kept


def records(frame: Any) -> list[dict[str, Any]]:
    """A pandas frame's rows as JSON-ready dicts.

    Args:
        frame: A ``pandas.DataFrame``.

    Returns:
        One dict per row, with numpy values turned into Python ones.

    Example:
        >>> import pandas as pd
        >>> records(pd.DataFrame({"a": [1]}))
        [{'a': 1}]
    """
    from lensworks._results import to_jsonable

    return to_jsonable(frame.to_dict(orient="records"))


def write_outputs(args: argparse.Namespace, payload: dict[str, Any], figures: Sequence[Any], title: str) -> None:
    """Write ``--json`` (payload) and ``--html`` (all figures on one self-contained page) with
    :func:`lensworks.write`, whatever the paths' suffixes.

    Args:
        args: Parsed arguments; ``json``/``html`` are the paths (absent or ``None``: not written).
        payload: Name -> result or JSON-ready value (a result is written as its ``to_dict()``
            with its type name).
        figures: Results or plotly figures for the HTML page, in order.
        title: The HTML page's title.

    Example:
        >>> write_outputs(argparse.Namespace(json=None, html=None), {}, [], "t")
    """
    from lensworks._dist import is_main

    if not is_main():  # under torchrun only rank 0 writes
        return
    if getattr(args, "json", None) or getattr(args, "html", None):
        from lensworks._output import write

        if getattr(args, "json", None):
            print(f"wrote {write(payload, args.json, 'json')}")
        if getattr(args, "html", None):
            print(f"wrote {write(list(figures), args.html, 'html', title=title)}")


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table.

    Args:
        rows: The cells, row by row; floats are printed with three decimals.
        header: Column names.

    Returns:
        The table, lines joined by newlines.

    Example:
        >>> print(format_table([("L1H2", 0.9)], ["head", "score"]))
        head  score
        ----  -----
        L1H2  0.900
    """
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
