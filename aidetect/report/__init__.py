"""The report writers of `aidetect scan`: table, JSON, JSONL, CSV and HTML.

`open_report` picks a writer; each gets every `ImageResult` through `add` as the scan yields it
and the `ScanInfo` through `finish` (see `aidetect.report.base.ReportWriter`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from aidetect.errors import UsageError
from aidetect.report.base import ReportWriter, summary_line
from aidetect.report.data import CsvWriter, JsonlWriter, JsonWriter
from aidetect.report.html import HtmlWriter
from aidetect.report.table import TableWriter

__all__ = [
    "FORMATS", "CsvWriter", "HtmlWriter", "JsonWriter", "JsonlWriter", "ReportWriter",
    "TableWriter", "needs_thumbnails", "open_report", "report_schema", "summary_line",
]

FORMATS = ("table", "json", "jsonl", "csv", "html")


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON report, shipped as package data."""
    text = resources.files("aidetect").joinpath("report_schema.json").read_text("utf-8")
    return json.loads(text)


def needs_thumbnails(fmt: str) -> bool:
    """Whether `fmt` embeds thumbnails, so that the scan should make them."""
    return fmt == "html"


_WRITERS: dict[str, type[ReportWriter]] = {
    "table": TableWriter,
    "json": JsonWriter,
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
    "html": HtmlWriter,
}


def open_report(
    fmt: str, *, output: str | Path | None, stdout: TextIO, width: int | None = None
) -> ReportWriter:
    """A writer of `fmt` (one of FORMATS) to `output` or, when None, to `stdout`.

    Args:
        fmt: the report format.
        output: the report file, written atomically at `finish`; its folder is created.
        stdout: the stream for the report when `output` is None.
        width: the table's width in characters (default: the terminal's); tests fix it.

    Raises:
        UsageError: an unknown format, or an output path that is a folder.
    """
    if fmt not in _WRITERS:
        raise UsageError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if output is not None and Path(output).is_dir():
        raise UsageError(f"the report output {os.fspath(output)!r} is a folder, not a file")
    if fmt == "table":
        return TableWriter(output=output, stdout=stdout, width=width)
    return _WRITERS[fmt](output=output, stdout=stdout)
