"""One name for an attention head: :class:`HeadId`, spelt ``L{layer}H{head}`` everywhere.

Every label a result, a table, a figure or the command line shows for a head comes from
:attr:`HeadId.label`, and every label read back (``--trigrams L1H2``, a head picked from a
ranking) goes through :meth:`HeadId.parse`, so the two spellings cannot drift apart. This module
imports nothing heavy: the command line parses heads before torch is loaded.
"""

from __future__ import annotations

import operator
import re
from typing import Any, NamedTuple

from lensworks.errors import LensworksError

__all__ = ["HeadId", "head_label"]

#: ``L<layer>H<head>``: ASCII digits only (leading zeros allowed, as the old parser read them),
#: at most nine of each, so a hostile string can neither match Unicode digits nor make ``int``
#: convert a thousand-digit number.
_LABEL = re.compile(r"L([0-9]{1,9})H([0-9]{1,9})", re.ASCII)
_MAX_TEXT = 64


def _index(value: Any, what: str) -> int:
    """``value`` as a non-negative Python int (bools and floats refused)."""
    if isinstance(value, bool):
        raise LensworksError(f"HeadId {what} must be a non-negative integer, got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise LensworksError(
            f"HeadId {what} must be a non-negative integer, got {type(value).__name__} {value!r}"
        ) from None
    if number < 0:
        raise LensworksError(f"HeadId {what} must be a non-negative integer, got {number}")
    return int(number)


class _Pair(NamedTuple):
    layer: int
    head: int


class HeadId(_Pair):
    """An attention head: ``(layer, head)``, a tuple, labelled ``"L{layer}H{head}"``.

    It unpacks and compares like the ``(layer, head)`` pairs it replaces, so
    ``layer, head = HeadId.parse("L1H3")`` and ``HeadId(1, 3) == (1, 3)`` both hold.

    Attributes:
        layer: The layer, a non-negative integer.
        head: The head within the layer, a non-negative integer.

    Raises:
        LensworksError: ``layer`` or ``head`` is not a non-negative integer.

    Example:
        >>> h = HeadId(1, 3)
        >>> h.label, str(h)
        ('L1H3', 'L1H3')
        >>> HeadId.parse(" L1H3 ") == h
        True
        >>> layer, head = h
        >>> (layer, head)
        (1, 3)
    """

    __slots__ = ()

    def __new__(cls, layer: int, head: int) -> "HeadId":
        return super().__new__(cls, _index(layer, "layer"), _index(head, "head"))

    @property
    def label(self) -> str:
        """``"L{layer}H{head}"``, e.g. ``"L1H3"``."""
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, text: str) -> "HeadId":
        """Read a label ``"L{layer}H{head}"`` (surrounding whitespace ignored).

        Args:
            text: A label such as ``"L1H3"``; ASCII digits, capital ``L`` and ``H``.

        Returns:
            The :class:`HeadId`.

        Raises:
            LensworksError: ``text`` is not a string of that form; the message names the form
                expected and what came.

        Example:
            >>> HeadId.parse("L0H12")
            HeadId(layer=0, head=12)
            >>> HeadId.parse("layer 1")
            Traceback (most recent call last):
            ...
            lensworks.errors.LensworksError: expected a head label such as L1H2 (L<layer>H<head>), got 'layer 1'
        """
        if not isinstance(text, str):
            raise LensworksError(
                f"expected a head label such as L1H2 (L<layer>H<head>), got {type(text).__name__} {text!r:.80}"
            )
        shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "..."
        match = _LABEL.fullmatch(text.strip()) if len(text) <= _MAX_TEXT else None
        if match is None:
            raise LensworksError(f"expected a head label such as L1H2 (L<layer>H<head>), got {shown!r}")
        return cls(int(match.group(1)), int(match.group(2)))


def head_label(layer: int, head: int) -> str:
    """``"L{layer}H{head}"``: shorthand for ``HeadId(layer, head).label``.

    Example:
        >>> head_label(0, 2)
        'L0H2'
    """
    return HeadId(layer, head).label
