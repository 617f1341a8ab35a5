"""The report writers (aidetect/report.py): every format, its schema, atomic output, Ctrl-C."""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from aidetect.errors import UsageError
from aidetect.report import (
    FORMATS,
    TableWriter,
    needs_thumbnails,
    open_report,
    report_schema,
    summary_line,
)
from aidetect.report.base import PROVENANCE_COLUMNS
from aidetect.report.data import CSV_FIELDS
from aidetect.results import (
    LABEL_AI,
    LABEL_REAL,
    RESULT_FIELDS,
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


# --- JSON ------------------------------------------------------------------------------------


def test_json_lists_every_file_once_in_add_order_and_matches_the_schema(results) -> None:
    info = _info(results)
    report = json.loads(_write("json", results, info))
    _validator().validate(report)
    assert [r["path"] for r in report["results"]] == [r.path for r in results]
    assert report["results"] == [r.to_dict() for r in results]
    assert {k: v for k, v in report.items() if k != "results"} == info.to_dict()
    assert report["model"]["sha256"] == SHA and report["model"]["revision"] == "a" * 40
    counts = report["counts"]
    assert counts == {"found": 6, "total": 6, "scanned": 4, "ai_generated": 2, "real": 2,
                      "errors": 2, "declared_ai": 0}
    assert report["complete"] is True and report["all_scored"] is False  # 2 errors


def test_the_schema_rejects_what_the_writers_never_write(results) -> None:
    report = json.loads(_write("json", results, _info(results)))
    validator = _validator()
    broken = [
        {k: v for k, v in report.items() if k != "results"},
        {**report, "extra": 1},
        {**report, "model": {**report["model"], "sha256": "not-a-hash"}},
        {**report, "results": [{**report["results"][0], "label": "maybe"}]},
        {**report, "results": [{**report["results"][0], "score": None}]},  # scored, no score
        {**report, "results": [{**report["results"][2], "score": 0.5}]},  # error with a score
        {**report, "results": [{k: v for k, v in report["results"][0].items() if k != "error"}]},
    ]
    for document in broken:
        assert not validator.is_valid(document)


def test_the_schema_documents_every_field() -> None:
    schema = report_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(node: dict) -> None:
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description") or sub.get("$ref"), name
            walk(sub)

    walk(schema)
    walk(schema["$defs"]["result"])
    assert tuple(schema["$defs"]["result"]["required"]) == RESULT_FIELDS
    header = ScanInfo(tool_version="x", model=ModelInfo("p", "preset", SHA), device="cpu",
                      threshold=0.5, started="2026-03-01T10:00:00Z").to_dict()
    assert set(schema["required"]) == {*header, "results"}


def test_the_schema_is_package_data() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"aidetect" = ["report_schema.json"]' in package_data
    assert (ROOT / "aidetect" / "report_schema.json").is_file()


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_streams_each_line_at_add_then_a_summary(results) -> None:
    info = _info(results)
    stream = io.StringIO()
    writer = open_report("jsonl", output=None, stdout=stream)
    for count, result in enumerate(results, start=1):
        writer.add(result)
        lines = stream.getvalue().splitlines()
        assert len(lines) == count  # written before the next result, not at finish
        assert json.loads(lines[-1]) == result.to_dict()
    writer.finish(info)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == len(results) + 1
    assert [line["path"] for line in lines[:-1]] == [r.path for r in results]
    per_file = _validator("result")
    for line in lines[:-1]:
        per_file.validate(line)
    assert list(lines[-1]) == ["summary"]
    assert lines[-1]["summary"] == info.to_dict()
    _validator().validate({**lines[-1]["summary"], "results": lines[:-1]})


def test_jsonl_to_a_file_appears_only_at_finish(results, tmp_path: Path) -> None:
    target = tmp_path / "scan.jsonl"
    target.write_text("previous report\n")
    stream = io.StringIO()
    writer = open_report("jsonl", output=target, stdout=stream)
    for result in results:
        writer.add(result)
    # A reader meanwhile sees the previous report whole, and nothing goes to stdout.
    assert target.read_text() == "previous report\n"
    assert len(list(tmp_path.iterdir())) == 2  # the output and one temp file
    writer.finish(_info(results))
    assert [p.name for p in tmp_path.iterdir()] == ["scan.jsonl"]
    lines = target.read_text().splitlines()
    assert len(lines) == len(results) + 1 and "summary" in json.loads(lines[-1])
    assert stream.getvalue() == ""


# --- CSV -------------------------------------------------------------------------------------


def test_csv_has_the_result_columns_and_one_row_per_file(results) -> None:
    text = _write("csv", results, _info(results))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_FIELDS
    assert [row["path"] for row in rows] == [r.path for r in results]
    for row, result in zip(rows, results, strict=True):
        expected = {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in result.to_dict().items()
                    if k != "provenance"}
        # Provenance not read: its four text columns are empty.
        assert row == {**expected, **dict.fromkeys(PROVENANCE_COLUMNS, "")}
    assert rows[2]["score"] == "" and rows[2]["error"] == "cannot decode: truncated file"


def test_csv_guards_cells_a_spreadsheet_would_run_as_formulas() -> None:
    names = ['=HYPERLINK("evil.example","click").png', "+1.png", "-x.png", "@SUM(A1).png",
             "\tx.png", "\rx.png", "plain.png", "a=b.png"]
    results = [_scored(name, 0.9) for name in names]
    results[0].logit = -3.5  # a negative number stays a number
    results.append(ImageResult(path="e.png", error="=cmd|' /C calc'!A0"))
    info = _info(results)
    rows = list(csv.DictReader(io.StringIO(_write("csv", results, info), newline="")))
    assert [row["path"] for row in rows] == [
        "'" + n if n[0] in "=+-@\t\r" else n for n in names] + ["e.png"]
    assert rows[0]["logit"] == "-3.5" and rows[-1]["error"] == "'=cmd|' /C calc'!A0"
    document = json.loads(_write("json", results, info))  # JSON keeps the exact strings
    assert [r["path"] for r in document["results"]][:len(names)] == names


def test_spreadsheet_cell_leaves_numbers_and_plain_text() -> None:
    from aidetect.text import spreadsheet_cell, spreadsheet_row

    assert spreadsheet_cell(-1.5) == -1.5 and spreadsheet_cell(0) == 0
    assert spreadsheet_cell("") == "" and spreadsheet_cell("mean") == "mean"
    assert spreadsheet_row(["-sdxl", 0.5, -2]) == ["'-sdxl", 0.5, -2]


# --- table -----------------------------------------------------------------------------------


def test_table_lists_ai_then_real_then_errors_with_the_summary(results) -> None:
    info = _info(results)
    text = _write("table", results, info)
    for result in results:
        assert text.count(result.path) == 1, result.path  # markup and emoji codes print as is
    order = ["b/ai-high.png", ODD_PATH, "d/real-mid.png", "a/real-low.png", "c/broken.jpg",
             "e/tiny.png"]
    positions = [text.index(path) for path in order]
    assert positions == sorted(positions)
    assert "0.973" in text and "640x480" in text and "20x20" in text
    assert "cannot decode: truncated file" in text
    assert text.rstrip().splitlines()[-1] == summary_line(info)
    assert "incomplete" not in text.lower()


def test_table_caps_real_rows_but_counts_the_rest() -> None:
    results = [_scored("ai.png", 0.9)] + [_scored(f"real-{i:02d}.png", i / 100) for i in range(30)]
    stream = io.StringIO()
    writer = TableWriter(output=None, stdout=stream, width=WIDTH, max_real_rows=5)
    for result in results:
        writer.add(result)
    writer.finish(_info(results))
    text = stream.getvalue()
    assert "ai.png" in text
    shown = [f"real-{i:02d}.png" for i in range(25, 30)]
    assert all(path in text for path in shown)
    assert "real-24.png" not in text
    assert "... 25 more real images" in text


def test_table_escapes_control_characters_in_paths() -> None:
    results = [_scored("evil\x1b[2J\nname.png", 0.9)]
    text = _write("table", results, _info(results))
    assert "\x1b" not in text
    assert "evil\\x1b[2J\\nname.png" in text


# --- HTML ------------------------------------------------------------------------------------


def test_html_has_one_card_per_file_sorted_by_score_with_errors_last(results) -> None:
    info = _info(results)
    text = _write("html", results, info)
    parser = _Figures()
    parser.feed(text)
    parser.close()
    figures = parser.figures
    assert sorted(f["data-path"] for f in figures) == sorted(r.path for r in results)
    assert [f["data-path"] for f in figures] == [
        "b/ai-high.png", ODD_PATH, "d/real-mid.png", "a/real-low.png", "c/broken.jpg",
        "e/tiny.png",
    ]
    by_path = {f["data-path"]: f for f in figures}
    assert by_path["b/ai-high.png"]["data-label"] == "ai-generated"
    assert float(by_path["b/ai-high.png"]["data-score"]) == 0.973
    assert by_path["a/real-low.png"]["data-label"] == "real"
    assert by_path["c/broken.jpg"]["data-label"] == "error"
    assert "data-score" not in by_path["c/broken.jpg"]
    # The thumbnail is embedded byte for byte; the others get a placeholder.
    src = by_path["b/ai-high.png"]["img"]
    assert src.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == results[1].thumbnail
    assert all(f["placeholder"] for f in figures if f["data-path"] != "b/ai-high.png")
    # The odd path is escaped: the parser gives it back whole and it adds no markup.
    assert "<b>" not in text and "&lt;b&gt;&amp;amp;" in text
    assert "b" not in parser.tags


def test_html_is_self_contained_with_the_summary_on_top(results) -> None:
    info = _info(results)
    text = _write("html", results, info)
    parser = _Figures()
    parser.feed(text)
    assert all(src.startswith("data:") for src in parser.srcs)
    assert not {"script", "link", "iframe", "object"} & parser.tags
    assert "http://" not in text and "https://" not in text
    assert "default-src 'none'" in text  # the page itself forbids any fetch
    header = text[: text.index('<main class="results">')]
    for fact in (SHA, "a" * 40, "org/detector", "cpu (2 threads)", "0.5", "2026-03-01T10:00:00Z",
                 "2026-03-01T10:00:04Z", "0.9.0"):
        assert fact in header, fact
    assert summary_line(info) in header
    assert "incomplete" not in parser.classes


# --- every format ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_interrupted_scan_is_marked_incomplete(fmt: str, results) -> None:
    done = results[:3]  # Ctrl-C after three of the 60 files found: the report covers them
    info = _info(done, complete=False)
    info.counts.found = 60
    text = _write(fmt, done, info)
    if fmt in ("json", "jsonl"):
        lines = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else []
        head = json.loads(text) if fmt == "json" else lines[-1]["summary"]
        assert head["complete"] is False and head["all_scored"] is False
        assert (head["counts"]["found"], head["counts"]["total"]) == (60, 3)
        assert fmt == "json" or len(lines) == 4
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == 3
    elif fmt == "table":
        assert ("Incomplete: the scan was interrupted after 3 of 60 files found; this report "
                "covers those 3.") in text
        assert text.rstrip().endswith("(incomplete: interrupted after 3 of 60 files found)")
    else:
        parser = _Figures()
        parser.feed(text)
        assert "incomplete" in parser.classes and "Incomplete:" in text
        assert "interrupted after 3 of 60 files found" in text
        assert "no (1 error, 57 not reached)" in text  # the "all scored" row
        assert len(parser.figures) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_written_atomically_and_nothing_goes_to_stdout(
    fmt: str, results, tmp_path: Path
) -> None:
    target = tmp_path / "reports" / f"scan.{fmt}"  # the folder is created
    stream = io.StringIO()
    writer = open_report(fmt, output=target, stdout=stream, width=WIDTH)
    for result in results:
        writer.add(result)
    assert not target.exists()
    writer.finish(_info(results))
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert stream.getvalue() == ""
    assert target.read_text(encoding="utf-8") == _write(fmt, results, _info(results))


@pytest.mark.parametrize("fmt", FORMATS)
def test_abort_leaves_no_file_and_keeps_an_existing_one(fmt: str, results, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / f"scan.{fmt}"
    writer = open_report(fmt, output=fresh, stdout=io.StringIO())
    writer.add(results[0])
    writer.abort()
    assert list(fresh.parent.iterdir()) == []

    existing = tmp_path / f"old.{fmt}"
    existing.write_text("the previous report\n")
    with open_report(fmt, output=existing, stdout=io.StringIO()) as writer:
        writer.add(results[0])  # leaving the block without finish() aborts
    assert existing.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [existing.name]
    writer.abort()  # a second abort is harmless
    with pytest.raises(RuntimeError):
        writer.add(results[1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_scan_gives_a_valid_report(fmt: str) -> None:
    info = _info([])
    text = _write(fmt, [], info)
    if fmt == "json":
        report = json.loads(text)
        _validator().validate(report)
        assert report["results"] == []
    elif fmt == "jsonl":
        assert [json.loads(line) for line in text.splitlines()] == [{"summary": info.to_dict()}]
    elif fmt == "csv":
        assert text.splitlines() == [",".join(CSV_FIELDS)]
    elif fmt == "table":
        assert text.strip() == summary_line(info)
    else:
        parser = _Figures()
        parser.feed(text)
        assert parser.figures == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_undecodable_file_names_and_non_finite_numbers_do_not_break_a_report(
    fmt: str, tmp_path: Path
) -> None:
    name = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 name on Linux
    results = [_scored(name, 0.8), _scored("nan.png", 0.7)]
    results[1].logit = float("inf")
    target = tmp_path / f"scan.{fmt}"
    writer = open_report(fmt, output=target, stdout=io.StringIO(), width=WIDTH)
    for result in results:
        writer.add(result)
    writer.finish(_info(results))
    text = target.read_text(encoding="utf-8")  # valid UTF-8, the odd byte shown as \xe9
    if fmt == "json":
        report = json.loads(text)
        _validator().validate(report)
        assert report["results"][0]["path"] == "caf\\xe9.png"
        assert report["results"][1]["logit"] is None
    elif fmt == "jsonl":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[0]["path"] == "caf\\xe9.png" and lines[1]["logit"] is None
    else:
        assert "caf\\xe9.png" in text


def test_open_report_rejects_an_unknown_format_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown report format 'xml'"):
        open_report("xml", output=None, stdout=io.StringIO())
    with pytest.raises(UsageError, match="is a folder"):
        open_report("json", output=tmp_path, stdout=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_only_html_needs_thumbnails() -> None:
    assert [fmt for fmt in FORMATS if needs_thumbnails(fmt)] == ["html"]


# --- summary line ----------------------------------------------------------------------------


def test_summary_line_gives_counts_device_time_and_rate(results) -> None:
    info = _info(results)
    assert summary_line(info) == (
        "4 scanned: 2 AI-generated, 2 real, 2 errors · cpu (2 threads) · 4.0 s · 1.5 images/s"
    )
    one = _info([results[0], results[2]], complete=False)
    one.elapsed_seconds = 125.0
    assert summary_line(one) == (
        "1 scanned: 0 AI-generated, 1 real, 1 error · cpu (2 threads) · 2 min 5 s"
        " · 0.02 images/s (incomplete: interrupted after 2 of 2 files found)"
    )


def test_the_number_of_processes_is_in_json_jsonl_and_the_html_header(results) -> None:
    info = _info(results)
    info.processes = 2
    assert json.loads(_write("json", results, info))["processes"] == 2
    last = _write("jsonl", results, info).splitlines()[-1]
    assert json.loads(last)["summary"]["processes"] == 2
    html_text = _write("html", results, info)
    header = html_text[: html_text.index('<main class="results">')]
    assert '<dt>processes</dt><dd class="processes">2</dd>' in header
    assert _info(results).to_dict()["processes"] == 1


def test_csv_writes_booleans_as_json_does():
    import csv as csv_module
    import io as io_module

    writer = open_report("csv", output=None, stdout=io_module.StringIO())
    writer.add(ImageResult(path="a.png", score=0.2, logit=-1.4, label=LABEL_REAL, cached=True))
    writer.add(ImageResult(path="b.png", error="truncated file"))
    text = writer.render(None)
    rows = list(csv_module.DictReader(io_module.StringIO(text)))
    assert [r["cached"] for r in rows] == ["true", "false"]
    assert rows[1]["score"] == "" and rows[0]["score"] == "0.2"
