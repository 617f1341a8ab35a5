"""`aidetect train`, `finetune` and `eval` through the command line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import write_labelled_folder

import aidetect.cli.commands  # noqa: F401  (registers the commands)
from aidetect.cli.app import main

TRAIN_OPTIONS = (
    "--data", "--out", "--backbone", "--pretrained", "--probe-epochs", "--epochs",
    "--batch-size", "--lr", "--lora-rank", "--lora-alpha", "--lora-dropout", "--align-weight",
    "--seed", "--device", "--workers", "--save-every", "--resume", "--val", "--captions",
    "--classes", "--blur-prob", "--blur-range", "--jpeg-prob", "--jpeg-range",
)


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_lists_every_option_and_examples(capsys):
    code, out, _ = _run(["train", "--help"], capsys)
    assert code == 0
    for option in TRAIN_OPTIONS:
        assert option in out, option
    assert "--resume" in out and "torchrun --nproc_per_node" in out
    code, out, _ = _run(["eval", "--help"], capsys)
    assert code == 0 and "--calibrate" in out and "--jpeg-quality" in out
    assert "--blur-sigma" in out and "--format" in out
    code, out, _ = _run(["finetune", "--help"], capsys)
    assert code == 0 and "--weights" in out and "aidetect finetune" in out


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_local_dir):
    """`aidetect train` on a class layout, with captions from class names and a val folder."""
    root = tmp_path_factory.mktemp("cli")
    data = write_labelled_folder(root / "data", n=4, classes=["car", "cat", "dog"])
    val = write_labelled_folder(root / "val", n=3, seed=5)
    args = [
        "train", "--data", str(data), "--out", str(root / "run"), "--classes", "car,cat",
        "--val", str(val), "--backbone", tiny_local_dir, "--pretrained", "none",
        "--probe-epochs", "1", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--workers", "0", "--blur-prob", "0.5", "--jpeg-prob", "0.5", "--jpeg-range", "60",
        "90",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return root, exit_info.value.code


def test_train_writes_a_detector_and_logs_on_stderr(cli_run, capsys):
    root, code = cli_run
    assert code == 0
    assert (root / "run" / "model.safetensors").is_file()
    card = (root / "run" / "README.md").read_text()
    assert "8 real and 8 AI-generated images in 2 classes" in card
    assert "class folder names (16)" in card and "JPEG p=0.5, quality (60, 90)" in card


def test_train_output_streams(tmp_path, tiny_local_dir, capsys):
    data = write_labelled_folder(tmp_path / "data", n=2)
    code, out, err = _run([
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone",
        tiny_local_dir, "--pretrained", "none", "--probe-epochs", "1", "--epochs", "1",
        "--batch-size", "2", "--device", "cpu", "--workers", "0",
    ], capsys)
    assert code == 0 and out == ""  # stdout is kept for machine output
    assert 'captions: the generic prompt "a photo" (4)' in err
    assert "stage 2 (DGS) epoch 1/1" in err and "detector written to" in err


def test_bad_layout_is_a_one_line_usage_error(tmp_path, capsys):
    (tmp_path / "data" / "photos").mkdir(parents=True)
    code, out, err = _run(["train", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "run"), "--device", "cpu"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("aidetect: error: --data ") and "found folders photos" in err
    assert err.count("\n") == 1


def test_eval_json_csv_and_table(cli_run, tmp_path, capsys):
    root, _ = cli_run
    bench = tmp_path / "bench"
    write_labelled_folder(bench / "a", n=2, seed=11)
    write_labelled_folder(bench / "b", n=2, seed=12, classes=["x"])
    weights = str(root / "run")
    base = ["eval", "--weights", weights, "--data", str(bench), "--device", "cpu",
            "--workers", "0", "--batch-size", "3"]
    code, out, err = _run([*base, "--format", "json", "--output", str(tmp_path / "e.json")],
                          capsys)
    assert code == 0 and out == "" and "mean" in err  # the table goes to stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert [s["name"] for s in report["subsets"]] == ["a", "b"]
    assert set(report["mean"]) == {"acc", "ap", "r_acc", "f_acc"}
    assert report["model"]["reference"] == weights and len(report["model"]["sha256"]) == 64
    assert report["threshold"] == 0.5 and [c["fpr"] for c in report["calibration"]] == [0.01,
                                                                                          0.05]
    code, out, _ = _run([*base, "--format", "csv", "--quiet"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == ["a", "b", "mean"]
    assert float(rows[0]["acc"]) == pytest.approx(report["subsets"][0]["acc"])
    code, out, _ = _run([*base, "--jpeg-quality", "75", "--blur-sigma", "1"], capsys)
    assert code == 0 and "mean" in out and "subset" in out


def test_eval_calibrate_writes_the_threshold(cli_run, tmp_path, capsys):
    import shutil

    root, _ = cli_run
    folder = tmp_path / "det"
    shutil.copytree(root / "run", folder, ignore=shutil.ignore_patterns("train"))
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=4, seed=21).parent
    code, out, err = _run(["eval", "--weights", str(folder), "--data", str(bench), "--device",
                           "cpu", "--workers", "0", "--calibrate", "0.05", "--format", "json"],
                          capsys)
    assert code == 0, err
    report = json.loads(out)
    chosen = report["calibrated"]
    assert chosen["fpr"] == 0.05
    assert json.loads((folder / "config.json").read_text())["threshold"] == chosen["threshold"]
    assert "calibrated with `aidetect eval --calibrate 0.05`" in (folder / "README.md").read_text()


def test_calibrate_refuses_a_reference_that_is_not_a_local_folder(
    cli_run, tmp_path, capsys, monkeypatch
):
    from aidetect import hub

    root, _ = cli_run
    real_load = hub.load_detector

    def from_the_hub(reference, *, device="cpu"):
        loaded = real_load(str(root / "run"), device=device)
        loaded.source = "hub"
        return loaded

    monkeypatch.setattr(hub, "load_detector", from_the_hub)
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=2).parent
    code, _, err = _run(["eval", "--weights", "hf://someone/detector", "--data", str(bench),
                         "--device", "cpu", "--calibrate", "0.01"], capsys)
    assert code == 2 and "save a local copy" in err


def test_finetune_command(cli_run, tmp_path, capsys):
    root, _ = cli_run
    data = write_labelled_folder(tmp_path / "new", n=2, seed=9)
    code, out, err = _run(["finetune", "--weights", str(root / "run"), "--data", str(data),
                           "--out", str(tmp_path / "ft"), "--batch-size", "2", "--device",
                           "cpu", "--workers", "0", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert str(root / "run") in (tmp_path / "ft" / "README.md").read_text()
