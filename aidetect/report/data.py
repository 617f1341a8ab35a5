"""The machine-readable reports: JSON (one document), JSONL (streamed) and CSV.

The JSON layout is documented by `aidetect/report_schema.json` (`aidetect.report.report_schema`).
Paths and messages are written as text: bytes of a file name that are not UTF-8 (surrogate
escapes from `os.fsdecode`) appear as `\\xNN`; non-finite numbers become null.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any

from aidetect.report.base import (
    PROVENANCE_COLUMNS,
    ReportWriter,
    provenance_cells,
    result_dict,
)
from aidetect.results import RESULT_FIELDS, ImageResult, ScanInfo
from aidetect.text import clean, spreadsheet_row


class JsonWriter(ReportWriter):
    """The header of `ScanInfo.to_dict()` and `results` in the order they were added."""

    def render(self, info: ScanInfo) -> str:
        report = {**clean(info.to_dict()), "results": [result_dict(r) for r in self.results]}
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


class JsonlWriter(ReportWriter):
    """One per-file object per line as results arrive, then `{"summary": header}`.

    On stdout each line is flushed at once; to a file the lines go into the temp file, which
    replaces the output at `finish`, so a reader never sees a partial report.
    """

    def add(self, result: ImageResult) -> None:
        self._check_open()
        self._write_line(result_dict(result))

    def _write(self, info: ScanInfo) -> None:
        self._write_line({"summary": clean(info.to_dict())})

    def _write_line(self, obj: dict[str, Any]) -> None:
        self._stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        if self._context is None:
            self._stream.flush()


CSV_FIELDS = tuple(k for k in RESULT_FIELDS if k != "provenance") + PROVENANCE_COLUMNS


class CsvWriter(ReportWriter):
    """A header of `CSV_FIELDS` (the result's fields, the provenance flattened into text
    columns), then one row per file in add order; null is an empty cell.

    Written by `csv_text`: text cells that a spreadsheet would run as a formula (a file named
    `=HYPERLINK(...).png`) start with a single quote; JSON and JSONL keep the exact strings.
    """

    def render(self, info: ScanInfo) -> str:
        rows = []
        for result in self.results:
            row = {**result_dict(result), **clean(provenance_cells(result))}
            rows.append([_csv_cell(row[k]) for k in CSV_FIELDS])
        return csv_text(CSV_FIELDS, rows)


def _csv_cell(value: Any) -> Any:
    """null as an empty cell; booleans as JSON writes them (`cached`: true/false)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def csv_text(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """CSV text, lines ending in "\n" (the stream or file adds the platform's line ending).

    Every text cell goes through `spreadsheet_cell` (OWASP's guard against formulas; numbers
    are left alone). A row with a carriage return in a cell is quoted in full: Python's csv
    module before 3.12 leaves a lone "\r" unquoted, and readers take it for a line end.
    """
    buffer = io.StringIO()
    minimal = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    for row in (header, *rows):
        cells = spreadsheet_row(row)
        has_cr = any(isinstance(cell, str) and "\r" in cell for cell in cells)
        (quoted if has_cr else minimal).writerow(cells)
    return buffer.getvalue()
