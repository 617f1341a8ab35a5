"""What a scan produces: one `ImageResult` per file, and the `ScanInfo` that heads a report.

Plain dataclasses with no torch import, shared by the scan engine (which fills them) and the
report writers (which render them). `to_dict` gives the documented JSON shape
(`aidetect/report_schema.json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aidetect.provenance.evidence import DECLARED_AI, Provenance

SCHEMA_VERSION = 1  # of the JSON / JSONL report layout; bumped on any incompatible change
LABEL_AI = "ai-generated"
LABEL_REAL = "real"


@dataclass
class ImageResult:
    """One file's outcome: a score, or an `error` saying why it has none."""

    path: str
    score: float | None = None  # probability of AI generation, in [0, 1]
    logit: float | None = None
    label: str | None = None  # LABEL_AI or LABEL_REAL, from the threshold
    format: str | None = None  # as decoded (by content, not extension): "JPEG", "PNG", ...
    mode: str | None = None  # Pillow mode of the file before conversion: "RGB", "I;16", ...
    width: int | None = None
    height: int | None = None
    error: str | None = None  # one line naming the problem; None when scored
    sha256: str | None = None  # of the file's content, hex; None when it could not be read
    cached: bool = False  # the score came from the score cache (aidetect.cache)
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG, for the HTML report only
    provenance: Provenance | None = None  # what the file declares; None when not read

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_ai(self) -> bool:
        return self.label == LABEL_AI

    @property
    def declares_ai(self) -> bool:
        """Whether the file's metadata declares it AI-generated (whatever its score)."""
        return self.provenance is not None and self.provenance.declared == DECLARED_AI

    def to_dict(self) -> dict[str, Any]:
        """The per-file object of the JSON, JSONL and CSV reports (every key always present)."""
        return {
            "path": self.path,
            "score": self.score,
            "logit": self.logit,
            "label": self.label,
            "format": self.format,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "error": self.error,
            "sha256": self.sha256,
            "cached": self.cached,
            "provenance": self.provenance.to_dict() if self.provenance is not None else None,
        }


RESULT_FIELDS = tuple(ImageResult(path="").to_dict())  # column order of the CSV report


@dataclass
class ModelInfo:
    """Where the detector's weights came from, for reproducibility."""

    reference: str  # what the user passed to --weights
    source: str  # "preset", "folder", "file" or "hub"
    sha256: str  # of the weights file (a preset: of its head file)
    revision: str | None = None  # the resolved Hub commit, for Hub references
    backbone: str | None = None
    preprocess: str | None = None  # "patches" or "center_crop"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "source": self.source,
            "sha256": self.sha256,
            "revision": self.revision,
            "backbone": self.backbone,
            "preprocess": self.preprocess,
        }


@dataclass
class Counts:
    """Tallies of a scan, kept up to date as results arrive."""

    scanned: int = 0  # files that got a score
    ai_generated: int = 0
    real: int = 0
    errors: int = 0
    declared_ai: int = 0  # files whose metadata declares AI generation, scored or not
    # Files the scan found to score, told before it starts; more than `total` when it was
    # interrupted. None: not told, taken as `total`.
    found: int | None = None

    @property
    def total(self) -> int:
        """Files with a result (a score or an error)."""
        return self.scanned + self.errors

    @property
    def found_files(self) -> int:
        return self.total if self.found is None else self.found

    def add(self, result: ImageResult) -> None:
        self.declared_ai += result.declares_ai
        if not result.ok:
            self.errors += 1
            return
        self.scanned += 1
        if result.is_ai:
            self.ai_generated += 1
        else:
            self.real += 1

    def to_dict(self) -> dict[str, int]:
        return {
            "found": self.found_files,
            "total": self.total,
            "scanned": self.scanned,
            "ai_generated": self.ai_generated,
            "real": self.real,
            "errors": self.errors,
            "declared_ai": self.declared_ai,
        }


@dataclass
class ScanInfo:
    """Everything a report says besides the per-file results."""

    tool_version: str
    model: ModelInfo
    device: str  # e.g. "cpu (2 threads)", "cuda:0 (NVIDIA H100, bf16)"
    threshold: float
    started: str  # ISO 8601, UTC
    finished: str | None = None
    # The scan ran to its end: False when it was interrupted (Ctrl-C) or stopped by a failure,
    # and the results are a prefix. Not "every file was scored": that is `all_scored`.
    complete: bool = True
    counts: Counts = field(default_factory=Counts)
    elapsed_seconds: float = 0.0
    processes: int = 1  # that scanned, under torchrun (aidetect.distributed_scan)

    @property
    def all_scored(self) -> bool:
        """The scan ran to its end and every file it found got a score (at least one): what
        exit code 0 means; False with errors, with nothing found, or when interrupted."""
        found = self.counts.found_files
        return self.complete and found > 0 and self.counts.scanned == found

    @property
    def images_per_second(self) -> float:
        return self.counts.total / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report's header: every top-level key of the JSON report except `results`."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "aidetect", "version": self.tool_version},
            "model": self.model.to_dict(),
            "device": self.device,
            "threshold": self.threshold,
            "started": self.started,
            "finished": self.finished,
            "complete": self.complete,
            "all_scored": self.all_scored,
            "counts": self.counts.to_dict(),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "processes": self.processes,
        }
