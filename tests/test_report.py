"""What every report writer does (aidetect/report/): incomplete and empty scans, atomic output
and abort, odd file names and numbers, the summary line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from report_helpers import WIDTH, _Figures, _info, _scored, _validator, _write

from aidetect.errors import UsageError
from aidetect.report import (
    FORMATS,
    needs_thumbnails,
    open_report,
    summary_line,
)
from aidetect.report.data import CSV_FIELDS

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
