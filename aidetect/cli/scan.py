"""`aidetect scan`: option parsing, the progress bar, and the report; aidetect.scan scores."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Annotated

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import (
    BatchSizeOption,
    DeviceOption,
    OutputOption,
    Precision,
    PrecisionOption,
    QuietOption,
    WeightsOption,
    WorkersOption,
)
from aidetect.config import DEFAULT_MAX_PIXELS

SCAN_EXAMPLES = """
Examples:

  aidetect scan ./photos                          # a table on a terminal

  aidetect scan a.jpg dir/ more/                  # files and folders, mixed

  find /data -name '*.png' | aidetect scan -      # paths from stdin

  aidetect scan ./photos | jq .                   # piped: JSON Lines

  aidetect scan ./photos --format html --output report.html

  aidetect scan ./photos --weights ./my-detector --device cuda --threshold 0.7

  aidetect scan ./photos --fail-on-ai             # exit 1 if any image is AI-generated

Exit codes: 0 every file scanned; 1 --fail-on-ai and an image judged AI-generated; 2 usage
error (bad option, missing path, unavailable device); 3 incomplete (some files could not be
scored, or none found); 4 the weights cannot be obtained or loaded; 130 interrupted (the report
of what was scanned is still written, marked incomplete). 2 and 4 win over 1, and 1 over 3.
"""

_EXTENSION_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                      ".html": "html", ".htm": "html", ".txt": "table"}


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    html = "html"


@app.command("scan", epilog=SCAN_EXAMPLES)
def scan_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Image files and folders to scan (folders recursively); - reads "
                       "paths from stdin, one per line.", show_default=False),
    ] = None,
    weights: WeightsOption = "univfd",
    device: DeviceOption = "auto",
    batch_size: BatchSizeOption = 32,
    workers: WorkersOption = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, show_default="all cores",
                     help="CPU threads for the model."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", "-t", min=0.0, max=1.0, show_default="the detector's",
                     help="Scores above it are judged AI-generated."),
    ] = None,
    report_format: Annotated[
        ReportFormat | None,
        typer.Option("--format", "-f", show_default="table on a terminal, jsonl when piped, "
                     "else from --output's extension",
                     help="Report format."),
    ] = None,
    output: OutputOption = None,
    fail_on_ai: Annotated[
        bool, typer.Option("--fail-on-ai", help="Exit 1 if any image is judged AI-generated.")
    ] = False,
    quiet: QuietOption = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Skip files and folders matching this glob "
                     "(name or path); repeatable.", show_default=False),
    ] = None,
    follow_symlinks: Annotated[
        bool, typer.Option("--follow-symlinks", help="Enter symlinked folders (never twice).")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=0, help="Refuse images with more pixels than "
                          "this (decompression bombs); 0: no limit.")
    ] = DEFAULT_MAX_PIXELS,
    precision: PrecisionOption = Precision.auto,
) -> None:
    """Score images: the probability that each was made by a generative model."""
    from aidetect.errors import UsageError

    if not paths:
        raise UsageError("no paths given: aidetect scan PATH... (or - to read paths from stdin)")
    fmt = _choose_format(report_format, output)
    with interruptions():
        code = run_scan(
            paths=_expand_stdin(paths), weights=weights, device=device, batch_size=batch_size,
            workers=workers, threads=threads, threshold=threshold, fmt=fmt, output=output,
            fail_on_ai=fail_on_ai, quiet=quiet, exclude=exclude or [],
            follow_symlinks=follow_symlinks, max_pixels=max_pixels, precision=precision.value,
        )
    raise typer.Exit(code)


def _choose_format(report_format: ReportFormat | None, output: str | None) -> str:
    if report_format is not None:
        return report_format.value
    if output is not None:
        from pathlib import Path

        return _EXTENSION_FORMATS.get(Path(output).suffix.lower(), "json")
    return "table" if sys.stdout.isatty() else "jsonl"


def _expand_stdin(paths: list[str]) -> list[str]:
    expanded: list[str] = []
    for path in paths:
        if path == "-":
            # Bytes, decoded as the OS decodes file names: any name a `find` prints works.
            raw = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
            lines = ([os.fsdecode(line.rstrip(b"\r\n")) for line in raw] if raw is not None
                     else [line.rstrip("\r\n") for line in sys.stdin])
            expanded.extend(line for line in lines if line.strip())
        else:
            expanded.append(path)
    return expanded


def run_scan(*, paths: list[str], weights: str, device: str, batch_size: int,
             workers: int | None, threads: int | None, threshold: float | None, fmt: str,
             output: str | None, fail_on_ai: bool, quiet: bool, exclude: list[str],
             follow_symlinks: bool, max_pixels: int, precision: str) -> int:
    """Find, load, scan, report; returns the exit code."""
    from datetime import datetime, timezone

    from rich.markup import escape

    from aidetect import __version__
    from aidetect.cli.console import err_console
    from aidetect.data import find_images
    from aidetect.devices import resolve_device
    from aidetect.errors import EXIT_AI_FOUND, EXIT_INCOMPLETE, EXIT_OK, AidetectError
    from aidetect.hub import load_detector
    from aidetect.report import needs_thumbnails, open_report, summary_line
    from aidetect.results import ModelInfo, ScanInfo
    from aidetect.scan import Scanner

    # Cheap checks first (paths, device, report file), so a usage error never waits for the
    # weights.
    candidates = find_images(paths, exclude=exclude, follow_symlinks=follow_symlinks)
    torch_device = resolve_device(device)
    with open_report(fmt, output=output, stdout=sys.stdout) as writer:
        loaded = load_detector(weights, device=str(torch_device))
        detector = loaded.detector
        scanner = Scanner(detector, device=torch_device,
                          threshold=detector.threshold if threshold is None else threshold,
                          precision=precision, threads=threads)
        info = ScanInfo(
            tool_version=__version__,
            model=ModelInfo(reference=weights, source=loaded.source, sha256=loaded.sha256,
                            revision=loaded.revision, backbone=detector.backbone,
                            preprocess=detector.preprocess_config.method),
            device=scanner.description,
            threshold=scanner.threshold,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if not candidates and not quiet:
            err_console.print(f"[yellow]warning:[/] no images found under "
                              f"{escape(', '.join(paths))}", soft_wrap=True)
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            with _progress(len(candidates),
                           enabled=not quiet and err_console.is_terminal) as advance:
                for result in scanner.scan(candidates, batch_size=batch_size, workers=workers,
                                           max_pixels=max_pixels,
                                           thumbnails=needs_thumbnails(fmt)):
                    info.counts.add(result)
                    writer.add(result)
                    advance()
        except KeyboardInterrupt:
            info.complete = False  # report what was scanned, marked incomplete
        except (AidetectError, RuntimeError) as error:
            # Out of GPU memory, a decoding worker killed: keep what was scored, then fail.
            info.complete = False
            failure = _scan_failure(error)
        info.elapsed_seconds = time.perf_counter() - started
        info.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        writer.finish(info)
    if failure is not None:
        if output is not None and not quiet:
            err_console.print(f"partial report written to {output}", soft_wrap=True,
                              markup=False)
        raise failure
    if not quiet and (fmt != "table" or output is not None):
        err_console.print(summary_line(info), soft_wrap=True, markup=False)
    if output is not None and not quiet:
        err_console.print(f"report written to {output}", soft_wrap=True, markup=False)
    if not info.complete:
        return 130
    if fail_on_ai and info.counts.ai_generated:
        return EXIT_AI_FOUND
    if info.counts.errors or info.counts.total == 0:
        return EXIT_INCOMPLETE
    return EXIT_OK


def _scan_failure(error: BaseException) -> BaseException:
    """The error to end a scan with: ours as is, a dead DataLoader worker as one line."""
    from aidetect.errors import EXIT_INCOMPLETE, AidetectError

    if isinstance(error, RuntimeError) and "DataLoader worker" in str(error):
        reason = str(error).strip().splitlines()[0]
        return AidetectError(f"a decoding worker stopped ({reason}); the report holds the "
                             "files scanned before it; rerun with --workers 0 to find the file "
                             "that crashes the decoder", exit_code=EXIT_INCOMPLETE)
    return error


@contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (images/s, ETA) while enabled; yields `advance()`."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from aidetect.cli.console import err_console

    progress = Progress(
        TextColumn("scanning"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"), TimeRemainingColumn(),
        console=err_console, transient=True,
    )
    task = progress.add_task("scan", total=total, rate="")

    def advance() -> None:
        progress.advance(task)
        speed = progress.tasks[task].speed
        if speed:
            progress.update(task, rate=f"{speed:.1f} images/s")

    with progress:
        yield advance
