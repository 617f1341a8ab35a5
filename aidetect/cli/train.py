"""`aidetect train`, `aidetect finetune` and `aidetect eval`: option parsing and rendering.

The engine (aidetect.train, aidetect.evaluate) does the work and reports through events; this
module draws the progress bars on stderr and writes reports to stdout or a file.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import (
    DeviceOption,
    OutputOption,
    Precision,
    PrecisionOption,
    QuietOption,
    WeightsOption,
    WorkersOption,
)
from aidetect.config import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, LoraConfig, TrainConfig

_T = TrainConfig()
_L = LoraConfig()

TRAIN_EXAMPLES = """
Examples:

  aidetect train --data DATA --out runs/exp1            # stage 1 then stage 2, paper defaults

  aidetect train --data DATA --out runs/exp1 --resume   # after an interruption

  aidetect train --data progan --classes car,cat --val val --out runs/exp2

  torchrun --nproc_per_node 4 -m aidetect train --data DATA --out runs/exp3

DATA holds 0_real/ and 1_fake/ (or <class>/0_real and <class>/1_fake). The detector is
written to OUT (config.json, model.safetensors, README.md); checkpoints and metrics.jsonl to
OUT/train/.
"""

FINETUNE_EXAMPLES = """
Examples:

  aidetect finetune --weights runs/exp1 --data NEWGEN --out runs/exp2

  aidetect finetune --weights runs/exp1 --data NEWGEN --out runs/exp2 --resume
"""

EVAL_EXAMPLES = """
Examples:

  aidetect eval --weights runs/exp2 --data BENCH

  aidetect eval --weights runs/exp2 --data BENCH --format json --output eval.json

  aidetect eval --weights runs/exp2 --data BENCH --jpeg-quality 75 --blur-sigma 1

  aidetect eval --weights runs/exp2 --data BENCH --calibrate 0.01   # store the 1%-FPR threshold

BENCH holds one folder per subset, each with 0_real/ and 1_fake/ (or <class>/0_real, 1_fake).
"""

# --- options ---------------------------------------------------------------------------------
DataOption = Annotated[
    Path, typer.Option("--data", help="Training images: DATA/0_real, DATA/1_fake or "
                       "DATA/<class>/{0_real,1_fake}.", show_default=False)
]
OutOption = Annotated[
    Path, typer.Option("--out", help="Run folder: the detector, and train/ for checkpoints.",
                       show_default=False)
]
GlobalBatchOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1,
                      help="Images per optimiser step (the global batch under torchrun).")
]
EpochsOption = Annotated[int, typer.Option("--epochs", min=0, help="Stage-2 (DGS) epochs.")]
LrOption = Annotated[float, typer.Option("--lr", min=0.0, help="Adam learning rate.")]
LoraRankOption = Annotated[int, typer.Option("--lora-rank", min=1, help="LoRA rank.")]
LoraAlphaOption = Annotated[
    float, typer.Option("--lora-alpha", help="LoRA alpha (scaling = alpha / sqrt(rank)).")
]
LoraDropoutOption = Annotated[
    float, typer.Option("--lora-dropout", min=0.0, max=1.0, help="Dropout on LoRA's input.")
]
AlignOption = Annotated[
    float, typer.Option("--align-weight", min=0.0, help="Weight of the prior-alignment loss.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of every random choice.")]
SaveEveryOption = Annotated[
    int, typer.Option("--save-every", min=0, help="Steps between checkpoints (0: epoch ends).")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/train/checkpoint.pt.")
]
ValOption = Annotated[
    Path | None, typer.Option("--val", help="Validation folder (same layout), after each epoch.")
]
CaptionsOption = Annotated[
    Path | None,
    typer.Option("--captions", help="JSON mapping image paths (relative to DATA) to captions; "
                 "default: 'a photo of a <class>', or a generic prompt."),
]
ClassesOption = Annotated[
    str | None, typer.Option("--classes", help="Comma-separated class folders (default: all).")
]
BlurProbOption = Annotated[
    float, typer.Option("--blur-prob", min=0.0, max=1.0, help="Probability of Gaussian blur.")
]
BlurRangeOption = Annotated[
    tuple[float, float],
    typer.Option("--blur-range", help="Blur sigma range in px (two numbers).", show_default=True),
]
JpegProbOption = Annotated[
    float, typer.Option("--jpeg-prob", min=0.0, max=1.0,
                        help="Probability of JPEG re-compression.")
]
JpegRangeOption = Annotated[
    tuple[int, int],
    typer.Option("--jpeg-range", help="JPEG quality range (two integers, 1-100)."),
]


def _classes(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    names = tuple(c.strip() for c in value.split(",") if c.strip())
    return names or None


def _pretrained(value: str) -> str | None:
    return None if value.strip().lower() in ("none", "") else value


class _TrainDisplay:
    """Renders training events: a Rich progress bar per epoch on stderr, notes as log lines."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        from aidetect.cli.console import err_console

        self.console = err_console
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeRemainingColumn(),
            console=err_console,
            disable=quiet,
        )
        self.task = None
        self.started = 0.0
        self.images = 0

    def __enter__(self) -> _TrainDisplay:
        return self  # the bars start with the first epoch: an early error prints one line

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()

    def __call__(self, event) -> None:
        import time

        from aidetect.train import EpochEnd, EpochStart, Note, StepEnd

        if isinstance(event, Note):
            if event.warning:
                self.progress.console.print(f"[yellow]warning:[/] {event.message}")
            elif not self.quiet:
                self.progress.console.print(event.message)
        elif isinstance(event, EpochStart):
            if self.task is None:
                self.progress.start()
            name = "probe" if event.stage == 1 else "DGS"
            self.task = self.progress.add_task(
                f"stage {event.stage} ({name}) epoch {event.epoch + 1}/{event.epochs}",
                total=event.steps, completed=event.first_step, loss="-", rate="-",
            )
            self.started, self.images = time.perf_counter(), 0
        elif isinstance(event, StepEnd) and self.task is not None:
            self.images += event.images
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, completed=event.step, loss=f"{event.loss:.4f}",
                                 rate=f"{self.images / elapsed:.1f}")
        elif isinstance(event, EpochEnd) and event.val is not None and not self.quiet:
            v = event.val
            self.progress.console.print(
                f"validation after stage {event.stage} epoch {event.epoch + 1}: "
                f"acc {_pct(v['acc'])}, AP {_pct(v['ap'])}, real acc {_pct(v['r_acc'])}, "
                f"fake acc {_pct(v['f_acc'])}"
            )


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _run_job(job, quiet: bool) -> None:
    from aidetect.cli.console import err_console
    from aidetect.train import run_training

    with interruptions(), _TrainDisplay(quiet) as display:
        # Interrupted, the run resumes from its last checkpoint with --resume.
        result = run_training(job, on_event=display)
    if not quiet and not result.already_finished and result.main_process:
        skipped = f"; {len(result.skipped)} unreadable images skipped" if result.skipped else ""
        err_console.print(f"detector written to {result.out} ({result.global_step} steps{skipped})")


def _train_config(**values) -> TrainConfig:
    lora = LoraConfig(rank=values.pop("lora_rank"), alpha=values.pop("lora_alpha"),
                      dropout=values.pop("lora_dropout"))
    from aidetect.errors import UsageError

    lo, hi = values["blur_sigma"]
    if not 0 <= lo <= hi:
        raise UsageError(f"--blur-range {lo} {hi}: expected 0 <= low <= high")
    lo, hi = values["jpeg_quality"]
    if not 1 <= lo <= hi <= 100:
        raise UsageError(f"--jpeg-range {lo} {hi}: expected 1 <= low <= high <= 100")
    return TrainConfig(lora=lora, **values)


@app.command("train", epilog=TRAIN_EXAMPLES)
def train_command(
    data: DataOption,
    out: OutOption,
    backbone: Annotated[
        str, typer.Option("--backbone", help="open_clip model name (hf-hub: and local-dir: too).")
    ] = DEFAULT_BACKBONE,
    pretrained: Annotated[
        str, typer.Option("--pretrained", help="open_clip pretrained tag; none = random weights.")
    ] = DEFAULT_PRETRAINED,
    probe_epochs: Annotated[
        int, typer.Option("--probe-epochs", min=0, help="Stage-1 (linear probe) epochs.")
    ] = _T.probe_epochs,
    epochs: EpochsOption = _T.epochs,
    batch_size: GlobalBatchOption = _T.batch_size,
    lr: LrOption = _T.lr,
    lora_rank: LoraRankOption = _L.rank,
    lora_alpha: LoraAlphaOption = _L.alpha,
    lora_dropout: LoraDropoutOption = _L.dropout,
    align_weight: AlignOption = _T.align_weight,
    seed: SeedOption = _T.seed,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    save_every: SaveEveryOption = 500,
    resume: ResumeOption = False,
    val: ValOption = None,
    captions: CaptionsOption = None,
    classes: ClassesOption = None,
    blur_prob: BlurProbOption = _T.blur_prob,
    blur_range: BlurRangeOption = _T.blur_sigma,
    jpeg_prob: JpegProbOption = _T.jpeg_prob,
    jpeg_range: JpegRangeOption = _T.jpeg_quality,
    quiet: QuietOption = False,
) -> None:
    """Train a detector with the DGS-Net recipe: linear probe, then LoRA with gradient surgery."""
    from aidetect.train import TrainJob

    config = _train_config(
        probe_epochs=probe_epochs, epochs=epochs, batch_size=batch_size, lr=lr,
        align_weight=align_weight, seed=seed, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, blur_prob=blur_prob, blur_sigma=tuple(blur_range),
        jpeg_prob=jpeg_prob, jpeg_quality=tuple(jpeg_range),
    )
    job = TrainJob(
        data=data, out=out, config=config, backbone=backbone, pretrained=_pretrained(pretrained),
        classes=_classes(classes), captions=captions, val=val, device=device, workers=workers,
        save_every=save_every, resume=resume,
    )
    _run_job(job, quiet)


@app.command("finetune", epilog=FINETUNE_EXAMPLES)
def finetune_command(
    weights: WeightsOption,
    data: DataOption,
    out: OutOption,
    epochs: EpochsOption = _T.epochs,
    batch_size: GlobalBatchOption = _T.batch_size,
    lr: LrOption = _T.lr,
    lora_rank: LoraRankOption = _L.rank,
    lora_alpha: LoraAlphaOption = _L.alpha,
    lora_dropout: LoraDropoutOption = _L.dropout,
    align_weight: AlignOption = _T.align_weight,
    seed: SeedOption = _T.seed,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    save_every: SaveEveryOption = 500,
    resume: ResumeOption = False,
    val: ValOption = None,
    captions: CaptionsOption = None,
    classes: ClassesOption = None,
    blur_prob: BlurProbOption = _T.blur_prob,
    blur_range: BlurRangeOption = _T.blur_sigma,
    jpeg_prob: JpegProbOption = _T.jpeg_prob,
    jpeg_range: JpegRangeOption = _T.jpeg_quality,
    quiet: QuietOption = False,
) -> None:
    """Teach an existing detector new generators: DGS stage 2 with the old detector as teacher."""
    from aidetect.train import TrainJob

    config = _train_config(
        probe_epochs=0, epochs=epochs, batch_size=batch_size, lr=lr, align_weight=align_weight,
        seed=seed, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        blur_prob=blur_prob, blur_sigma=tuple(blur_range), jpeg_prob=jpeg_prob,
        jpeg_quality=tuple(jpeg_range),
    )
    job = TrainJob(
        data=data, out=out, config=config, weights=weights, classes=_classes(classes),
        captions=captions, val=val, device=device, workers=workers, save_every=save_every,
        resume=resume,
    )
    _run_job(job, quiet)


# --- eval ------------------------------------------------------------------------------------
class EvalFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _render_table(report, console) -> None:
    from rich.table import Table

    table = Table(title=f"threshold {report.threshold:.6g}", title_justify="left")
    for column in ("subset", "acc", "AP", "real acc", "fake acc", "real", "fake"):
        table.add_column(column, justify="left" if column == "subset" else "right")
    for result in report.subsets:
        s = result.scores
        table.add_row(result.name, _pct(s.acc), _pct(s.ap), _pct(s.r_acc), _pct(s.f_acc),
                      str(s.n_real), str(s.n_fake))
    m = report.mean
    table.add_section()
    table.add_row("mean", _pct(m["acc"]), _pct(m["ap"]), _pct(m["r_acc"]), _pct(m["f_acc"]),
                  str(sum(r.scores.n_real for r in report.subsets)),
                  str(sum(r.scores.n_fake for r in report.subsets)))
    console.print(table)
    for c in report.calibration:
        console.print(
            f"threshold for {c.fpr:.0%} false positives: {c.threshold:.6g} "
            f"(real flagged {_pct(c.observed_fpr)}, fake detected {_pct(c.tpr)}, "
            f"{c.n_real} real images)"
        )
    if report.failures:
        console.print(f"[yellow]{len(report.failures)} unreadable images skipped[/]")


def _csv_text(report) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "acc", "ap", "r_acc", "f_acc", "n_real", "n_fake"])
    for result in report.subsets:
        row = result.to_dict()
        writer.writerow([row[k] for k in ("name", "acc", "ap", "r_acc", "f_acc", "n_real",
                                          "n_fake")])
    m = report.mean
    writer.writerow(["mean", m["acc"], m["ap"], m["r_acc"], m["f_acc"],
                     sum(r.scores.n_real for r in report.subsets),
                     sum(r.scores.n_fake for r in report.subsets)])
    return buffer.getvalue()


@app.command("eval", epilog=EVAL_EXAMPLES)
def eval_command(
    weights: WeightsOption,
    data: Annotated[
        Path, typer.Option("--data", help="Benchmark folder: BENCH/<subset>/{0_real,1_fake}.",
                           show_default=False)
    ],
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
) -> None:
    """Accuracy and AP per benchmark subset, with calibration thresholds for 1% and 5% FPR."""
    import json
    import sys

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from aidetect.atomic import atomic_write_text
    from aidetect.cli.console import err_console
    from aidetect.devices import resolve_device
    from aidetect.errors import UsageError
    from aidetect.evaluate import evaluate, write_threshold
    from aidetect.hub import load_detector
    from aidetect.metrics import CALIBRATION_FPRS

    torch_device = resolve_device(device)
    loaded = load_detector(weights, device=str(torch_device))
    if calibrate is not None and loaded.source != "folder":
        raise UsageError(
            f"--calibrate writes into a local detector folder, and {weights} is a "
            f"{loaded.source} reference: save a local copy of it (a folder with config.json and "
            "model.safetensors) and pass that folder to --weights"
        )
    extra = [calibrate] if calibrate is not None else []  # 0 is a rate too
    fprs = tuple(dict.fromkeys([*CALIBRATION_FPRS, *extra]))
    with interruptions(), Progress(TextColumn("{task.description}"), BarColumn(),
                                   MofNCompleteColumn(), console=err_console, disable=quiet,
                                   transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_progress(event) -> None:
            if event.subset not in tasks:
                tasks[event.subset] = progress.add_task(event.subset, total=event.total)
            progress.advance(tasks[event.subset], event.images)

        report = evaluate(
            loaded.detector, data, device=torch_device, batch_size=batch_size, workers=workers,
            jpeg_quality=jpeg_quality, blur_sigma=blur_sigma, fprs=fprs, on_progress=on_progress,
            precision=precision.value,
        )
    for failure in report.failures:
        err_console.print(f"[yellow]warning:[/] skipped {escape(str(failure.path))}: "
                          f"{escape(failure.reason)}", soft_wrap=True)
    model = {"reference": loaded.reference, "source": loaded.source, "path": loaded.path,
             "sha256": loaded.sha256, "revision": loaded.revision}
    document = report.to_dict(model)
    if calibrate is not None:
        chosen = next(c for c in report.calibration if c.fpr == calibrate)
        write_threshold(loaded.path, chosen.threshold, fpr=calibrate, calibration=chosen,
                        data=str(data))
        document["calibrated"] = {"fpr": calibrate, "threshold": chosen.threshold,
                                  "written_to": str(Path(loaded.path) / "config.json")}
        if not quiet:
            err_console.print(f"threshold {chosen.threshold:.6g} ({calibrate:.1%} false "
                              f"positives) written to {Path(loaded.path) / 'config.json'}")

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
