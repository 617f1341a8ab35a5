"""The table report: a Rich table for a person, AI-generated images first, then the summary."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aidetect.report.base import (
    ReportWriter,
    declared_mark,
    interrupted_text,
    score_text,
    size_text,
    split_results,
    summary_line,
)
from aidetect.results import ImageResult, ScanInfo
from aidetect.text import terminal_safe

MAX_REAL_ROWS = 20  # the table lists every AI-generated image but only the top real ones
MAX_ERROR_ROWS = 50


class TableWriter(ReportWriter):
    """A Rich table, then the summary line.

    Rows: every AI-generated image (highest score first), then the `max_real_rows` real images
    with the highest scores and a "... N more real images" row for the rest, then up to
    `max_error_rows` files that could not be scored, each with its error. An interrupted scan
    gets a visible "Incomplete" line. The full list is in the other formats.
    """

    def __init__(
        self,
        *,
        output: str | Path | None,
        stdout: TextIO,
        width: int | None = None,
        max_real_rows: int = MAX_REAL_ROWS,
        max_error_rows: int = MAX_ERROR_ROWS,
    ) -> None:
        super().__init__(output=output, stdout=stdout)
        self.width = width
        self.max_real_rows = max_real_rows
        self.max_error_rows = max_error_rows

    def _write(self, info: ScanInfo) -> None:
        # A file gets a fixed width; a terminal its own (and colours).
        console = Console(
            file=self._stream, width=self.width or (120 if self.output else None),
            markup=False, emoji=False, highlight=False, soft_wrap=False,
        )
        self._print(console, info)

    def _print(self, console: Console, info: ScanInfo) -> None:
        if self.results:
            console.print(self._table())
        if not info.complete:
            console.print(Text(
                f"Incomplete: the scan was {interrupted_text(info)}; this report covers "
                f"those {info.counts.total}.", style="bold yellow",
            ))
        console.print(Text(summary_line(info), style="bold" if info.complete else "yellow"),
                      soft_wrap=True)

    def _table(self) -> Table:
        ai, real, errors = split_results(self.results)
        # The "declared" column (what the metadata says) only when provenance was read.
        declared = any(r.provenance is not None for r in self.results)
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("verdict", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        if declared:
            table.add_column("declared", no_wrap=True)
        table.add_column("path", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)

        def row(verdict, score, path, size, result=None) -> None:
            mark = [_mark(result)] if declared else []
            table.add_row(verdict, score, *mark, path, size)

        for result in ai:
            row(Text("AI-generated", style="bold red"), *_cells(result), result)
        for result in real[: self.max_real_rows]:
            row(Text("real", style="green"), *_cells(result), result)
        if len(real) > self.max_real_rows:
            more = len(real) - self.max_real_rows
            row("", "", Text(f"... {more} more real images", style="dim"), "")
        for result in errors[: self.max_error_rows]:
            path = Text(terminal_safe(result.path))
            path.append("\n" + terminal_safe(result.error or ""), style="yellow")
            row(Text("error", style="bold yellow"), "", path, size_text(result), result)
        if len(errors) > self.max_error_rows:
            more = len(errors) - self.max_error_rows
            row("", "", Text(f"... {more} more errors", style="dim"), "")
        return table


def _mark(result: ImageResult | None) -> Text:
    mark = declared_mark(result) if result is not None else ""
    style = {"AI": "bold magenta", "ca": "cyan"}.get(mark[:2], "yellow")
    return Text(terminal_safe(mark), style=style)


def _cells(result: ImageResult) -> tuple[str, Text, str]:
    return score_text(result), Text(terminal_safe(result.path)), size_text(result)
