"""One scan across processes: torchrun with gloo and 2 CPU processes writes the report a single
process writes; the lead merges in the list's order and stops cleanly when a process dies."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import random_image

from aidetect.distributed_scan import ScanGroup, ScanStopped, _exchange_sizes
from aidetect.report import report_schema
from aidetect.results import ImageResult


def _folder(root: Path) -> Path:
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        random_image(64 + 8 * i, 48 + 4 * i, seed=i).save(folder / f"p{i}.png")
    for i in range(4):
        random_image(96, 64, seed=10 + i).save(folder / "sub" / f"j{i}.jpg", quality=90)
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    random_image(20, 20).save(folder / "tiny.png")
    return folder


def _scan_args(folder: Path, weights: Path, output: Path) -> list[str]:
    return ["-m", "aidetect", "scan", str(folder), "--weights", str(weights), "--device", "cpu",
            "--workers", "0", "--batch-size", "3", "--precision", "fp32", "--format", "json",
            "--output", str(output), "--quiet", "--no-cache"]


def test_two_processes_write_the_single_process_report(tmp_path, detector_dir):
    folder = _folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets; same arithmetic
    single = subprocess.run([sys.executable, *_scan_args(folder, detector_dir,
                                                         tmp_path / "one.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 3, single.stderr  # two files cannot be scored
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    double = subprocess.run([*launcher, *_scan_args(folder, detector_dir,
                                                    tmp_path / "two.json")],
                            capture_output=True, text=True, timeout=300, env=env)
    # Rank 0 exits 3 like the single process; torchrun turns any non-zero exit into 1.
    assert double.returncode == 1, double.stderr
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    jsonschema.validate(two, report_schema())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["complete"] and two["counts"] == one["counts"]
    assert {k: two["counts"][k] for k in ("total", "scanned", "errors")} == {
        "total": 13, "scanned": 11, "errors": 2}
    assert [r["path"] for r in two["results"]] == [r["path"] for r in one["results"]]
    for a, b in zip(one["results"], two["results"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("score", "logit")} == {
            k: v for k, v in b.items() if k not in ("score", "logit")}
        if a["error"] is None:  # the same model on the same pixels, in other batches
            assert b["logit"] == pytest.approx(a["logit"], abs=1e-6)
    ignored = {"started", "finished", "elapsed_seconds", "images_per_second", "processes",
               "results"}
    assert {k: v for k, v in one.items() if k not in ignored} == {
        k: v for k, v in two.items() if k not in ignored}


def test_two_processes_share_the_score_cache(tmp_path, detector_dir):
    """The lead alone reads and writes the cache (no write conflicts); the other processes
    score a share of its misses, and none at all on a rescan where everything is cached."""
    folder = _folder(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AIDETECT_CACHE": str(tmp_path / "cache")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    reports = []
    for name in ("first.json", "again.json"):
        args = [a for a in _scan_args(folder, detector_dir, tmp_path / name) if a != "--no-cache"]
        run = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300,
                             env=env)
        assert run.returncode == 1, run.stderr  # rank 0's exit 3 (two broken files)
        reports.append(json.loads((tmp_path / name).read_text()))
    first, again = reports
    assert again["processes"] == 2
    scored = [r for r in first["results"] if r["error"] is None]
    assert len(scored) == 11 and not any(r["cached"] for r in scored)
    rescored = [r for r in again["results"] if r["error"] is None]
    assert all(r["cached"] for r in rescored)
    assert [(r["path"], r["score"]) for r in rescored] == [(r["path"], r["score"]) for r in scored]


def _results(rank: int, size: int, total: int) -> list[ImageResult]:
    return [ImageResult(path=f"{i:04d}") for i in range(rank, total, size)]


def _fake_gather(per_rank, fail_at: int | None = None):
    """gather_object as the lead sees it: process r sends its next results from `per_rank[r]`,
    as many as the lead (whose share is the largest) or what is left."""
    calls = []
    iterators = [iter(results) for results in per_rank]

    def gather(own, chunks, dst):
        calls.append(len(own))
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("[gloo] Connection closed by peer")
        chunks[0] = own
        for rank in range(1, len(per_rank)):
            chunks[rank] = list(itertools.islice(iterators[rank], len(own)))

    return gather, calls


@pytest.mark.parametrize("total", [0, 1, 2, 5, 64, 200, 201])
def test_the_lead_merges_in_the_lists_order(monkeypatch, total):
    size = 3
    per_rank = [_results(r, size, total) for r in range(size)]
    gather, _ = _fake_gather(per_rank)
    monkeypatch.setattr(torch.distributed, "gather_object", gather)
    group = ScanGroup(rank=0, size=size, local_rank=0, local_size=size)
    merged = list(group.merged(iter(per_rank[0]), total))
    assert [r.path for r in merged] == [f"{i:04d}" for i in range(total)]
    assert group.shard(list(range(total))) == list(range(0, total, size))


def test_a_dead_process_ends_the_merge_with_what_arrived(monkeypatch):
    size, total = 2, 300
    per_rank = [_results(r, size, total) for r in range(size)]
    gather, calls = _fake_gather(per_rank, fail_at=3)
    monkeypatch.setattr(torch.distributed, "gather_object", gather)
    group = ScanGroup(rank=0, size=size, local_rank=0, local_size=size)
    merged = []
    with pytest.raises(ScanStopped, match="another process of the scan stopped") as stopped:
        for result in group.merged(iter(per_rank[0]), total):
            merged.append(result)
    assert stopped.value.exit_code == 3
    assert [r.path for r in merged] == [f"{i:04d}" for i in range(2 * (1 + 64))]  # a prefix
    assert calls == [1, 64, 64]


def test_exchange_sizes_cover_the_largest_share():
    assert _exchange_sizes(0, 4) == []
    assert _exchange_sizes(1, 4) == [1]
    assert _exchange_sizes(8, 4) == [1, 64]
    assert sum(_exchange_sizes(1000, 3)) >= 334 > sum(_exchange_sizes(1000, 3)[:-1])


def test_a_process_that_dies_ends_the_scan_with_a_partial_report(tmp_path, detector_dir):
    folder = _folder(tmp_path)
    for i in range(20):  # enough files that rank 1 dies well before the end
        random_image(64, 64, seed=100 + i).save(folder / f"q{i:02d}.png")
    report = tmp_path / "partial.json"
    args = _scan_args(folder, detector_dir, report)[2:]  # without "-m aidetect"
    script = Path(__file__).with_name("torchrun_dying_rank.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script), *args],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    partial = json.loads(report.read_text())
    jsonschema.validate(partial, report_schema())
    assert partial["complete"] is False and partial["processes"] == 2
    every = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    paths = [r["path"] for r in partial["results"]]
    assert 0 < len(paths) < len(every)
    assert paths == every[: len(paths)]  # a prefix of the single-process order
