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

from aidetect.dataset import ImageSet

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
