"""What every report writer shares: collecting results, the atomic output file, the order and
short texts the human-readable formats use.

A writer gets each `ImageResult` through `add` as the scan yields it and the `ScanInfo`
through `finish`, once, at the end (also after Ctrl-C, with `complete=False`). With an output
path the file appears atomically at `finish`, and `abort` leaves neither file nor temp file.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, TextIO

from aidetect.atomic import atomic_open
from aidetect.errors import UsageError
from aidetect.provenance.evidence import describe
from aidetect.results import ImageResult, ScanInfo
from aidetect.text import clean, duration, rate, terminal_safe


def summary_line(info: ScanInfo) -> str:
    """One line: counts, device, time and rate, e.g. for stderr after a JSON report."""
    c = info.counts
    errors = f"{c.errors} error" + ("" if c.errors == 1 else "s")
    declared = f", {c.declared_ai} declared AI-generated" if c.declared_ai else ""
    line = (
        f"{c.scanned} scanned: {c.ai_generated} AI-generated, {c.real} real, {errors}{declared}"
        f" · {terminal_safe(info.device)} · {duration(info.elapsed_seconds)}"
        f" · {rate(info.images_per_second)} images/s"
    )
    return line if info.complete else f"{line} (incomplete: {interrupted_text(info)})"


def interrupted_text(info: ScanInfo) -> str:
    """"interrupted after 1 of 60 files found": how far an incomplete scan got."""
    c = info.counts
    return f"interrupted after {c.total} of {c.found_files} files found"


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


def split_results(results: list[ImageResult]) -> tuple[list[ImageResult], ...]:
    """AI-generated and real results by score descending (ties by path), and the errors."""
    scored = sorted((r for r in results if r.ok), key=lambda r: (-_score(r), r.path))
    ai = [r for r in scored if r.is_ai]
    real = [r for r in scored if not r.is_ai]
    return ai, real, [r for r in results if not r.ok]


def _score(result: ImageResult) -> float:
    score = result.score
    return score if score is not None and math.isfinite(score) else -1.0


def score_text(result: ImageResult) -> str:
    """The score with three decimals, or empty for an error."""
    return f"{result.score:.3f}" if result.score is not None else ""


def size_text(result: ImageResult) -> str:
    """"WxH", or empty when the size is unknown."""
    return f"{result.width}x{result.height}" if result.width and result.height else ""


def declared_mark(result: ImageResult) -> str:
    """Short text for the table: "AI: c2pa, xmp", "capture: c2pa"; with nothing declared,
    "C2PA invalid" for a manifest that fails validation, "?" for a provenance error, or
    empty."""
    provenance = result.provenance
    if provenance is None:
        return ""
    if provenance.declared is None:
        if any(e.get("state") == "invalid" for e in provenance.evidence):
            return "C2PA invalid"
        return "?" if provenance.error else ""
    kind = "AI" if provenance.declared == "ai-generated" else "capture"
    return f"{kind}: {', '.join(provenance.declared_by)}"


def provenance_cells(result: ImageResult) -> dict[str, str]:
    """The provenance as flat text columns (CSV): the verdict, its sources, each piece of
    evidence in one line (joined by " | "), and the error; all empty when not read."""
    provenance = result.provenance
    if provenance is None:
        return dict.fromkeys(PROVENANCE_COLUMNS, "")
    return {
        "declared": provenance.declared or "",
        "declared_by": ";".join(provenance.declared_by),
        "provenance": " | ".join(describe(item) for item in provenance.evidence),
        "provenance_error": provenance.error or "",
    }


PROVENANCE_COLUMNS = ("declared", "declared_by", "provenance", "provenance_error")


def result_dict(result: ImageResult) -> dict[str, Any]:
    """The result as a report writes it: `clean` text and numbers."""
    return clean(result.to_dict())
