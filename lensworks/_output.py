"""The one output layer: :func:`write` puts results in a file as JSON, an HTML page or CSV.

Results answer three questions and this module asks nothing else: ``to_dict()`` (JSON),
``figure()`` (HTML) and ``to_frame()`` (CSV). Each format is a renderer in :data:`FORMATS`,
picked by name or by the file's suffix (:data:`SUFFIXES`); every file is written atomically
(``lensworks.model._io.write_atomic``), so a failed write leaves the old file in place.

What ``results`` may be, and what each format makes of it:

========== ============================================ ================================ ==========================================
 format     one result ``r``                             a list ``[r1, r2]``              a mapping ``{"K": r1, "Q": r2}``
========== ============================================ ================================ ==========================================
 json       ``{"type": "CompositionScores", **to_dict}``  a JSON array of those            a JSON object of those, by name
 html       ``r.figure()`` on one offline page           every figure, in order           every figure, in order
 csv        ``r.to_frame()``                             the frames stacked, with a       the same, ``result`` naming the key
                                                         ``result`` column (type names)
========== ============================================ ================================ ==========================================

JSON also takes plain JSON-ready values in a mapping (the command line writes its model name
next to its results), and HTML takes plotly figures as they are.

To add a format: write ``_render_<name>(entries, shape, title) -> str | bytes`` and add it to
:data:`FORMATS` and its suffixes to :data:`SUFFIXES`; ``tests/test_output.py`` round-trips
every format in :data:`FORMATS`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal

from lensworks.errors import LensworksError

__all__ = ["write", "FORMATS", "SUFFIXES"]

Format = Literal["json", "html", "csv"]
#: What :func:`write` takes: one result, a list (or tuple) of results, or a mapping name -> result.
Results = Any

#: ``(name, item)`` pairs, in order; ``shape`` says how they came: "one", "list" or "mapping".
_Entries = list[tuple[str, Any]]


def _type_name(item: Any) -> str:
    return type(item).__name__


def _is_figure(item: Any) -> bool:
    """A plotly Figure (asked by its method, so plotly is not imported to check)."""
    return callable(getattr(item, "to_plotly_json", None)) and not callable(getattr(item, "figure", None))


def _is_result(item: Any) -> bool:
    """Something that answers the result questions (a :class:`~lensworks._results.Result`, or any
    object with ``to_dict``)."""
    return not isinstance(item, type) and callable(getattr(item, "to_dict", None)) and not _is_figure(item)


def _entries(results: Any) -> tuple[_Entries, str]:
    """``results`` as named entries, and its shape: names are the mapping's keys, or type names
    (``CompositionScores``, ``CompositionScores (2)``, ...) for a list."""
    if isinstance(results, (str, bytes, os.PathLike)):
        raise LensworksError(
            f"write() takes a result, a list of results or a mapping name -> result, got {type(results).__name__} "
            f"{str(results)[:60]!r} (is the path given first? the call is write(results, path))"
        )
    if isinstance(results, Mapping):
        entries, shape = [(str(k), v) for k, v in results.items()], "mapping"
    elif isinstance(results, (list, tuple)):
        entries, seen = [], {}
        for item in results:
            base = _type_name(item) if not _is_figure(item) else "figure"
            seen[base] = seen.get(base, 0) + 1
            entries.append((base if seen[base] == 1 else f"{base} ({seen[base]})", item))
        shape = "list"
    else:
        entries, shape = [(_type_name(results), results)], "one"
    if not entries:
        raise LensworksError("write() needs at least one result; got an empty collection")
    return entries, shape


# --------------------------------------------------------------------------- renderers


def _json_default(value: Any) -> Any:
    """numpy scalars (pandas frames hold them) as Python values; anything else is refused."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        v = item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    raise LensworksError(f"cannot write a {type(value).__name__} as JSON; expected results and JSON-ready values")


def _json_value(name: str, item: Any) -> Any:
    from lensworks._results import to_jsonable

    if _is_figure(item):
        raise LensworksError(f"{name!r}: JSON takes results, not a plotly figure; pass the result whose figure it is")
    if _is_result(item):
        d = to_jsonable(item.to_dict())
        if not isinstance(d, dict):
            raise LensworksError(f"{name!r}: {_type_name(item)}.to_dict() returned {type(d).__name__}; expected a dict")
        if "type" in d:
            raise LensworksError(f"{name!r}: {_type_name(item)}.to_dict() has a 'type' key, which JSON output reserves "
                                 "for the result's type name")
        return {"type": _type_name(item), **d}
    return to_jsonable(item)


def _render_json(entries: _Entries, shape: str, title: str) -> str:
    """JSON: each result's ``to_dict()`` with its type name; the file's shape follows ``results``'s."""
    values = [(name, _json_value(name, item)) for name, item in entries]
    data: Any
    if shape == "one":
        data = values[0][1]
    elif shape == "list":
        data = [v for _, v in values]
    else:
        data = dict(values)
    return json.dumps(data, indent=1, allow_nan=False, default=_json_default) + "\n"


def _render_html(entries: _Entries, shape: str, title: str) -> str:
    """HTML: every result's figure (or a figure as given) on one self-contained offline page."""
    from lensworks.plotting import figures_to_html

    figures = []
    for name, item in entries:
        if _is_figure(item):
            figures.append(item)
        elif callable(getattr(item, "figure", None)):
            figures.append(item.figure())
        else:
            raise LensworksError(f"{name!r}: HTML takes results (with figure()) or plotly figures, got "
                                 f"{_type_name(item)}")
    return figures_to_html(figures, title=title)


def _render_csv(entries: _Entries, shape: str, title: str) -> str:
    """CSV: each result's ``to_frame()``; several results are stacked with a ``result`` column
    naming each (its key in a mapping, its type name in a list)."""
    import pandas as pd

    frames = []
    for name, item in entries:
        if not callable(getattr(item, "to_frame", None)) or _is_figure(item):
            raise LensworksError(f"{name!r}: CSV takes results (with to_frame()), got {_type_name(item)}")
        frame = item.to_frame()
        if not isinstance(frame, pd.DataFrame):
            raise LensworksError(f"{name!r}: {_type_name(item)}.to_frame() returned {type(frame).__name__}; "
                                 "expected a pandas DataFrame")
        frames.append((name, frame))
    if shape == "one":
        return frames[0][1].to_csv(index=False)
    for name, frame in frames:
        if "result" in frame.columns:
            raise LensworksError(f"{name!r}: its frame has a 'result' column, which CSV output of several results "
                                 "uses to name each result; write it alone")
    stacked = pd.concat([f.assign(result=name)[["result", *f.columns]] for name, f in frames], ignore_index=True,
                        sort=False)
    return stacked.to_csv(index=False)


#: Output formats: name -> renderer ``(entries, shape, title) -> text``.
FORMATS: dict[str, Callable[[_Entries, str, str], str | bytes]] = {
    "json": _render_json,
    "html": _render_html,
    "csv": _render_csv,
}

#: File suffixes (lower case) -> format, for ``write(..., format=None)``.
SUFFIXES: dict[str, str] = {".json": "json", ".html": "html", ".htm": "html", ".csv": "csv"}


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        fmt = SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise LensworksError(
                f"cannot tell the output format of {str(path)!r} from its suffix {path.suffix!r}; expected one of "
                f"{', '.join(sorted(SUFFIXES))}, or pass format= one of {sorted(FORMATS)}"
            )
        return fmt
    if not isinstance(format, str) or format.lower() not in FORMATS:
        raise LensworksError(f"format must be one of {sorted(FORMATS)} or None (from the suffix), got {format!r}")
    return format.lower()


def write(
    results: Results,
    path: str | os.PathLike[str],
    format: Format | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Write results to ``path`` as JSON, an offline HTML page of their figures, or CSV.

    Args:
        results: One result, a list of results, or a mapping name -> result (the names label
            the JSON object's keys and the CSV's ``result`` column). JSON also takes plain
            JSON-ready values in a mapping; HTML also takes plotly figures.
        path: The file; its directory is made if missing. The file is replaced atomically.
        format: ``"json"``, ``"html"`` or ``"csv"``; ``None`` reads it from the suffix
            (``.json``, ``.html``/``.htm``, ``.csv``).
        title: The HTML page's title (default: the result's type name, or "lensworks results").

    Returns:
        The path written.

    Raises:
        LensworksError: An unknown format or suffix, no results, or an item the format cannot
            write (a figure in JSON, a plain value in HTML or CSV).

    Example:
        >>> import json, pathlib, tempfile
        >>> from lensworks.circuits import composition_scores
        >>> comp = composition_scores(model, "K", baseline_samples=20)
        >>> out = write({"K": comp}, pathlib.Path(tempfile.mkdtemp()) / "comp.json")
        >>> json.loads(out.read_text())["K"]["type"]
        'CompositionScores'
    """
    from lensworks.model._io import write_atomic

    entries, shape = _entries(results)
    if not isinstance(path, (str, os.PathLike)):
        raise LensworksError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    target = Path(path)
    fmt = _format_of(target, format)
    if title is None:
        title = f"lensworks: {entries[0][0]}" if shape == "one" else "lensworks results"
    return write_atomic(target, FORMATS[fmt](entries, shape, str(title)))
