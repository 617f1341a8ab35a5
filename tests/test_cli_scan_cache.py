"""`aidetect scan` with the score cache: a rescan reuses scores without the model, what misses,
scans sharing or killed over the cache, a damaged or read-only cache, `aidetect cache`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from cli_helpers import BOMB, GOOD, scan
from conftest import random_image

from aidetect.cli.app import main
from aidetect.report import report_schema

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
