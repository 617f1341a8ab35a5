"""Training, the public face: what to train (`TrainJob`), what it reports, `run_training`.

`run_training` trains DGS-Net's stage 1 (linear probe) and stage 2 (LoRA + gradient surgery),
or finetunes a detector (stage 2 only), into a folder that `scan`, `eval`, `finetune` and the
Hub accept as is (config.json, model.safetensors with LoRA merged, README.md); the training
state lives beside it in `OUT/train/` (checkpoint.pt, metrics.jsonl). The work is done by
`aidetect.trainer.Trainer`; the modules around it: `steps` (each step's loss, mixed
precision), `checkpoint` (the state on disk, exact resume), `distributed` (torchrun).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidetect.config import DEFAULT_BACKBONE, DEFAULT_PRETRAINED, LoraConfig, TrainConfig


# --- what to train ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainJob:
    """A training run. `weights` set: finetune that detector (stage 2 only).

    Args:
        data: the training folder (DATA/0_real, DATA/1_fake, or DATA/<class>/...).
        out: the run and detector folder.
        config: the recipe (paper defaults).
        backbone, pretrained: the open_clip image tower (train only); pretrained None is random.
        weights: a weights reference to start from (finetune).
        classes: class folders to use (all by default).
        captions: a JSON file mapping image paths (relative to `data`) to captions.
        val: a validation folder, evaluated after each epoch.
        device: auto, cpu, cuda or cuda:N (under torchrun, each rank takes cuda:LOCAL_RANK).
        workers: DataLoader worker processes per rank (None: `trainer.train_workers`).
        save_every: steps between checkpoints (0: epoch ends only).
        resume: continue from OUT/train/checkpoint.pt.
        precision: auto, fp32, bf16 or fp16 (`aidetect.steps.choose_precision`).
        checkpointing: recompute the image tower's activations in backward (less memory).
    """

    data: Path
    out: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    backbone: str = DEFAULT_BACKBONE
    pretrained: str | None = DEFAULT_PRETRAINED
    weights: str | None = None
    classes: tuple[str, ...] | None = None
    captions: Path | None = None
    val: Path | None = None
    device: str = "auto"
    workers: int | None = None
    save_every: int = 500
    resume: bool = False
    precision: str = "auto"
    checkpointing: bool = False

    @property
    def kind(self) -> str:
        return "finetune" if self.weights is not None else "train"


# --- events for the CLI (the engine never prints) --------------------------------------------
@dataclass(frozen=True)
class Note:
    message: str
    warning: bool = False


@dataclass(frozen=True)
class EpochStart:
    stage: int
    epoch: int  # 0-based
    epochs: int
    steps: int  # global batches in the epoch
    first_step: int  # > 0 when a resumed epoch skips consumed batches


@dataclass(frozen=True)
class StepEnd:
    stage: int
    epoch: int
    step: int  # 1-based within the epoch
    steps: int
    images: int  # images in this global batch
    loss: float


@dataclass(frozen=True)
class EpochEnd:
    stage: int
    epoch: int
    val: dict[str, Any] | None


Event = Note | EpochStart | StepEnd | EpochEnd


@dataclass
class TrainResult:
    out: Path
    global_step: int
    skipped: dict[str, str]  # unreadable training images: path -> reason
    validation: list[dict[str, Any]]
    already_finished: bool = False
    main_process: bool = True  # rank 0 (or the only process): the one that reports


def run_training(job: TrainJob, on_event: Callable[[Event], None] | None = None) -> TrainResult:
    """Train (or finetune, when `job.weights` is set) a detector into `job.out`."""
    from aidetect.trainer import Trainer

    return Trainer(job, on_event).run()


__all__ = [
    "EpochEnd",
    "EpochStart",
    "LoraConfig",
    "Note",
    "StepEnd",
    "TrainJob",
    "TrainResult",
    "run_training",
]
