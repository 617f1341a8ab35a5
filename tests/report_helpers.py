"""What the report writer tests share: results of every kind, the scan header, a report
written to a string, the cards of an HTML report, the schema's validator."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from aidetect.report import (
    open_report,
    report_schema,
)
from aidetect.results import (
    LABEL_AI,
    LABEL_REAL,
    ImageResult,
    ModelInfo,
    ScanInfo,
)

ROOT = Path(__file__).resolve().parents[1]
SHA = "3f" * 32
ODD_PATH = "photos/<b>&amp; \"quoted\" 'it' é 画像 [bold]x[/bold] :smile:.png"
WIDTH = 300  # wide enough that no path wraps in the table


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _scored(path: str, score: float, **extra) -> ImageResult:
    label = LABEL_AI if score >= 0.5 else LABEL_REAL
    return ImageResult(
        path=path, score=score, logit=round(score * 8 - 4, 3), label=label,
        format="PNG", mode="RGB", width=640, height=480, **extra,
    )


@pytest.fixture()
def results() -> list[ImageResult]:
    # In a scan's order (by path), which is not the order of the scores.
    return [
        _scored("a/real-low.png", 0.021),
        _scored("b/ai-high.png", 0.973, thumbnail=_jpeg((200, 30, 30))),
        ImageResult(path="c/broken.jpg", format="JPEG", error="cannot decode: truncated file"),
        _scored("d/real-mid.png", 0.31),
        _scored(ODD_PATH, 0.66),
        ImageResult(path="e/tiny.png", format="PNG", mode="L", width=20, height=20,
                    error="image too small: 20x20 px, at least 32x32 needed"),
    ]


def _info(results: list[ImageResult], *, complete: bool = True) -> ScanInfo:
    info = ScanInfo(
        tool_version="0.9.0",
        model=ModelInfo(reference="org/detector", source="hub", sha256=SHA, revision="a" * 40,
                        backbone="ViT-L-14-quickgelu", preprocess="patches"),
        device="cpu (2 threads)",
        threshold=0.5,
        started="2026-03-01T10:00:00Z",
        finished="2026-03-01T10:00:04Z",
        complete=complete,
        elapsed_seconds=4.0,
    )
    for result in results:
        info.counts.add(result)
    return info


def _write(fmt: str, results: list[ImageResult], info: ScanInfo, **kwargs) -> str:
    stream = io.StringIO()
    writer = open_report(fmt, output=None, stdout=stream, width=WIDTH, **kwargs)
    for result in results:
        writer.add(result)
    writer.finish(info)
    return stream.getvalue()


class _Figures(HTMLParser):
    """The result cards of an HTML report, with the image source of each."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict[str, str | None]] = []
        self.tags: set[str] = set()
        self.srcs: list[str] = []
        self.classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.add(tag)
        self.classes.extend((attributes.get("class") or "").split())
        if tag == "figure" and "result" in (attributes.get("class") or "").split():
            self.figures.append({**attributes, "img": None, "placeholder": None})
        elif tag == "img" and self.figures:
            self.figures[-1]["img"] = attributes["src"]
        elif tag == "div" and attributes.get("class") == "placeholder" and self.figures:
            self.figures[-1]["placeholder"] = "yes"
        for name in ("src", "href"):
            if attributes.get(name):
                self.srcs.append(attributes[name])


def _validator(ref: str | None = None) -> jsonschema.Draft202012Validator:
    schema = report_schema()
    if ref is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{ref}"}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
