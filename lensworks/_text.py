"""Decoding text files strictly: UTF-8 or a one-line refusal naming the byte and its line. Imports
nothing heavy, so the command line and the loaders share it."""

from __future__ import annotations

from lensworks.errors import LensworksError

__all__ = ["decode_utf8"]


def decode_utf8(raw: bytes, label: str) -> str:
    """``raw`` decoded as UTF-8, or a LensworksError ``"{label} is not UTF-8 text: byte 0x.. on
    line N ..."``; never decoded with replacement characters.

    Example:
        >>> decode_utf8("café".encode(), "--text 'a.txt'")
        'café'
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LensworksError(f"{label} is not UTF-8 text: byte {raw[exc.start]:#04x} on line {line} cannot be "
                             "decoded; save it as UTF-8") from None
