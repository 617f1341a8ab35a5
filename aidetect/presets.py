"""The preset registry: named detectors shipped with aidetect (`weights/presets.json`).

A preset is an open_clip backbone and pretrained tag (downloaded by open_clip into the Hugging
Face cache), a small head file shipped as package data (`aidetect.weights`), its preprocessing,
threshold, licence and citation. This module reads the registry; `aidetect.hub` builds the
detector. It imports neither torch nor open_clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from aidetect.errors import WeightsError

REGISTRY_NAME = "presets.json"
# Bumped when the registry's layout changes; the reader refuses newer files.
REGISTRY_FORMAT = 1
_REQUIRED = ("backbone", "pretrained", "head", "head_sha256", "preprocess", "threshold",
             "license", "license_file", "citation")


@dataclass(frozen=True)
class Preset:
    """One registry entry; `head_path` and `license_path` are files of the installed package."""

    name: str
    description: str
    backbone: str  # open_clip model name
    pretrained: str  # open_clip pretrained tag (the weights open_clip downloads)
    head_path: Path  # safetensors with `weight` (1, D) and `bias` (1,)
    head_sha256: str
    preprocess: dict[str, Any]  # aidetect.config.PreprocessConfig fields
    threshold: float
    license: str
    license_path: Path
    citation: str


def weights_dir() -> Path:
    """The installed `aidetect.weights` package folder (the top-level weights/ of a checkout)."""
    # A wheel and an editable install both map the package to a real folder on disk. Run from a
    # source checkout without installing (`python -m aidetect` in a clone), the package is not
    # mapped: the checkout's own weights/ beside aidetect/ is the same folder.
    try:
        return Path(str(resources.files("aidetect.weights")))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parent.parent / "weights"
        if (checkout / REGISTRY_NAME).is_file():
            return checkout
        raise WeightsError(
            "the preset registry (package aidetect.weights) is not installed: "
            "run `pip install -e .` in the checkout, or reinstall aidetect"
        ) from None


@lru_cache(maxsize=1)
def load_presets() -> dict[str, Preset]:
    """Every preset of the installed registry, by name."""
    folder = weights_dir()
    path = folder / REGISTRY_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: the preset registry is missing; reinstall aidetect") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: the preset registry is not valid JSON ({error})") from None
    if document.get("format_version", 0) > REGISTRY_FORMAT:
        raise WeightsError(f"{path}: written for a newer aidetect; upgrade aidetect")
    presets = {}
    for name, entry in document.get("presets", {}).items():
        missing = [key for key in _REQUIRED if key not in entry]
        if missing:
            raise WeightsError(f"{path}: preset {name!r} lacks {', '.join(missing)}")
        presets[name] = Preset(
            name=name,
            description=entry.get("description", ""),
            backbone=entry["backbone"],
            pretrained=entry["pretrained"],
            head_path=folder / entry["head"],
            head_sha256=entry["head_sha256"],
            preprocess=dict(entry["preprocess"]),
            threshold=float(entry["threshold"]),
            license=entry["license"],
            license_path=folder / entry["license_file"],
            citation=entry["citation"],
        )
    return presets


def preset_names() -> list[str]:
    return sorted(load_presets())


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a `WeightsError` that lists the known ones."""
    presets = load_presets()
    if name not in presets:
        raise WeightsError(
            f"unknown preset {name!r}: choose one of {', '.join(sorted(presets))}, or pass "
            "--weights PATH or hf://owner/name"
        )
    return presets[name]
