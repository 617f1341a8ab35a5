"""The training state on disk: checkpoint.pt, metrics.jsonl, and every RNG's state.

Exact resume. Each epoch visits the data in a permutation seeded by (seed, stage, epoch), and
every random choice of an image is keyed by (seed, stage, epoch, index) (see dataset.py), so
the position in the data order is two integers. A checkpoint (written atomically every
`save_every` steps and at each epoch end) holds the trainable tensors, the optimiser, the RNG
states of every rank and that position; resuming rebuilds the frozen parts the way a fresh run
does, restores the rest, and skips the consumed batches without replaying them. On CPU the
resumed run ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aidetect.dataset import ImageSet
from aidetect.errors import UsageError

CHECKPOINT_FORMAT = 1
STATE_DIR = "train"  # OUT/train/: checkpoint.pt and metrics.jsonl, next to the detector files
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict[str, Any]:
    """Every RNG's state, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the run ---------------------------------------------------------------------------------
def files_digest(image_set: ImageSet) -> str:
    """A fingerprint of the training files and labels: resuming on other data is refused."""
    digest = hashlib.sha256()
    for sample in image_set.samples:
        digest.update(f"{sample.path.relative_to(image_set.root).as_posix()}\0{sample.label}\n"
                      .encode())
    return digest.hexdigest()



def to_cpu(value: Any) -> Any:
    """Tensors (in dicts, lists and tuples) moved to the CPU, for `torch.save`."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Save atomically: a kill at any moment leaves the previous checkpoint or this one."""
    from aidetect.atomic import atomic_open

    with atomic_open(path, "wb") as handle:
        torch.save(to_cpu(checkpoint), handle)


def read_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def truncate_metrics(path: Path, records: int) -> None:
    """Keep the first `records` lines of metrics.jsonl: the steps after the checkpoint will be
    run again (and a line torn by a kill goes too)."""
    from aidetect.atomic import atomic_write_text

    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record.get("record", 0) > records:
            break
        kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def check_recipe(path: Path, checkpoint: dict[str, Any], recipe: dict[str, Any]) -> None:
    """Refuse to resume with settings that decide the result other than the checkpoint's."""
    saved = checkpoint["recipe"]
    diffs = [
        f"{key} {value!r} (checkpoint: {saved.get(key)!r})"
        for key, value in recipe.items()
        if saved.get(key) != value
    ]
    if diffs:
        raise UsageError(f"{path}: cannot resume with different settings: " + "; ".join(diffs))


def trainable_state(detector, *, probe_head: nn.Module | None,
                    text_head: nn.Module | None) -> dict[str, Any]:
    """The tensors training changes: heads and LoRA factors (the frozen tower is rebuilt)."""
    state: dict[str, Any] = {"head": detector.head.state_dict()}
    if probe_head is not None:
        state["probe_head"] = probe_head.state_dict()
    if text_head is not None:
        state["text_head"] = text_head.state_dict()
    lora = {
        name: param.detach()
        for name, param in detector.visual.named_parameters()
        if ".lora_" in name
    }
    if lora:
        state["lora"] = lora
    return state


def load_trainable_state(state: dict[str, Any], detector, *, probe_head: nn.Module | None,
                         text_head: nn.Module | None) -> None:
    detector.head.load_state_dict(state["head"])
    if "probe_head" in state:
        probe_head.load_state_dict(state["probe_head"])
    if "text_head" in state:
        text_head.load_state_dict(state["text_head"])
    if "lora" in state:
        params = dict(detector.visual.named_parameters())
        with torch.no_grad():
            for name, tensor in state["lora"].items():
                params[name].copy_(tensor)


def make_recipe(job, *, files: str, captions: str, precision: str,
                weights_sha256: str | None) -> dict[str, Any]:
    """What decides the result of `job` (a `TrainJob`); a resumed run must match it."""
    cfg, train = job.config, job.kind == "train"
    return {
        "kind": job.kind,
        "data": str(Path(job.data).resolve()),
        "files": files,
        "backbone": job.backbone if train else None,
        "pretrained": job.pretrained if train else None,
        "weights_sha256": weights_sha256,
        "probe_epochs": cfg.probe_epochs if train else 0,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "betas": list(cfg.betas),
        "align_weight": cfg.align_weight,
        "lora_rank": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "seed": cfg.seed,
        "precision": precision,
        "captions": captions,
        "blur_prob": cfg.blur_prob,
        "blur_sigma": list(cfg.blur_sigma),
        "jpeg_prob": cfg.jpeg_prob,
        "jpeg_quality": list(cfg.jpeg_quality),
    }
