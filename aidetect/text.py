"""File names and messages made fit for a terminal, whatever bytes the names hold.

`terminal_text` is what reports and warnings show: undecodable bytes as `\\xNN`, control
characters (escape sequences, newlines) and bidirectional overrides as escapes. Rich markup is
a separate matter: text printed through Rich also goes through `rich.markup.escape`.
"""

from __future__ import annotations

import unicodedata


def utf8(text: str) -> str:
    """`text`, with the surrogate escapes of undecodable file-name bytes shown as `\\xNN`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# Bidirectional overrides could make a terminal show a path other than the real one.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """`text` for a terminal: control characters (escape sequences, newlines) as escapes."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii")
        if unicodedata.category(c) == "Cc" or c in _BIDI
        else c
        for c in text
    )


def terminal_text(text: str) -> str:
    """`printable(utf8(text))`: a file name or message as a terminal may show it."""
    return printable(utf8(text))


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "-" when undefined (None or NaN)."""
    import math

    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"
