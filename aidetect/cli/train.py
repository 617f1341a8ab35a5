"""`aidetect train` and `aidetect finetune`: option parsing and rendering.

The engine (aidetect.train) does the work and reports through events; this module draws the
progress bars and log lines on stderr. File names in them go through `terminal_safe` and
Rich's `escape`: a name is shown as it is, never read as markup or terminal codes.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from aidetect.cli.app import app, interruptions
from aidetect.cli.options import (
    DeviceOption,
    QuietOption,
    WeightsOption,
    WorkersOption,
)
from aidetect.config import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, LoraConfig, TrainConfig
from aidetect.text import percent, terminal_safe

_T = TrainConfig()
_L = LoraConfig()

# Click re-wraps paragraphs to the terminal; "\b" keeps a block's lines (each under 80 columns).
TRAIN_EXAMPLES = """Examples:

\b
  aidetect train --data DATA --out runs/exp1          # stage 1, then stage 2
  aidetect train --data DATA --out runs/exp1 --resume # after an interruption
  aidetect train --data progan --classes car,cat --val val --out runs/exp2
  torchrun --nproc_per_node 4 -m aidetect train --data DATA --out runs/exp3

DATA holds 0_real/ and 1_fake/ (or <class>/0_real and <class>/1_fake). The detector is
written to OUT (config.json, model.safetensors, README.md); checkpoints and metrics.jsonl to
OUT/train/.
"""

FINETUNE_EXAMPLES = """Examples:

\b
  aidetect finetune --weights runs/exp1 --data NEWGEN --out runs/exp2
  aidetect finetune --weights runs/exp1 --data NEWGEN --out runs/exp2 --resume
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
class TrainPrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


TrainPrecisionOption = Annotated[
    TrainPrecision,
    typer.Option("--precision", help="auto: bf16 autocast on CUDA from Ampere on and on CPUs with "
                 "bf16 units, fp16 with loss scaling on older GPUs, fp32 elsewhere. LoRA, "
                 "heads, optimiser and loss stay fp32."),
]
CheckpointingOption = Annotated[
    bool, typer.Option("--checkpointing", help="Recompute the image tower's activations in "
                       "backward: less memory, about a third more time per stage-2 step.")
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

        from rich.markup import escape

        from aidetect.train import EpochEnd, EpochStart, Note, StepEnd

        if isinstance(event, Note):
            message = escape(terminal_safe(event.message))  # it holds file names
            if event.warning:
                self.progress.console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)
            elif not self.quiet:
                self.progress.console.print(message, soft_wrap=True)
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
                f"acc {percent(v['acc'])}, AP {percent(v['ap'])}, real acc {percent(v['r_acc'])}, "
                f"fake acc {percent(v['f_acc'])}"
            )


def _run_job(job, quiet: bool) -> None:
    from rich.markup import escape

    from aidetect.cli.console import err_console
    from aidetect.train import run_training

    with interruptions(), _TrainDisplay(quiet) as display:
        # Interrupted, the run resumes from its last checkpoint with --resume.
        result = run_training(job, on_event=display)
    if not quiet and not result.already_finished and result.main_process:
        skipped = f"; {len(result.skipped)} unreadable images skipped" if result.skipped else ""
        err_console.print(f"detector written to {escape(terminal_safe(str(result.out)))} "
                          f"({result.global_step} steps{skipped})", soft_wrap=True)


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


@app.command("train", epilog=TRAIN_EXAMPLES,
             short_help="Train a detector with the DGS-Net recipe.")
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
    precision: TrainPrecisionOption = TrainPrecision.auto,
    checkpointing: CheckpointingOption = False,
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
        save_every=save_every, resume=resume, precision=precision.value,
        checkpointing=checkpointing,
    )
    _run_job(job, quiet)


@app.command("finetune", epilog=FINETUNE_EXAMPLES,
             short_help="Teach an existing detector new generators.")
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
    precision: TrainPrecisionOption = TrainPrecision.auto,
    checkpointing: CheckpointingOption = False,
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
        resume=resume, precision=precision.value, checkpointing=checkpointing,
    )
    _run_job(job, quiet)
