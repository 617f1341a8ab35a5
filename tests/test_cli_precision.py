"""`--device` and `--precision` through the command line: an absent Apple GPU is a one-line
usage error (exit 2) for scan and eval alike, and the report's device string names the
precision and the CPU's bf16 units."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_image, write_labelled_folder

import aidetect.precision
import aidetect.scan
from aidetect.cli.app import main
from aidetect.cpu import CpuFeatures

NO_MPS = ("aidetect: error: --device mps: no Apple GPU (MPS) is available here "
          "(use --device cpu or auto)\n")


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        random_image(80, 60, seed=seed).save(folder / f"{seed}.png")
    return folder


@pytest.fixture
def no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_scan_on_an_absent_apple_gpu_is_one_line_exit_2(capsys, photos, detector_dir, no_mps):
    code, out, err = run(capsys, "scan", str(photos), "-w", str(detector_dir), "--device", "mps")
    assert (code, out, err) == (2, "", NO_MPS)


def test_eval_on_an_absent_apple_gpu_is_one_line_exit_2(capsys, tmp_path, detector_dir, no_mps):
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=1).parent
    code, out, err = run(capsys, "eval", "-w", str(detector_dir), "--data", str(bench),
                         "--device", "mps")
    assert (code, out, err) == (2, "", NO_MPS)


@pytest.mark.parametrize(("features", "precision", "expected"), [
    (CpuFeatures(amx_bf16=True, avx512_bf16=True), "auto",
     "cpu (1 thread, bf16; AMX-BF16, AVX512-BF16)"),
    (CpuFeatures(), "auto", "cpu (1 thread, fp32; no bf16 units)"),
    (CpuFeatures(), "int8", "cpu (1 thread, int8; no bf16 units)"),
])
def test_the_report_names_the_precision_and_the_units(capsys, photos, detector_dir,
                                                      monkeypatch, features, precision,
                                                      expected):
    monkeypatch.setattr(aidetect.precision, "cpu_features", lambda: features)
    monkeypatch.setattr(aidetect.scan, "cpu_features", lambda: features)
    threads = torch.get_num_threads()
    try:
        code, out, _ = run(capsys, "scan", str(photos), "-w", str(detector_dir), "-f", "json",
                           "--device", "cpu", "--threads", "1", "--workers", "0",
                           "--precision", precision)
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out)
    assert code == 0 and report["device"] == expected
    assert all(r["score"] is not None for r in report["results"])


def test_eval_takes_the_scans_precision(capsys, tmp_path, detector_dir):
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=1).parent
    base = ["eval", "-w", str(detector_dir), "--data", str(bench), "--device", "cpu",
            "--workers", "0", "-f", "json"]
    code, out, err = run(capsys, *base, "--precision", "fp16", "-q")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "--precision fp16 is for GPUs" in err  # the option reached the precision choice
    scores = {}
    for precision in ("fp32", "int8"):
        code, out, _ = run(capsys, *base, "--precision", precision, "-q")
        assert code == 0
        scores[precision] = json.loads(out)["subsets"][0]
    assert scores["int8"]["ap"] == pytest.approx(scores["fp32"]["ap"], abs=0.5)


def test_eval_uses_the_scans_cpu_threads(capsys, tmp_path, detector_dir, monkeypatch):
    """bf16 kernels vary with the thread count: eval sets the count a scan would."""
    import aidetect.devices

    bench = write_labelled_folder(tmp_path / "bench" / "a", n=1).parent
    monkeypatch.setattr(aidetect.devices, "default_threads", lambda: 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, _, _ = run(capsys, "eval", "-w", str(detector_dir), "--data", str(bench),
                         "--device", "cpu", "--workers", "0", "-q")
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
