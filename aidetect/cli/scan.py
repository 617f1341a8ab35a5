"""`aidetect scan`: option parsing, the progress bar, and the report; aidetect.scan scores."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import (
    BatchSizeOption,
    CacheOption,
    DeviceOption,
    NoCacheOption,
    OutputOption,
    Precision,
    PrecisionOption,
    QuietOption,
    TrustAnchorsOption,
    WeightsOption,
    WorkersOption,
)
from aidetect.config import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from aidetect.provenance import ProvenanceSettings

# Click's help formatter re-wraps paragraphs to the terminal; "\b" keeps a block's lines as
# they are (each under 80 columns).
SCAN_EXAMPLES = """Examples:

\b
  aidetect scan ./photos                      # a table on a terminal
  aidetect scan a.jpg dir/ more/              # files and folders, mixed
  find /data -name '*.png' | aidetect scan -  # paths from stdin
  aidetect scan ./photos | jq .               # piped: JSON Lines
  aidetect scan ./photos --format html --output report.html
  aidetect scan ./photos --weights ./my-detector --threshold 0.7
  aidetect scan ./photos --fail-on-ai         # exit 1 if an image is AI-made

\b
  aidetect scan ./photos --fail-on-declared-ai  # exit 1 if a file declares AI
  aidetect scan ./photos --trust-anchors roots.pem  # trusted C2PA signers
  aidetect scan ./photos --no-cache           # score every file again
  torchrun --nproc_per_node 8 -m aidetect scan /data -f json -o report.json

\b
Exit codes:
  0    every file found was scored
  1    --fail-on-ai was given and an image is judged AI-generated, or
       --fail-on-declared-ai was given and a file declares AI generation
  2    usage error: bad option, missing path, unavailable device
  3    not every file was scored: some could not be, or none were found
  4    the weights cannot be obtained or loaded
  70   internal error, a bug (AIDETECT_DEBUG=1 shows the traceback)
  130  interrupted (Ctrl-C); the report of what was scanned is still written
  141  the reader of stdout went away (aidetect scan ... | head)
2 and 4 win over 1, and 1 over 3.
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
    fail_on_declared_ai: Annotated[
        bool, typer.Option("--fail-on-declared-ai", help="Exit 1 if any file's metadata "
                           "declares it AI-generated (C2PA, IPTC XMP, generator parameters), "
                           "whatever its score. With --fail-on-ai: either counts.")
    ] = False,
    no_provenance: Annotated[
        bool, typer.Option("--no-provenance", help="Do not read C2PA, XMP, EXIF or generator "
                           "metadata.")
    ] = False,
    trust_anchors: TrustAnchorsOption = None,
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
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
) -> None:
    """Score images: the probability that each is AI-generated.

    The probability that each image was made by a generative model, with a verdict from the
    detector's threshold.
    """
    from aidetect.errors import UsageError
    from aidetect.openmp import shorten_spin

    shorten_spin()  # before torch loads OpenMP: the decoders share the model's cores

    if not paths:
        raise UsageError("no paths given: aidetect scan PATH... (or - to read paths from stdin)")
    fmt = _choose_format(report_format, output)
    provenance = _provenance_settings(no_provenance, trust_anchors, fail_on_declared_ai)
    with interruptions():
        code = run_scan(
            paths=_expand_stdin(paths), weights=weights, device=device, batch_size=batch_size,
            workers=workers, threads=threads, threshold=threshold, fmt=fmt, output=output,
            fail_on_ai=fail_on_ai, quiet=quiet, exclude=exclude or [],
            follow_symlinks=follow_symlinks, max_pixels=max_pixels, precision=precision.value,
            provenance=provenance, fail_on_declared_ai=fail_on_declared_ai,
            cache=cache, no_cache=no_cache,
        )
    raise typer.Exit(code)


def _provenance_settings(off: bool, trust_anchors: str | None,
                         fail_on_declared: bool) -> ProvenanceSettings | None:
    """The scan's `ProvenanceSettings`, or None with --no-provenance."""
    from aidetect.errors import UsageError
    from aidetect.provenance import ProvenanceSettings, load_trust_anchors

    if off:
        if trust_anchors is not None or fail_on_declared:
            option = "--trust-anchors" if trust_anchors is not None else "--fail-on-declared-ai"
            raise UsageError(f"{option} needs provenance; drop --no-provenance")
        return None
    anchors = load_trust_anchors(trust_anchors) if trust_anchors is not None else None
    return ProvenanceSettings(trust_anchors=anchors)


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
             follow_symlinks: bool, max_pixels: int, precision: str,
             provenance: ProvenanceSettings | None = None,
             fail_on_declared_ai: bool = False, cache: str | None = None,
             no_cache: bool = False) -> int:
    """Find, hash and look up, load (for what the cache lacks), scan, report; returns the exit
    code. Under torchrun the lead (rank 0) does all of it but share the scoring of the misses,
    and writes the report; the other processes score their share (`_follow_lead`)."""
    from datetime import datetime, timezone

    from rich.markup import escape

    from aidetect import __version__
    from aidetect.cli.console import err_console, print_warnings
    from aidetect.data import find_images
    from aidetect.distributed_scan import join_scan_group
    from aidetect.errors import (
        EXIT_AI_FOUND,
        EXIT_INCOMPLETE,
        EXIT_INTERRUPTED,
        EXIT_OK,
        AidetectError,
    )
    from aidetect.incremental import open_session
    from aidetect.report import needs_thumbnails, open_report, summary_line
    from aidetect.results import ScanInfo

    # Cheap checks first (paths, device, report file), so a usage error never waits for the
    # weights.
    group = join_scan_group()  # under torchrun: this process's share of one scan
    if group is not None and not group.lead:
        return _follow_lead(group, weights=weights, device=device, threshold=threshold,
                            precision=precision, threads=threads, batch_size=batch_size,
                            workers=workers, max_pixels=max_pixels, provenance=provenance,
                            thumbnails=needs_thumbnails(fmt))
    candidates = find_images(paths, exclude=exclude, follow_symlinks=follow_symlinks)
    session = open_session(weights=weights, device=device, precision=precision, cache=cache,
                           enabled=not no_cache)
    with session, open_report(fmt, output=output, stdout=sys.stdout) as writer:
        shown = print_warnings(session.warnings, quiet=quiet)
        plan = session.plan(candidates)  # hash, look up: the model loads for the misses only
        if session.facts is not None:
            plan.settle_errors(max_pixels=max_pixels)  # broken files need no model
        if group is not None:
            group.share(plan.misses)  # what the other processes score a share of
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if plan.misses or session.facts is None:
            scanner, info = _load_scanner(session, plan, weights=weights, device=device,
                                          threshold=threshold, precision=precision,
                                          threads=threads, group=group, quiet=quiet)
            info.started = started_at
        else:
            scanner = None
            info = ScanInfo(tool_version=__version__, model=session.facts.model_info(),
                            device=session.cached_device(), started=started_at,
                            threshold=session.facts.threshold if threshold is None
                            else threshold)
        if group is not None:
            info.processes = group.size
            workers = group.workers(workers, _default_workers(scanner))
        if not candidates and not quiet:
            err_console.print(f"[yellow]warning:[/] no images found under "
                              f"{escape(', '.join(paths))}", soft_wrap=True)
        info.counts.found = len(candidates)
        started = time.perf_counter() - plan.seconds
        failure: BaseException | None = None

        def score(misses):
            own = scanner.scan(misses if group is None else group.shard(misses),
                               batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                               thumbnails=needs_thumbnails(fmt), provenance=provenance)
            return own if group is None else group.merged(own, len(misses))

        results = plan.results(score, threshold=info.threshold, thumbnails=needs_thumbnails(fmt),
                               max_pixels=max_pixels, provenance=provenance)
        try:
            with _progress(len(candidates),
                           enabled=not quiet and err_console.is_terminal) as advance, \
                    closing(results):  # on any exit, the scores so far are stored
                for result in results:
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
        print_warnings(session.warnings[shown:], quiet=quiet)  # stores that failed on the way
    if failure is not None:
        if output is not None and not quiet:
            err_console.print(f"partial report written to {output}", soft_wrap=True,
                              markup=False)
        raise failure
    if not quiet and (fmt != "table" or output is not None):
        err_console.print(summary_line(info), soft_wrap=True, markup=False)
    if not quiet and session.key is not None and candidates:
        err_console.print(f"score cache: {plan.hits} of {len(candidates)} files reused, "
                          f"{len(plan.misses)} scored", soft_wrap=True, markup=False)
    if output is not None and not quiet:
        err_console.print(f"report written to {output}", soft_wrap=True, markup=False)
    if not info.complete:
        return EXIT_INTERRUPTED
    if ((fail_on_ai and info.counts.ai_generated)
            or (fail_on_declared_ai and info.counts.declared_ai)):
        return EXIT_AI_FOUND
    return EXIT_OK if info.all_scored else EXIT_INCOMPLETE


def _load_scanner(session, plan, *, weights: str, device: str, threshold: float | None,
                  precision: str, threads: int | None, group=None, quiet: bool = False):
    """Load the detector for the misses: (the Scanner, the report header without `started`)."""
    from aidetect import __version__
    from aidetect.cli.console import download_notice
    from aidetect.devices import resolve_device
    from aidetect.loading import load_detector
    from aidetect.results import ModelInfo, ScanInfo

    torch_device = session.device if session.device is not None else resolve_device(device)
    if group is not None:
        torch_device = group.device(torch_device)  # cuda -> this process's GPU
    loaded = load_detector(weights, device=str(torch_device),
                           on_download=download_notice(quiet=quiet))
    detector = loaded.detector
    scanner = _scanner(detector, torch_device, threshold, precision, threads)
    session.confirm(plan, sha256=loaded.sha256, preprocess=detector.preprocess_config,
                    device_type=torch_device.type, precision=scanner.precision)
    info = ScanInfo(
        tool_version=__version__,
        model=ModelInfo(reference=weights, source=loaded.source, sha256=loaded.sha256,
                        revision=loaded.revision, backbone=detector.backbone,
                        preprocess=detector.preprocess_config.method),
        device=scanner.description,
        threshold=scanner.threshold,
        started="",
    )
    return scanner, info


def _scanner(detector, device, threshold: float | None, precision: str, threads: int | None):
    from aidetect.scan import Scanner

    return Scanner(detector, device=device, precision=precision, threads=threads,
                   threshold=detector.threshold if threshold is None else threshold)


def _default_workers(scanner) -> int:
    from aidetect.devices import default_device_workers, default_workers

    on_gpu = scanner is not None and scanner.device.type == "cuda"
    return default_device_workers() if on_gpu else default_workers(
        scanner.device if scanner is not None else None)


def _follow_lead(group, *, weights: str, device: str, threshold: float | None, precision: str,
                 threads: int | None, batch_size: int, workers: int | None, max_pixels: int,
                 provenance, thumbnails: bool) -> int:
    """A torchrun process other than the lead: score its share of the lead's misses (none
    when every file was cached) and send the results; the lead writes the report."""
    from aidetect.devices import resolve_device
    from aidetect.errors import EXIT_OK
    from aidetect.loading import load_detector

    misses = group.share([])
    if not misses:
        return EXIT_OK
    torch_device = group.device(resolve_device(device))
    scanner = _scanner(load_detector(weights, device=str(torch_device)).detector,
                       torch_device, threshold, precision, threads)
    workers = group.workers(workers, _default_workers(scanner))
    group.send(scanner.scan(group.shard(misses), batch_size=batch_size, workers=workers,
                            max_pixels=max_pixels, thumbnails=thumbnails,
                            provenance=provenance), len(misses))
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
