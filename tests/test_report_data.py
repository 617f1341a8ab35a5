"""The machine report formats (aidetect/report/data.py): JSON and its schema, JSONL, CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
from report_helpers import ROOT, SHA, _info, _scored, _validator, _write

from aidetect.report import (
    open_report,
    report_schema,
)
from aidetect.report.base import PROVENANCE_COLUMNS
from aidetect.report.data import CSV_FIELDS
from aidetect.results import (
    LABEL_REAL,
    RESULT_FIELDS,
    ImageResult,
    ModelInfo,
    ScanInfo,
)

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
