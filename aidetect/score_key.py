"""What a score depends on, found without loading the model: the score cache's key.

Besides the file's content, a score depends on:
- the weights: the sha256 of the weights file (a preset's: of its head file) and the detector's
  config but its threshold (backbone, the open_clip tag a head-only detector builds on, LoRA);
- the preprocessing (`PreprocessConfig`; eval adds its perturbations as `extra`);
- the computation: device kind and precision, e.g. "cpu/bf16" (`compute_kind`, which asks
  `aidetect.precision.choose_precision`): a CPU score is not reused for a GPU scan;
- the versions of aidetect (decoding and preprocessing code), torch and open_clip (kernels,
  and the weights an open_clip tag names): an upgrade scores again once; and
  `SCORING_REVISION`, raised by any change that moves a score between releases.
The threshold is not part of it: the label is recomputed from the score.

`read_model_facts` reads the same files `aidetect.loading.load_detector` reads (config and weights
hash; for a Hub reference, the files huggingface_hub resolves, offline from its cache), without
torch; it returns None where loading would fail, so that the load reports why. `compute_kind`
needs torch only where the device cannot be known without it (`cuda_possible`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidetect.config import DEFAULT_THRESHOLD, PreprocessConfig
from aidetect.results import ModelInfo

# Raised with every change that makes the same file, weights and settings score differently
# (preprocessing arithmetic, the CPU's image groups), so that a cache filled by an earlier
# build of the same version is never served. 2: groups of 8 for narrow bf16 towers on the CPU,
# the spectral power as re^2 + im^2.
SCORING_REVISION = 2

# Files whose presence means torch may find a GPU: NVIDIA's driver, ROCm's, WSL2's GPU bridge.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


@dataclass(frozen=True)
class ModelFacts:
    """A weights reference as `load_detector` would resolve it, read without loading."""

    reference: str
    source: str  # "preset", "folder", "file" or "hub"
    path: str  # the weights file
    sha256: str
    config: dict[str, Any] = field(hash=False)  # the detector config the loader builds from
    revision: str | None = None

    @property
    def preprocess(self) -> PreprocessConfig:
        data = self.config.get("preprocess")
        return PreprocessConfig.from_dict(data) if data else PreprocessConfig()

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", DEFAULT_THRESHOLD))

    def model_info(self) -> ModelInfo:
        """The report's `model`, as a scan that loads the detector writes it."""
        return ModelInfo(reference=self.reference, source=self.source, sha256=self.sha256,
                         revision=self.revision, backbone=self.config.get("backbone"),
                         preprocess=self.preprocess.method)


@dataclass(frozen=True)
class ScoreKey:
    key: str  # hex sha256 of `description`
    description: str  # canonical JSON of everything in the key


def read_model_facts(reference: str, *, sha256_of: Callable[[Path], str | None]
                     ) -> ModelFacts | None:
    """The facts of `reference`, or None where `load_detector` would fail (it then says why).

    Args:
        reference: what --weights says.
        sha256_of: hashes a weights file (the cache's, with its stat fast path); None when the
            file cannot be read.

    Raises:
        WeightsError: as `load_detector` raises it for a reference that is not one, or a Hub
            repository that cannot be reached or is not cached offline.
    """
    from aidetect.config import CONFIG_NAME, WEIGHTS_NAME
    from aidetect.errors import WeightsError
    from aidetect.hub import fetch_hub_detector, weights_errors
    from aidetect.loading import check_config, parse_reference, read_single_file_config

    ref = parse_reference(reference)
    revision = None
    if ref.kind == "preset":
        from aidetect.presets import get_preset

        preset = get_preset(ref.target)
        digest = sha256_of(preset.head_path)
        if digest != preset.head_sha256:
            return None  # the load refuses a head that is not the registry's
        config = {"backbone": preset.backbone, "pretrained": preset.pretrained,
                  "preprocess": preset.preprocess, "threshold": preset.threshold}
        return ModelFacts(reference, "preset", str(preset.head_path), digest, config)
    if ref.kind == "file":
        weights = Path(ref.target)
        try:
            with weights_errors(reference):
                config = read_single_file_config(weights)
        except (OSError, WeightsError):
            return None
    else:
        if ref.kind == "hub":
            with weights_errors(reference, hub=True):
                folder, revision = fetch_hub_detector(ref.target, revision=ref.revision)
        else:
            folder = Path(ref.target)
        weights = folder / WEIGHTS_NAME
        try:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            check_config(config, str(folder / CONFIG_NAME), architecture=False)
        except (OSError, ValueError, WeightsError):  # ValueError: JSON, UTF-8
            return None
    digest = sha256_of(weights)
    if digest is None:
        return None
    return ModelFacts(reference, ref.kind, str(weights), digest, config, revision)


def cuda_possible() -> bool:
    """False where torch cannot find a GPU, known without importing it: Linux without GPU
    device files. Elsewhere (macOS, Windows) True: torch decides."""
    if platform.system() != "Linux":
        return True
    return any(os.path.exists(path) for path in _GPU_DEVICE_FILES)


def compute_kind(device: str, precision: str) -> tuple[str, Any]:
    """("cpu/bf16"-style kind, the torch device or None) for --device and --precision.

    Without torch for `cpu`, and for `auto` where `cuda_possible()` says no; otherwise the
    device is resolved as the scan resolves it (`aidetect.devices.resolve_device`, which raises
    `UsageError` for an unavailable one).
    """
    from aidetect.precision import choose_precision

    name = device.strip().lower()
    if name == "cpu" or (name == "auto" and not cuda_possible()):
        return f"cpu/{choose_precision('cpu', precision)}", None
    from aidetect.devices import resolve_device

    resolved = resolve_device(device)
    return f"{resolved.type}/{choose_precision(resolved, precision)}", resolved


def score_key(facts: ModelFacts, compute: str, *, extra: dict[str, Any] | None = None
              ) -> ScoreKey:
    """The key of every score computed with this model, on this kind of device and precision.

    `extra`: anything else the caller changes about the input (eval's JPEG quality and blur).
    """
    from aidetect import __version__

    config = {k: v for k, v in facts.config.items() if k not in ("threshold", "aidetect_version")}
    description = json.dumps({
        "aidetect": __version__,
        "scoring": SCORING_REVISION,
        "libraries": _library_versions(),
        "weights_sha256": facts.sha256,
        "config": config,
        "preprocess": facts.preprocess.to_dict(),
        "compute": compute,
        "extra": extra or {},
    }, sort_keys=True, separators=(",", ":"), default=str)
    return ScoreKey(hashlib.sha256(description.encode()).hexdigest(), description)


def _library_versions() -> dict[str, str]:
    """The installed versions of the libraries a score depends on, read without importing."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "open_clip_torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions
