"""Strings that reach the page: escaped for HTML, made safe for plotly.js text."""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["safe_markup", "sanitize", "plain", "wrap", "esc"]

# Tags plotly.js itself interprets in text; any other "<" or ">" is escaped.
_ALLOWED_TAG = re.compile(r"(</?(?:b|i|em|sup|sub|s|u|extra)>|<br\s*/?>)", re.IGNORECASE)


def safe_markup(text: str) -> str:
    """Make a string safe for plotly.js text: escape every ``<`` and ``>`` that is not part of
    one of plotly's formatting tags (``<b>``, ``<i>``, ``<br>``, ``<sup>``, ``<sub>``, ``<extra>``, ...).

    Idempotent; already-escaped labels (``&lt;b&gt;``) pass through unchanged, except that
    ``&quot;`` and ``&#x27;`` become ``&#34;`` and ``&#39;``, which plotly.js shows as quotes.

    Example:
        >>> safe_markup('a<br>"><img src=x onerror=alert(1)>')
        'a<br>"&gt;&lt;img src=x onerror=alert(1)&gt;'
    """
    parts = _ALLOWED_TAG.split(str(text))
    out = "".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))
    # plotly.js decodes numeric entities but not &quot; (which html.escape writes): same text, numeric form
    return out.replace("&quot;", "&#34;").replace("&#x27;", "&#39;")


def sanitize(value: Any) -> Any:
    """Apply :func:`safe_markup` to every string in a plotly figure dict."""
    if isinstance(value, str):
        return safe_markup(value)
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in ("U", "S", "O"):
        return [sanitize(v) for v in value.tolist()]
    return value


def plain(text: str) -> str:
    """Figure markup -> plain text (tags dropped, entities decoded), for the TOC and alt text."""
    return html.unescape(re.sub(r"<[^>]*>", " ", str(text))).strip()


def wrap(title: str, width: int = 90) -> str:
    """Break a long figure title into lines of about ``width`` characters (plotly does not wrap)."""
    lines, line = [], ""
    for word in title.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "<br>".join(lines)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
