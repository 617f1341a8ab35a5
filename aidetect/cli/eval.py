"""`aidetect eval`: option parsing and rendering of the evaluation report.

The engine (aidetect.evaluate) scores the benchmark; this module draws the progress on stderr
and writes the report (table, JSON or CSV) to stdout or a file. Subset and file names go
through `terminal_safe` and Rich's `escape`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import (
    CacheOption,
    DeviceOption,
    NoCacheOption,
    OutputOption,
    Precision,
    PrecisionOption,
    QuietOption,
    WeightsOption,
    WorkersOption,
)
from aidetect.text import percent, terminal_safe

# Click re-wraps paragraphs to the terminal; "\b" keeps a block's lines (each under 80 columns).
EVAL_EXAMPLES = """Examples:

\b
  aidetect eval --data BENCH                   # the univfd preset
  aidetect eval --weights runs/exp2 --data BENCH
  aidetect eval --weights runs/exp2 --data BENCH -f json -o eval.json
  aidetect eval -w runs/exp2 --data BENCH --jpeg-quality 75 --blur-sigma 1
  aidetect eval -w runs/exp2 --data BENCH --calibrate 0.01  # 1% FPR

BENCH holds one folder per subset, each with 0_real/ and 1_fake/ (or <class>/0_real, 1_fake).
"""


# --- eval ------------------------------------------------------------------------------------
class EvalFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _render_table(report, console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"threshold {report.threshold:.6g}", title_justify="left")
    for column in ("subset", "acc", "AP", "real acc", "fake acc", "real", "fake"):
        table.add_column(column, justify="left" if column == "subset" else "right")
    for result in report.subsets:
        s = result.scores
        table.add_row(Text(terminal_safe(result.name)), percent(s.acc), percent(s.ap),
                      percent(s.r_acc), percent(s.f_acc), str(s.n_real), str(s.n_fake))
    m = report.mean
    table.add_section()
    table.add_row("mean", percent(m["acc"]), percent(m["ap"]), percent(m["r_acc"]),
                  percent(m["f_acc"]), str(sum(r.scores.n_real for r in report.subsets)),
                  str(sum(r.scores.n_fake for r in report.subsets)))
    console.print(table)
    for c in report.calibration:
        console.print(
            f"threshold for {c.fpr:.0%} false positives: {c.threshold:.6g} "
            f"(real flagged {percent(c.observed_fpr)}, fake detected {percent(c.tpr)}, "
            f"{c.n_real} real images)"
        )
    if report.failures:
        console.print(f"[yellow]{len(report.failures)} unreadable images skipped[/]")


def _csv_text(report) -> str:
    """The subsets and their mean as CSV, text cells guarded against spreadsheet formulas
    (a subset named `=cmd|...`) as in scan's CSV report."""
    from aidetect.report.data import csv_text

    columns = ("name", "acc", "ap", "r_acc", "f_acc", "n_real", "n_fake")
    rows = [[result.to_dict()[k] for k in columns] for result in report.subsets]
    m = report.mean
    rows.append(["mean", m["acc"], m["ap"], m["r_acc"], m["f_acc"],
                 sum(r.scores.n_real for r in report.subsets),
                 sum(r.scores.n_fake for r in report.subsets)])
    return csv_text(columns, rows)


@app.command("eval", epilog=EVAL_EXAMPLES,
             short_help="Accuracy and AP per benchmark subset; calibration.")
def eval_command(
    data: Annotated[
        Path, typer.Option("--data", help="Benchmark folder: BENCH/<subset>/{0_real,1_fake}.",
                           show_default=False)
    ],
    weights: WeightsOption = "univfd",
    format: Annotated[
        EvalFormat, typer.Option("--format", "-f", help="Report format.")
    ] = EvalFormat.table,
    output: OutputOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")
    ] = 32,
    workers: WorkersOption = None,
    device: DeviceOption = "auto",
    jpeg_quality: Annotated[
        int | None, typer.Option("--jpeg-quality", min=1, max=100,
                                 help="Re-compress every input as JPEG at this quality.")
    ] = None,
    blur_sigma: Annotated[
        float | None, typer.Option("--blur-sigma", min=0.0,
                                   help="Gaussian-blur every input with this sigma (px).")
    ] = None,
    calibrate: Annotated[
        float | None,
        typer.Option("--calibrate", min=0.0, max=0.5,
                     help="Write the threshold giving this false-positive rate on the real "
                     "images seen (e.g. 0.01) into the detector folder's config."),
    ] = None,
    quiet: QuietOption = False,
    precision: PrecisionOption = Precision.auto,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
) -> None:
    """Accuracy and AP per benchmark subset, with calibration thresholds for 1% and 5% FPR."""
    import json
    import sys

    from aidetect.openmp import shorten_spin

    shorten_spin()  # before torch loads OpenMP: the decoders share the model's cores

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from aidetect.atomic import atomic_write_text
    from aidetect.cli.console import download_notice, err_console
    from aidetect.devices import resolve_device
    from aidetect.errors import UsageError
    from aidetect.evaluate import (
        evaluate,
        real_images_needed,
        too_few_real_images,
        write_threshold,
    )
    from aidetect.loading import load_detector
    from aidetect.metrics import CALIBRATION_FPRS

    torch_device = resolve_device(device)
    loaded = load_detector(weights, device=str(torch_device),
                           on_download=download_notice(quiet=quiet))
    if calibrate is not None and loaded.source != "folder":
        raise UsageError(
            f"--calibrate writes into a local detector folder, and {weights} is a "
            f"{loaded.source} reference: save a local copy of it (a folder with config.json and "
            "model.safetensors) and pass that folder to --weights"
        )
    extra = [calibrate] if calibrate is not None else []  # 0 is a rate too
    fprs = tuple(dict.fromkeys([*CALIBRATION_FPRS, *extra]))
    score_cache = None if no_cache else _eval_cache(
        loaded, torch_device, precision=precision.value, cache=cache, quiet=quiet,
        perturbations={"jpeg_quality": jpeg_quality, "blur_sigma": blur_sigma})
    with interruptions(), Progress(TextColumn("{task.description}"), BarColumn(),
                                   MofNCompleteColumn(), console=err_console,
                                   disable=quiet or not err_console.is_terminal,
                                   transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_progress(event) -> None:
            if event.subset not in tasks:
                name = escape(terminal_safe(event.subset))
                tasks[event.subset] = progress.add_task(name, total=event.total)
            progress.advance(tasks[event.subset], event.images)

        report = evaluate(
            loaded.detector, data, device=torch_device, batch_size=batch_size, workers=workers,
            jpeg_quality=jpeg_quality, blur_sigma=blur_sigma, fprs=fprs, on_progress=on_progress,
            precision=precision.value, score_cache=score_cache,
        )
    if score_cache is not None:
        score_cache.session.close()
    for failure in report.failures:
        err_console.print(f"[yellow]warning:[/] skipped {escape(terminal_safe(str(failure.path)))}"
                          f": {escape(terminal_safe(failure.reason))}", soft_wrap=True)
    model = {"reference": loaded.reference, "source": loaded.source, "path": loaded.path,
             "sha256": loaded.sha256, "revision": loaded.revision}
    document = report.to_dict(model)
    if calibrate is not None:
        chosen = next(c for c in report.calibration if c.fpr == calibrate)
        if too_few_real_images(chosen.n_real, calibrate):
            needed = real_images_needed(calibrate)
            advice = (f"{needed} or more give it some precision" if needed else "a rate of 0 "
                      "only puts the threshold above the highest real score seen")
            err_console.print(
                f"[yellow]warning:[/] a {calibrate:.1%} false-positive rate estimated from "
                f"{chosen.n_real} real images is coarse: {advice}", soft_wrap=True)
        write_threshold(loaded.path, chosen.threshold, fpr=calibrate, calibration=chosen,
                        data=str(data))
        config_path = Path(loaded.path) / "config.json"
        document["calibrated"] = {"fpr": calibrate, "threshold": chosen.threshold,
                                  "n_real": chosen.n_real, "written_to": str(config_path)}
        if not quiet:
            err_console.print(f"threshold {chosen.threshold:.6g} ({calibrate:.1%} false "
                              f"positives, estimated from {chosen.n_real} real images) written "
                              f"to {escape(terminal_safe(str(config_path)))}", soft_wrap=True)

    if format is EvalFormat.table:
        if output is None:
            from rich.console import Console

            _render_table(report, Console(highlight=False))
        else:
            import io

            from rich.console import Console

            buffer = io.StringIO()
            _render_table(report, Console(file=buffer, width=120, highlight=False,
                                          color_system=None))
            atomic_write_text(output, buffer.getvalue())
        return
    if not quiet:
        _render_table(report, err_console)
    text = (json.dumps(document, indent=2) + "\n" if format is EvalFormat.json
            else _csv_text(report))
    if output is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(output, text)


def _eval_cache(loaded, device, *, precision: str, cache: str | None, quiet: bool,
                perturbations: dict):
    """The score cache for eval: its own key part (eval decodes and perturbs its inputs
    itself), so eval's scores and scan's never mix."""
    from aidetect.cli.console import print_warnings
    from aidetect.incremental import EvalCache, open_session
    from aidetect.precision import choose_precision

    session = open_session(weights=loaded.reference, device=str(device), precision=precision,
                           cache=cache, extra={"pipeline": "eval", **perturbations})
    print_warnings(session.warnings, quiet=quiet)
    return EvalCache(session, sha256=loaded.sha256,
                     preprocess=loaded.detector.preprocess_config, device_type=device.type,
                     precision=choose_precision(device, precision))
