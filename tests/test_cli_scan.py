"""`aidetect scan` end to end, in process through the console-script entry point: every report
format accounts for every file once, the exit codes and their precedence, stdin, Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
from cli_helpers import BAD, BOMB, GOOD, scan

from aidetect.report import report_schema


def names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


def test_json_report_has_every_file_once_and_fits_its_schema(capsys, photos, detector_dir):
    code, out, err = scan(capsys, str(photos), "--weights", str(detector_dir), "-f", "json",
                          *BOMB)
    assert code == 3  # two files could not be scored
    report = json.loads(out)
    jsonschema.validate(report, report_schema())
    assert names(r["path"] for r in report["results"]) == sorted(GOOD | BAD)
    errors = {Path(r["path"]).name: r["error"] for r in report["results"] if r["error"]}
    assert set(errors) == BAD and "symbolic link loop" in errors["loop.png"]
    assert errors["empty.png"] == "empty file" and "truncated" in errors["truncated.jpg"]
    assert "--max-pixels" in errors["bomb.png"] and "not a supported" in errors["text.jpg"]
    counts = report["counts"]
    assert counts == {"found": 18, "total": 18, "scanned": 11,
                      "ai_generated": counts["ai_generated"],
                      "real": 11 - counts["ai_generated"], "errors": 7, "declared_ai": 0}
    assert report["complete"] is True and report["all_scored"] is False  # 7 errors: exit 3
    modes = {Path(r["path"]).name: (r["format"], r["mode"]) for r in report["results"]}
    assert modes["cmyk.jpg"] == ("JPEG", "CMYK") and modes["deep.png"][1].startswith("I")
    assert modes["palette.gif"] == ("GIF", "P") and modes["gray.tiff"] == ("TIFF", "L")
    assert report["model"]["source"] == "folder" and len(report["model"]["sha256"]) == 64
    assert report["device"].startswith("cpu") and report["complete"] is True
    assert "11 scanned" in err and "7 errors" in err  # the summary line, on stderr


def test_jsonl_is_the_default_when_piped(capsys, photos, detector_dir):
    code, out, _ = scan(capsys, str(photos), "--weights", str(detector_dir), *BOMB)
    lines = [json.loads(line) for line in out.splitlines()]
    schema = report_schema()
    for line in lines[:-1]:
        jsonschema.validate(line, {**schema, **schema["$defs"]["result"]})
    assert names(line["path"] for line in lines[:-1]) == sorted(GOOD | BAD)
    assert lines[-1]["summary"]["counts"]["total"] == 18 and code == 3


def test_csv_and_html_reports_to_files(capsys, photos, detector_dir, tmp_path):
    csv_path, html_path = tmp_path / "out" / "r.csv", tmp_path / "out" / "r.html"
    for path in (csv_path, html_path):  # format from the extension
        code, out, err = scan(capsys, str(photos), "-w", str(detector_dir), "-o", str(path),
                              *BOMB)
        assert code == 3 and out == "" and f"report written to {path}" in err
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert names(r["path"] for r in rows) == sorted(GOOD | BAD)
    assert {r["label"] for r in rows if Path(r["path"]).name in GOOD} <= {"real", "ai-generated"}

    class Figures(HTMLParser):
        def __init__(self):
            super().__init__()
            self.entries, self.images = [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "figure":
                self.entries.append(attrs)
            if tag == "img":
                assert attrs["src"].startswith("data:image/jpeg;base64,")  # self-contained
                self.images += 1

    parser = Figures()
    parser.feed(html_path.read_text())
    assert names(e["data-path"] for e in parser.entries) == sorted(GOOD | BAD)
    assert parser.images == len(GOOD)  # a thumbnail for each scored image
    scores = [float(e["data-score"]) for e in parser.entries if "data-score" in e]
    assert scores == sorted(scores, reverse=True)
    assert not list(tmp_path.joinpath("out").glob(".*.tmp"))


def test_exit_codes_and_their_precedence(capsys, photos, detector_dir, tmp_path):
    weights = ["--weights", str(detector_dir)]
    good = [str(photos / "a.png"), str(photos / "nested")]
    assert scan(capsys, *good, *weights)[0] == 0
    assert scan(capsys, *good, *weights, "--fail-on-ai", "--threshold", "1")[0] == 0
    assert scan(capsys, *good, *weights, "--fail-on-ai", "--threshold", "0")[0] == 1
    assert scan(capsys, str(photos), *weights)[0] == 3  # some files could not be scored
    assert scan(capsys, str(photos), *weights, "--fail-on-ai", "-t", "0")[0] == 1  # 1 over 3
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = scan(capsys, str(empty), *weights)
    assert code == 3 and "no images found" in err  # nothing to scan
    code, out, err = scan(capsys, str(photos / "nope.png"), *weights)
    assert code == 2 and err == f"aidetect: error: no such file or folder: {photos}/nope.png\n"
    code, _, err = scan(capsys, str(photos), "--weights", str(tmp_path / "missing"))
    assert code == 4 and err.startswith("aidetect: error: ") and err.count("\n") == 1
    # A missing path and missing weights: the usage error wins, before any weights are read.
    assert scan(capsys, str(photos / "nope.png"), "--weights", str(tmp_path / "no"))[0] == 2
    code, _, err = scan(capsys, str(photos), *weights, "--device", "cuda:7")
    assert code == 2 and "--device cuda:7" in err
    assert scan(capsys, str(photos), *weights, "--threshold", "2")[0] == 2
    assert scan(capsys, *weights)[0] == 2  # no paths


def test_paths_from_stdin(capsys, photos, detector_dir, monkeypatch):
    listing = f"{photos / 'a.png'}\n\n{photos / 'nested' / 'c.webp'}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    code, out, _ = scan(capsys, "-", "--weights", str(detector_dir), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and names(r["path"] for r in rows) == ["a.png", "c.webp"]


def test_exclude_and_pixel_limit(capsys, photos, detector_dir):
    code, out, _ = scan(capsys, str(photos), "-w", str(detector_dir), "-f", "json",
                        "--exclude", "nested", "--exclude", "broken*", "--exclude", "loop.png",
                        "--exclude", "*/modes",
                        "--max-pixels", "7000")
    results = json.loads(out)["results"]
    assert names(r["path"] for r in results) == ["a.png", "b.JPG"]
    assert code == 3  # b.JPG is 120x90 = 10,800 pixels, over the limit
    big = next(r for r in results if r["path"].endswith("b.JPG"))
    assert "--max-pixels" in big["error"] and results[0]["error"] is None


def test_ctrl_c_writes_the_partial_report_marked_incomplete(capsys, photos, detector_dir,
                                                           tmp_path, monkeypatch):
    from aidetect.scan import Scanner

    real_scan = Scanner.scan

    def interrupted(self, candidates, **kwargs):
        yield from real_scan(self, candidates[:2], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Scanner, "scan", interrupted)
    output = tmp_path / "partial.json"
    code, _, err = scan(capsys, str(photos), "-w", str(detector_dir), "-o", str(output))
    report = json.loads(output.read_text())
    assert code == 130 and report["complete"] is False and len(report["results"]) == 2
    assert report["all_scored"] is False
    found = report["counts"]["found"]
    assert found > 2 and report["counts"]["total"] == 2  # what was found, what was scanned
    assert f"(incomplete: interrupted after 2 of {found} files found)" in err


def test_table_on_a_terminal_lists_ai_first(capsys, photos, detector_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no path folded over two lines
    code, out, _ = scan(capsys, str(photos), "-w", str(detector_dir), "-f", "table",
                        "--threshold", "0.0", *BOMB)
    ai_rows = [line for line in out.splitlines() if "AI-generated" in line and "│" in line]
    assert len(ai_rows) == len(GOOD) and "11 scanned: 11 AI-generated, 0 real, 7 errors" in out
    assert all(out.count(f"/{name}") == 1 for name in GOOD | BAD)  # every file, once
    first_error = min(out.index(name) for name in BAD)
    assert all(out.index(name) < first_error for name in GOOD)


def test_help_documents_the_exit_codes():
    from typer.testing import CliRunner

    from aidetect.cli.app import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["scan", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--fail-on-ai", "--exclude", "--follow-symlinks", "--max-pixels",
                 "Exit codes", "4    the weights cannot be obtained"):
        assert text in result.output


def test_scan_with_a_hub_detector_reports_its_commit(capsys, photos, detector_dir, hub_cache):
    from conftest import write_hub_cache

    from aidetect.hub import file_sha256

    commit = "0123456789abcdef0123456789abcdef01234567"
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=commit)
    good = [str(photos / "a.png"), str(photos / "nested")]
    for reference in ("hf://owner/name", f"owner/name@{commit}"):
        code, out, _ = scan(capsys, *good, "--weights", reference, "-f", "json")
        model = json.loads(out)["model"]
        assert code == 0 and model["source"] == "hub" and model["revision"] == commit
        assert model["sha256"] == file_sha256(detector_dir / "model.safetensors")
    code, _, err = scan(capsys, *good, "--weights", "hf://owner/absent")
    assert code == 4 and "HF_HUB_OFFLINE is set" in err and err.count("\n") == 1


def test_a_failure_mid_scan_keeps_the_partial_report(capsys, photos, detector_dir, tmp_path,
                                                    monkeypatch):
    from aidetect.errors import UsageError
    from aidetect.scan import Scanner

    real_scan = Scanner.scan

    def out_of_memory(self, candidates, **kwargs):
        yield from real_scan(self, candidates[:3], **kwargs)
        raise UsageError("out of CUDA memory at batch size 32: pass a smaller --batch-size")

    monkeypatch.setattr(Scanner, "scan", out_of_memory)
    output = tmp_path / "partial.jsonl"
    code, _, err = scan(capsys, str(photos), "-w", str(detector_dir), "-o", str(output))
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert code == 2 and err.endswith("aidetect: error: out of CUDA memory at batch size 32: "
                                      "pass a smaller --batch-size\n")
    assert len(lines) == 4 and lines[-1]["summary"]["complete"] is False
    assert f"partial report written to {output}" in err

    def worker_killed(self, candidates, **kwargs):
        yield from real_scan(self, candidates[:1], **kwargs)
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Segmentation fault.")

    monkeypatch.setattr(Scanner, "scan", worker_killed)
    # --no-cache: the first scan's scores would be reused, and the scanner see other files.
    code, _, err = scan(capsys, str(photos), "-w", str(detector_dir), "-o", str(output),
                        "--no-cache")
    assert code == 3 and "a decoding worker stopped" in err and "--workers 0" in err
    assert len(output.read_text().splitlines()) == 2


def test_ctrl_c_before_the_scan_exits_130_with_one_line(capsys, photos, detector_dir,
                                                        monkeypatch):
    import aidetect.loading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(aidetect.loading, "load_detector", interrupted)
    code, out, err = scan(capsys, str(photos), "-w", str(detector_dir))
    assert (code, out, err) == (130, "", "aidetect: error: interrupted\n")


def test_csv_report_guards_a_formula_file_name(capsys, tmp_path, detector_dir, monkeypatch):
    from conftest import random_image

    name = '=HYPERLINK("evil.example","click").png'
    random_image(64, 64).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    code, out, _ = scan(capsys, name, "-w", str(detector_dir), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 0 and [row["path"] for row in rows] == ["'" + name]
    code, out, _ = scan(capsys, name, "-w", str(detector_dir), "-f", "jsonl")
    assert json.loads(out.splitlines()[0])["path"] == name  # JSONL: the exact name
