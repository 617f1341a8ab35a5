"""The report writers of `aidetect scan`: table, JSON, JSONL, CSV and HTML.

A writer gets each `ImageResult` through `add` as the scan yields it and the `ScanInfo`
through `finish`, once, at the end (also after Ctrl-C, with `complete=False`). JSONL is
streamed line by line; the other formats are written at `finish`. With an output path the
file appears atomically at `finish` (a streamed JSONL goes into a temp file beside it until
then), and `abort` leaves neither file nor temp file. The JSON layout is documented by
`aidetect/report_schema.json` (`report_schema()`).

Paths and messages are written as text: bytes of a file name that are not UTF-8 (surrogate
escapes from `os.fsdecode`) appear as `\\xNN`; non-finite numbers become null.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from contextlib import AbstractContextManager
from importlib import resources
from pathlib import Path
from typing import IO, Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from aidetect.atomic import atomic_open
from aidetect.errors import UsageError
from aidetect.results import RESULT_FIELDS, ImageResult, ScanInfo
from aidetect.text import printable as _printable
from aidetect.text import utf8 as _utf8

FORMATS = ("table", "json", "jsonl", "csv", "html")
MAX_REAL_ROWS = 20  # the table lists every AI-generated image but only the top real ones
MAX_ERROR_ROWS = 50


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON report, shipped as package data."""
    text = resources.files("aidetect").joinpath("report_schema.json").read_text("utf-8")
    return json.loads(text)


def needs_thumbnails(fmt: str) -> bool:
    """Whether `fmt` embeds thumbnails, so that the scan should make them."""
    return fmt == "html"


def summary_line(info: ScanInfo) -> str:
    """One line: counts, device, time and rate, e.g. for stderr after a JSON report."""
    c = info.counts
    errors = f"{c.errors} error" + ("" if c.errors == 1 else "s")
    line = (
        f"{c.scanned} scanned: {c.ai_generated} AI-generated, {c.real} real, {errors}"
        f" · {_printable(_utf8(info.device))} · {_duration(info.elapsed_seconds)}"
        f" · {_rate(info.images_per_second)} images/s"
    )
    return line if info.complete else f"{line} (incomplete)"


class ReportWriter:
    """Collects results and writes one report, to a file atomically or to a text stream.

    Call `add` for each result, then `finish` once; `abort` instead of `finish` discards the
    report. With an output path the temp file beside it is created at once (so an unwritable
    folder fails before the scan) and renamed at `finish`. Used as a context manager, leaving
    the block without `finish` aborts, so no temp file is left behind.
    """

    def __init__(self, *, output: str | Path | None, stdout: TextIO) -> None:
        self.output = Path(output) if output is not None else None
        self.results: list[ImageResult] = []
        self.closed = False
        self._context: AbstractContextManager[IO[str]] | None = None
        self._stream: IO[str] = stdout
        if self.output is not None:
            context = atomic_open(self.output)
            try:
                self._stream = context.__enter__()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise UsageError(f"cannot write the report {str(self.output)!r}: {reason}") from exc
            self._context = context

    def add(self, result: ImageResult) -> None:
        self._check_open()
        self.results.append(result)

    def finish(self, info: ScanInfo) -> None:
        """Write what is not streamed yet, then commit the file (or flush the stream)."""
        self._check_open()
        self.closed = True
        try:
            self._write(info)
        except BaseException as exc:
            self._discard(exc)
            raise
        if self._context is not None:
            self._context.__exit__(None, None, None)  # fsync, then rename over the output
        else:
            self._stream.flush()

    def abort(self) -> None:
        """Discard the report (what went to stdout stays there); a no-op once closed."""
        if self.closed:
            return
        self.closed = True
        self.results = []
        self._discard(RuntimeError("report aborted"))

    def render(self, info: ScanInfo) -> str:
        """The whole report as text, for the formats written at `finish`."""
        raise NotImplementedError

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def _write(self, info: ScanInfo) -> None:
        self._stream.write(self.render(info))

    def _discard(self, exc: BaseException) -> None:
        if self._context is not None:
            # atomic_open deletes its temp file when an exception goes through it.
            self._context.__exit__(type(exc), exc, exc.__traceback__)
            self._context = None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the report is already finished or aborted")


class JsonWriter(ReportWriter):
    """The header of `ScanInfo.to_dict()` and `results` in the order they were added."""

    def render(self, info: ScanInfo) -> str:
        report = {**_clean(info.to_dict()), "results": [_result_dict(r) for r in self.results]}
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


class JsonlWriter(ReportWriter):
    """One per-file object per line as results arrive, then `{"summary": header}`.

    On stdout each line is flushed at once; to a file the lines go into the temp file, which
    replaces the output at `finish`, so a reader never sees a partial report.
    """

    def add(self, result: ImageResult) -> None:
        self._check_open()
        self._write_line(_result_dict(result))

    def _write(self, info: ScanInfo) -> None:
        self._write_line({"summary": _clean(info.to_dict())})

    def _write_line(self, obj: dict[str, Any]) -> None:
        self._stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
        if self._context is None:
            self._stream.flush()


class CsvWriter(ReportWriter):
    """A header of `RESULT_FIELDS`, then one row per file in add order; null is an empty cell."""

    def render(self, info: ScanInfo) -> str:
        buffer = io.StringIO()
        # "\n": the stream or file adds the platform's line ending when it is written.
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(RESULT_FIELDS)
        for result in self.results:
            row = _result_dict(result)
            writer.writerow("" if row[k] is None else row[k] for k in RESULT_FIELDS)
        return buffer.getvalue()


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
                f"Incomplete: the scan was interrupted; this report covers the "
                f"{info.counts.total} files read before it stopped.", style="bold yellow",
            ))
        console.print(Text(summary_line(info), style="bold" if info.complete else "yellow"),
                      soft_wrap=True)

    def _table(self) -> Table:
        ai, real, errors = _split(self.results)
        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("verdict", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("path", overflow="fold")
        table.add_column("size", justify="right", no_wrap=True)
        for result in ai:
            table.add_row(Text("AI-generated", style="bold red"), *_cells(result))
        for result in real[: self.max_real_rows]:
            table.add_row(Text("real", style="green"), *_cells(result))
        if len(real) > self.max_real_rows:
            more = len(real) - self.max_real_rows
            table.add_row("", "", Text(f"... {more} more real images", style="dim"), "")
        for result in errors[: self.max_error_rows]:
            path = Text(_printable(_utf8(result.path)))
            path.append("\n" + _printable(_utf8(result.error or "")), style="yellow")
            table.add_row(Text("error", style="bold yellow"), "", path, _size(result))
        if len(errors) > self.max_error_rows:
            more = len(errors) - self.max_error_rows
            table.add_row("", "", Text(f"... {more} more errors", style="dim"), "")
        return table


class HtmlWriter(ReportWriter):
    """One self-contained page: the summary, then a card per file (highest score first, errors
    last) with its thumbnail embedded as a data: URL.

    Each card is `<figure class="result" data-path=... data-label=... data-score=...>`;
    `data-label` is "ai-generated", "real" or "error", and `data-score` (the full float) is
    absent for errors. A Content-Security-Policy forbids every network fetch.
    """

    def render(self, info: ScanInfo) -> str:
        ai, real, errors = _split(self.results)
        head = _clean(info.to_dict())
        counts = info.counts
        title = f"aidetect report: {counts.total} files, {counts.ai_generated} AI-generated"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta http-equiv="Content-Security-Policy" '
            "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<header>",
            "<h1>aidetect report</h1>",
        ]
        if not info.complete:
            parts.append(
                '<p class="incomplete" role="alert"><strong>Incomplete:</strong> the scan was '
                f"interrupted; this report covers the {info.counts.total} files read before it "
                "stopped.</p>"
            )
        parts.append(f'<p class="summary">{_esc(summary_line(info))}</p>')
        parts.append(_info_list(head))
        parts.append("</header>")
        parts.append('<main class="results">')
        parts.extend(_card(result) for result in (*ai, *real, *errors))
        parts.append("</main>")
        parts.append("</body>")
        parts.append("</html>")
        return "\n".join(parts) + "\n"


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


def _split(results: list[ImageResult]) -> tuple[list[ImageResult], ...]:
    """AI-generated and real results by score descending (ties by path), and the errors."""
    scored = sorted((r for r in results if r.ok), key=lambda r: (-_score(r), r.path))
    ai = [r for r in scored if r.is_ai]
    real = [r for r in scored if not r.is_ai]
    return ai, real, [r for r in results if not r.ok]


def _score(result: ImageResult) -> float:
    score = result.score
    return score if score is not None and math.isfinite(score) else -1.0


def _cells(result: ImageResult) -> tuple[str, Text, str]:
    return _score_text(result), Text(_printable(_utf8(result.path))), _size(result)


def _score_text(result: ImageResult) -> str:
    return f"{result.score:.3f}" if result.score is not None else ""


def _size(result: ImageResult) -> str:
    return f"{result.width}x{result.height}" if result.width and result.height else ""


def _card(result: ImageResult) -> str:
    label = result.label if result.ok and result.label else "error"
    label = _esc(label)
    attrs = f'class="result {label}" data-path="{_esc(result.path)}" data-label="{label}"'
    if result.ok and result.score is not None and math.isfinite(result.score):
        attrs += f' data-score="{result.score!r}"'
    if result.thumbnail:
        data = base64.b64encode(result.thumbnail).decode("ascii")
        thumb = f'<img src="data:image/jpeg;base64,{data}" alt="{_esc(result.path)}">'
    else:
        thumb = '<div class="placeholder">no preview</div>'
    verdict = {"ai-generated": "AI-generated", "real": "real"}.get(label, "error")
    caption = [f'<span class="verdict">{verdict}</span>']
    if result.ok and result.score is not None:
        caption.append(f'<span class="score">{_score_text(result)}</span>')
    caption.append(f'<span class="path">{_esc(result.path)}</span>')
    if _size(result):
        caption.append(f'<span class="size">{_size(result)}</span>')
    if result.error:
        caption.append(f'<span class="error">{_esc(result.error)}</span>')
    return f'<figure {attrs}>{thumb}<figcaption>{" ".join(caption)}</figcaption></figure>'


def _info_list(head: dict[str, Any]) -> str:
    model = head["model"]
    rows = [
        ("model", model["reference"] + f" ({model['source']})"),
        ("sha256", model["sha256"]),
        ("revision", model["revision"]),
        ("backbone", model["backbone"]),
        ("preprocess", model["preprocess"]),
        ("threshold", head["threshold"]),
        ("device", head["device"]),
        ("started", head["started"]),
        ("finished", head["finished"]),
        ("complete", "yes" if head["complete"] else "no (interrupted)"),
        ("aidetect", head["tool"]["version"]),
    ]
    items = "".join(
        f'<div><dt>{name}</dt><dd class="{name}">{_esc(str(value))}</dd></div>'
        for name, value in rows
        if value is not None
    )
    return f'<dl class="info">{items}</dl>'


def _esc(text: str) -> str:
    return html.escape(_utf8(text), quote=True)


def _result_dict(result: ImageResult) -> dict[str, Any]:
    return _clean(result.to_dict())


def _clean(value: Any) -> Any:
    """Any report value made safe to write: UTF-8 strings, finite numbers or null."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _rate(rate: float) -> str:
    return f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.2f}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem;color:#1b1b1b;
background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .5rem}
.incomplete{background:#fff3cd;border:1px solid #e0b000;padding:.5rem .75rem;border-radius:4px}
.summary{font-size:1.1rem;font-weight:600}
dl.info{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:.25rem 1rem;
font-size:.85rem;margin:0 0 1rem}
dl.info div{display:flex;gap:.5rem;min-width:0}
dl.info dt{color:#666}
dl.info dd{margin:0;overflow-wrap:anywhere}
dd.sha256{font-family:ui-monospace,monospace}
.results{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:.75rem}
figure.result{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;
border-top:4px solid #2e7d32}
figure.ai-generated{border-top-color:#c62828}
figure.error{border-top-color:#e0b000}
figure.result img,.placeholder{display:block;width:100%;height:160px;object-fit:contain;
background:#eee}
.placeholder{display:flex;align-items:center;justify-content:center;color:#888;font-size:.8rem}
figcaption{display:flex;flex-wrap:wrap;gap:.25rem .5rem;font-size:.8rem;margin-top:.4rem}
.verdict{font-weight:700}
figure.ai-generated .verdict{color:#c62828}
figure.real .verdict{color:#2e7d32}
.score{font-variant-numeric:tabular-nums}
.path{flex-basis:100%;overflow-wrap:anywhere;color:#333}
.size{color:#666}
.error{flex-basis:100%;color:#8a6d00}
""".strip()
