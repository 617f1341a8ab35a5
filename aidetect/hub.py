"""Resolving a weights reference to a loaded detector, with where it came from.

A reference is a preset name, a local detector folder, or a Hub repository. Every command that
takes `--weights` goes through `load_detector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aidetect.errors import WeightsError


@dataclass
class LoadedDetector:
    """A detector and its provenance, for reports."""

    detector: object  # aidetect.Detector (kept untyped so this module imports without torch)
    reference: str  # what the user passed
    source: str  # "preset", "folder", "file" or "hub"
    path: str  # the local folder or file the weights were read from
    sha256: str  # of the weights file
    revision: str | None = None  # the resolved Hub commit, for Hub references


def load_detector(reference: str, *, device: str = "cpu") -> LoadedDetector:
    """Load the detector named by `reference` onto `device`, or raise `WeightsError`."""
    from aidetect.model import WEIGHTS_NAME, Detector

    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{reference}: no such detector folder")
    detector = Detector.from_pretrained(str(folder), map_location=str(device))
    return LoadedDetector(
        detector=detector,
        reference=reference,
        source="folder",
        path=str(folder),
        sha256=file_sha256(folder / WEIGHTS_NAME),
    )


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
