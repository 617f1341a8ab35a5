"""Text safe to show or write: file names with undecodable bytes, control characters and
bidirectional overrides made visible; CSV cells a spreadsheet will not run as formulas; numbers
and durations the way reports print them."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from typing import Any


def clean(value: Any) -> Any:
    """Any report value made safe to write: UTF-8 strings, finite numbers or null."""
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


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


def terminal_safe(text: str) -> str:
    """`text` as a terminal may show it: valid UTF-8, control characters escaped."""
    return printable(utf8(text))


# A spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with `=`, `+`, `-`, `@`, tab or
    carriage return gets a leading single quote (OWASP's rule). Numbers are left alone, so a
    negative logit stays a number; JSON and JSONL keep exact strings."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_row(values: Iterable[Any]) -> list[Any]:
    """`spreadsheet_cell` applied to every cell of a CSV row."""
    return [spreadsheet_cell(value) for value in values]


def duration(seconds: float) -> str:
    """"12.3 s", "4 min 5 s" or "1 h 2 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def rate(per_second: float) -> str:
    """A rate with one decimal, two below 1."""
    return f"{per_second:.1f}" if per_second >= 1 or per_second == 0 else f"{per_second:.2f}"


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "-" when undefined (None or NaN)."""
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"
