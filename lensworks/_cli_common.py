"""Helpers shared by the subcommands: loading the model, writing JSON/HTML, printing tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_model_argument", "model_from_args", "write_outputs", "format_table"]


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """Add the optional positional CHECKPOINT (bundled demo model when absent) and --device."""
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


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "float64": "float64"}


def model_from_args(args: argparse.Namespace, default: str):
    """Load ``args.checkpoint``; a bundled zoo name, or ``default`` when none was given."""
    from lensworks import zoo
    from lensworks.model import load_model

    import torch

    name = args.checkpoint or default
    source = zoo.path(name) if name in zoo.names() else name
    kwargs = {}
    if getattr(args, "dtype", None):
        kwargs["dtype"] = getattr(torch, _DTYPES[args.dtype])
    if getattr(args, "no_processing", False):
        kwargs.update(fold_ln=False, center_writing_weights=False, center_unembed=False)
    return load_model(source, device=args.device, **kwargs), name


def write_outputs(args: argparse.Namespace, payload: dict[str, Any], figures: Sequence[Any], title: str) -> None:
    """Write ``--json`` (payload) and ``--html`` (all figures on one self-contained page), atomically."""
    from lensworks.model._io import write_atomic

    if getattr(args, "json", None):
        path = write_atomic(args.json, json.dumps(payload, indent=1))
        print(f"wrote {path}")
    if getattr(args, "html", None):
        from lensworks.plotting import figures_to_html

        path = write_atomic(args.html, figures_to_html(figures, title=title))
        print(f"wrote {path}")


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table.

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
