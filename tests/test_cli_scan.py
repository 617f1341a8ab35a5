"""`aidetect scan` end to end, in process through the console-script entry point: every report
format accounts for every file once, the exit codes and their precedence, stdin, Ctrl-C."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from conftest import random_image
from PIL import Image

from aidetect.cli.app import main
from aidetect.report import report_schema


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Good images of every mode and format a scan decodes, and broken files of each kind."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    random_image(96, 64, seed=1).save(folder / "a.png")
    random_image(120, 90, seed=2).save(folder / "b.JPG", quality=90)
    random_image(64, 64, seed=3).save(folder / "nested" / "c.webp")
    random_image(70, 50, seed=4, mode="RGBA").save(folder / "nested" / "d.png")
    modes = folder / "modes"
    modes.mkdir()
    base = random_image(80, 60, seed=5)
    base.convert("CMYK").save(modes / "cmyk.jpg")
    base.convert("L").save(modes / "gray.tiff")
    base.convert("LA").save(modes / "gray-alpha.png")
    base.convert("P").save(modes / "palette.gif", transparency=0)
    base.save(modes / "anim.gif", save_all=True, append_images=[base.rotate(90)])
    base.save(modes / "plain.bmp")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(
        modes / "deep.png")  # 16-bit gray
    broken = folder / "broken"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    base.save(jpeg, format="JPEG")
    (broken / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (broken / "text.jpg").write_text("not an image")
    png = bytearray((folder / "a.png").read_bytes())
    png[200:260] = bytes(60)
    (broken / "corrupt.png").write_bytes(bytes(png))
    Image.new("L", (4000, 4000)).save(broken / "bomb.png")  # refused with --max-pixels below
    (folder / "broken.jpg").write_bytes(random.Random(0).randbytes(500))
    os.symlink("loop.png", folder / "loop.png")
    return folder


GOOD = {"a.png", "b.JPG", "c.webp", "d.png", "cmyk.jpg", "gray.tiff", "gray-alpha.png",
        "palette.gif", "anim.gif", "plain.bmp", "deep.png"}
BAD = {"broken.jpg", "loop.png", "empty.png", "truncated.jpg", "text.jpg", "corrupt.png",
       "bomb.png"}
BOMB = ("--max-pixels", "1000000")  # bomb.png has 16 million pixels


def scan(capsys, *args: str) -> tuple[int, str, str]:
    """Run `aidetect scan ARGS` in process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", *args, "--workers", "0"])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


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


# --- the score cache -------------------------------------------------------------------------
SCORE_FIELDS = ("score", "logit", "label", "format", "mode", "width", "height", "error",
                "sha256")


def by_name(out: str) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in json.loads(out)["results"]}


def small_folder(root: Path, count: int = 3, side: int = 48) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        random_image(side, side, seed=10 + i).save(root / f"{i:03d}.png")
    return root


def test_a_rescan_reuses_every_score_without_loading_the_model(capsys, photos, detector_dir,
                                                               monkeypatch):
    import aidetect.loading

    code, out, err = scan(capsys, str(photos), "-w", str(detector_dir), "-f", "json", *BOMB)
    first = json.loads(out)
    assert code == 3 and "score cache: 0 of 18 files reused" in err

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(aidetect.loading, "load_detector", no_model)
    code, out, err = scan(capsys, str(photos), "-w", str(detector_dir), "-f", "json", *BOMB)
    second = json.loads(out)
    jsonschema.validate(second, report_schema())
    assert code == 3 and "score cache: 11 of 18 files reused, 0 scored" in err
    assert second["model"] == first["model"] and second["threshold"] == first["threshold"]
    assert second["counts"] == first["counts"] and "scores from the cache" in second["device"]
    for old, new in zip(first["results"], second["results"], strict=True):
        assert old["path"] == new["path"]  # every file once, in the same order
        assert {k: old[k] for k in SCORE_FIELDS} == {k: new[k] for k in SCORE_FIELDS}
        assert old["cached"] is False and new["cached"] is (new["error"] is None)
    named = by_name(out)
    assert len(named["a.png"]["sha256"]) == 64 and named["loop.png"]["sha256"] is None
    assert named["empty.png"]["sha256"] == hashlib.sha256(b"").hexdigest()


def test_an_all_cached_scan_imports_no_torch(capsys, photos, detector_dir, tmp_path):
    code, _, _ = scan(capsys, str(photos), "-w", str(detector_dir), *BOMB)
    assert code == 3
    report = tmp_path / "cached.json"
    program = (
        "import sys\n"
        "from aidetect.cli import main\n"
        "try:\n"
        f"    main(['scan', {str(photos)!r}, '-w', {str(detector_dir)!r}, '-o', "
        f"{str(report)!r}, '--max-pixels', '1000000', '--device', 'cpu'])\n"
        "except SystemExit as e:\n"
        "    print('EXIT', e.code)\n"
        "print('TORCH', 'torch' in sys.modules, 'open_clip' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=300)
    assert "EXIT 3" in run.stdout and "TORCH False False" in run.stdout, run.stderr
    results = json.loads(report.read_text())["results"]
    assert sum(r["cached"] for r in results) == len(GOOD)


def test_identical_files_at_two_paths_are_scored_once(capsys, tmp_path, detector_dir,
                                                      monkeypatch):
    from aidetect.scan import Scanner

    folder = small_folder(tmp_path / "dups", count=2)
    shutil.copyfile(folder / "000.png", folder / "copy.png")
    seen: list[str] = []
    real_scan = Scanner.scan

    def recording(self, candidates, **kwargs):
        seen.extend(Path(c.path).name for c in candidates)
        yield from real_scan(self, candidates, **kwargs)

    monkeypatch.setattr(Scanner, "scan", recording)
    for flags in ((), ("--no-cache",)):
        seen.clear()
        code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json", *flags)
        results = by_name(out)
        assert code == 0 and seen == ["000.png", "001.png"]
        assert {k: results["copy.png"][k] for k in SCORE_FIELDS} == \
            {k: results["000.png"][k] for k in SCORE_FIELDS}
        assert results["copy.png"]["cached"] is False


def test_each_key_part_misses_and_the_threshold_does_not(capsys, tmp_path, detector_dir,
                                                        make_detector):
    folder = small_folder(tmp_path / "few")

    def cached(*flags: str, weights: Path = detector_dir) -> list[bool]:
        code, out, _ = scan(capsys, str(folder), "-w", str(weights), "-f", "json",
                            "--precision", "fp32", *flags)
        assert code == 0
        return [r["cached"] for r in json.loads(out)["results"]]

    assert cached() == [False] * 3
    assert cached() == [True] * 3
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json",
                        "--precision", "fp32", "--threshold", "0")
    assert all(r["cached"] and r["label"] == "ai-generated" for r in json.loads(out)["results"])
    other = tmp_path / "other-weights"
    make_detector(seed=1).save_pretrained(other)
    assert cached(weights=other) == [False] * 3
    preprocessing = tmp_path / "other-preprocessing"
    shutil.copytree(detector_dir, preprocessing)
    config = json.loads((preprocessing / "config.json").read_text())
    config["preprocess"]["method"] = "center_crop"
    (preprocessing / "config.json").write_text(json.dumps(config))
    assert cached(weights=preprocessing) == [False] * 3
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json",
                        "--precision", "bf16")
    assert code == 0 and [r["cached"] for r in json.loads(out)["results"]] == [False] * 3
    assert cached() == [True] * 3  # the fp32 scores are all still there


def test_edited_and_touched_files(capsys, tmp_path, detector_dir):
    folder = small_folder(tmp_path / "few")
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    before = by_name(out)
    edited, touched = folder / "000.png", folder / "001.png"
    stat = edited.stat()
    random_image(48, 48, seed=99).save(edited)
    data = edited.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0")
    edited.write_bytes(data)  # other content, same size ...
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns - 10**9))
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    after = by_name(out)
    assert after["000.png"]["cached"] is False
    assert after["000.png"]["sha256"] != before["000.png"]["sha256"]
    assert after["000.png"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert after["001.png"]["cached"] is True and after["002.png"]["cached"] is True
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json",
                        "--max-pixels", "1000")
    refused = by_name(out)["002.png"]
    assert code == 3 and "--max-pixels" in refused["error"] and refused["score"] is None


def test_a_hub_detector_hits_offline(capsys, tmp_path, detector_dir, hub_cache, monkeypatch):
    from conftest import write_hub_cache

    import aidetect.loading

    folder = small_folder(tmp_path / "few")
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=commit)
    code, out, _ = scan(capsys, str(folder), "-w", "hf://owner/name", "-f", "json")
    first = json.loads(out)
    monkeypatch.setattr(aidetect.loading, "load_detector", None)  # calling it would fail
    code, out, _ = scan(capsys, str(folder), "-w", "hf://owner/name", "-f", "json")
    second = json.loads(out)
    assert code == 0 and all(r["cached"] for r in second["results"])
    assert second["model"] == first["model"] and second["model"]["revision"] == commit


def scan_process(folder: Path, weights: Path, *flags: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aidetect", "scan", str(folder), "-w", str(weights), "-f",
         "jsonl", "--workers", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).parent.parent, **kwargs)


def test_two_scans_at_once_share_the_cache(capsys, tmp_path, detector_dir):
    folder = small_folder(tmp_path / "many", count=40, side=32)
    processes = [scan_process(folder, detector_dir, "--batch-size", "4") for _ in range(2)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        lines = [json.loads(line) for line in out.splitlines()]
        assert process.returncode == 0 and "warning" not in err, err
        assert len(lines) == 41 and lines[-1]["summary"]["complete"] is True
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    assert code == 0 and all(r["cached"] for r in json.loads(out)["results"])


def test_a_scan_killed_mid_way_leaves_a_cache_the_rescan_uses(capsys, tmp_path, detector_dir):
    folder = small_folder(tmp_path / "many", count=400, side=32)
    process = scan_process(folder, detector_dir, "--batch-size", "8")
    # Results 1..64 are committed before result 65 is written; the full pipe then holds the
    # scan back from finishing before the kill.
    scored = [json.loads(process.stdout.readline()) for _ in range(100)]
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    results = json.loads(out)["results"]
    assert code == 0 and "warning" not in err
    assert sorted(Path(r["path"]).name for r in results) == sorted(os.listdir(folder))
    reused = {r["path"]: r["score"] for r in results if r["cached"]}
    assert 64 <= len(reused) < 400
    before = {r["path"]: r["score"] for r in scored if r["path"] in reused}
    assert len(before) >= 64 and all(reused[path] == score for path, score in before.items())


def test_a_damaged_or_newer_cache_warns_and_the_scan_goes_on(capsys, tmp_path, detector_dir,
                                                            score_cache):
    import sqlite3

    folder = small_folder(tmp_path / "few")
    score_cache.mkdir()
    (score_cache / "scores.sqlite3").write_bytes(b"garbage " * 500)
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "damaged" in warnings[0]
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    assert all(r["cached"] for r in json.loads(out)["results"]) and "warning" not in err
    with sqlite3.connect(score_cache / "scores.sqlite3") as db:
        db.execute("PRAGMA user_version = 7")
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    assert code == 0 and "newer aidetect" in err and err.count("warning:") == 1
    assert not any(r["cached"] for r in json.loads(out)["results"])


def test_a_read_only_cache_folder_still_scans(capsys, tmp_path, detector_dir, score_cache,
                                              make_read_only):
    folder = small_folder(tmp_path / "few")
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    first = by_name(out)
    make_read_only(score_cache)
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json")
    assert code == 0 and err.count("warning: score cache") == 1
    assert {k: r["score"] for k, r in by_name(out).items()} == \
        {k: r["score"] for k, r in first.items()}


def test_no_cache_and_the_cache_commands(capsys, tmp_path, detector_dir, score_cache):
    folder = small_folder(tmp_path / "few")
    code, out, err = scan(capsys, str(folder), "-w", str(detector_dir), "-f", "json",
                          "--no-cache")
    assert code == 0 and not score_cache.exists() and "score cache" not in err
    assert all(len(r["sha256"]) == 64 for r in json.loads(out)["results"])
    elsewhere = tmp_path / "elsewhere"
    code, out, _ = scan(capsys, str(folder), "-w", str(detector_dir), "--cache", str(elsewhere))
    assert (elsewhere / "scores.sqlite3").is_file() and not score_cache.exists()

    def cache(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["cache", *args, "--cache", str(elsewhere)])
        return exit_info.value.code, capsys.readouterr().out

    code, out = cache("info", "--json")
    assert code == 0 and json.loads(out)["scores"] == 3
    code, out = cache("clear")
    assert code == 0 and "cleared 3 scores" in out
    assert json.loads(cache("info", "--json")[1])["scores"] == 0


def test_cached_results_keep_their_html_thumbnails(capsys, tmp_path, detector_dir):
    folder = small_folder(tmp_path / "few")
    pages = []
    for name in ("first.html", "second.html"):
        code, _, err = scan(capsys, str(folder), "-w", str(detector_dir), "-o",
                            str(tmp_path / name))
        pages.append((tmp_path / name).read_text())
    assert code == 0 and "3 of 3 files reused" in err
    assert pages[0].count("data:image/jpeg;base64,") == 3
    assert pages[1].count("data:image/jpeg;base64,") == 3
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
