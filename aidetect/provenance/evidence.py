"""What a file declares about its origin: the `Provenance` record and the verdict rule.

Each piece of evidence is a small dict with a `source` ("c2pa", "xmp", "png-text", "exif" or
"comment"), what was found, and `declares`: what that piece alone claims ("ai-generated",
"capture" or None). The verdict is asymmetric: AI generation is believed from any intact
source (few have a reason to forge it); a camera capture only from a C2PA manifest signed by a
trusted signer (what a forger would claim). Absence of metadata is never evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DECLARED_AI = "ai-generated"
DECLARED_CAPTURE = "capture"
SOURCES = ("c2pa", "xmp", "png-text", "exif", "comment")
EXCERPT_CHARS = 200  # of a prompt or a workflow in a report: enough to recognise, never all


@dataclass
class Provenance:
    """One file's provenance: every piece of evidence found, the verdict, and the first
    problem met while reading (one line; the evidence read before and after it is kept)."""

    evidence: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    manifest_store: dict[str, Any] | None = field(default=None, repr=False)  # inspect only

    @property
    def declared(self) -> str | None:
        """"ai-generated", "capture" or None (nothing declared, or nothing believable)."""
        claims = {item.get("declares") for item in self.evidence}
        if DECLARED_AI in claims:
            return DECLARED_AI
        if DECLARED_CAPTURE in claims:
            return DECLARED_CAPTURE
        return None

    @property
    def declared_by(self) -> list[str]:
        """The sources of the evidence behind `declared`, in the order found."""
        declared = self.declared
        sources = [item["source"] for item in self.evidence if item.get("declares") == declared]
        return list(dict.fromkeys(sources)) if declared else []

    def to_dict(self) -> dict[str, Any]:
        """The `provenance` object of the JSON and JSONL reports."""
        return {"declared": self.declared, "evidence": self.evidence, "error": self.error}


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe(item: dict[str, Any]) -> str:
    """One piece of evidence in one line, for tables, CSV cells and `aidetect inspect`."""
    source = item["source"]
    if source == "c2pa":
        sources = ", ".join(item.get("digital_source_types") or []) or "no source type"
        codes = f"; failures: {', '.join(item['codes'])}" if item.get("codes") else ""
        signer = item.get("signer") or "unknown signer"
        return (f"C2PA {item['state']} ({signer}; {item.get('claim_generator') or '?'}): "
                f"{sources}{codes}")
    if "tool" in item:
        return f"{source} {item['key']}: {item['tool']}: {item.get('excerpt') or ''}".rstrip(": ")
    return f"{source} {item['key']}: {item.get('value')}"


def declaration_text(provenance: Provenance) -> str:
    """The verdict and its sources in words, e.g. "declares AI-generated (C2PA valid, XMP)";
    empty when nothing is declared."""
    declared = provenance.declared
    if declared is None:
        return ""
    names = []
    for item in provenance.evidence:
        if item.get("declares") == declared:
            name = {"c2pa": "C2PA", "xmp": "XMP", "png-text": "PNG text", "exif": "EXIF",
                    "comment": "JPEG comment"}[item["source"]]
            if item["source"] == "c2pa":
                name += f" {item['state']}"
            elif item.get("tool"):
                name += f": {item['tool']}"
            names.append(name)
    return f"declares {declared} ({', '.join(dict.fromkeys(names))})"
