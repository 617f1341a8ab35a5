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
    "--classes", "--blur-prob", "--blur-range", "--jpeg-prob", "--jpeg-range", "--precision",
    "--checkpointing",
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
    assert "--precision" in out and "--checkpointing" in out


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
    from aidetect import loading

    root, _ = cli_run
    real_load = loading.load_detector

    def from_the_hub(reference, *, device="cpu", on_download=None):
        loaded = real_load(str(root / "run"), device=device)
        loaded.source = "hub"
        return loaded

    monkeypatch.setattr(loading, "load_detector", from_the_hub)
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


# --- hostile names, refused overwrites, defaults and calibration counts (issue 14) -----------
HOSTILE = ("x[/]y.png", "[draft] cat.png", "x\x1b[2J\x1b[31mFAKE.png")


def test_hostile_names_of_unreadable_training_images_are_shown_as_they_are(
    tmp_path, tiny_local_dir, capsys
):
    data = write_labelled_folder(tmp_path / "data", n=2)
    for name in HOSTILE:  # x[/]y.png: the file ]y.png in a folder x[
        (data / "1_fake" / name).parent.mkdir(parents=True, exist_ok=True)
        (data / "1_fake" / name).write_bytes(b"not an image")
    code, out, err = _run([
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone",
        tiny_local_dir, "--pretrained", "none", "--probe-epochs", "1", "--epochs", "0",
        "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet",
    ], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 3
    assert any("1_fake/x[/]y.png: " in line for line in warnings)  # no MarkupError
    assert any("1_fake/[draft] cat.png: " in line for line in warnings)
    assert any("1_fake/x\\x1b[2J\\x1b[31mFAKE.png: " in line for line in warnings)
    assert "\x1b" not in err  # no escape sequence reaches the terminal
    assert "3 unreadable training images were skipped" in err


def test_train_refuses_an_out_folder_holding_other_files(tmp_path, tiny_local_dir, capsys):
    data = write_labelled_folder(tmp_path / "data", n=2)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "README.md").write_text("my own notes\n")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "proj"), "--backbone",
            tiny_local_dir, "--pretrained", "none", "--probe-epochs", "1", "--epochs", "0",
            "--batch-size", "4", "--device", "cpu", "--workers", "0"]
    code, out, err = _run(args, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"aidetect: error: --out {tmp_path / 'proj'} holds files this run "
                          "did not write (README.md)")
    assert (tmp_path / "proj" / "README.md").read_text() == "my own notes\n"
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["README.md"]


def test_eval_shows_hostile_subset_names_as_they_are(cli_run, tmp_path, capsys):
    root, _ = cli_run
    bench = tmp_path / "bench"
    write_labelled_folder(bench / "[sdxl] turbo", n=2, seed=11)
    write_labelled_folder(bench / "x\x1b[31mred", n=2, seed=12)
    code, out, err = _run(["eval", "--weights", str(root / "run"), "--data", str(bench),
                           "--device", "cpu", "--workers", "0", "--quiet"], capsys)
    assert code == 0, err
    assert "[sdxl] turbo" in out and "x\\x1b[31mred" in out and "\x1b" not in out


def test_eval_weights_default_to_the_univfd_preset(cli_run, tmp_path, capsys, monkeypatch):
    from aidetect import loading

    root, _ = cli_run
    asked = []
    real_load = loading.load_detector

    def load(reference, *, device="cpu", on_download=None):
        asked.append(reference)
        return real_load(str(root / "run"), device=device)  # univfd itself needs a download

    monkeypatch.setattr(loading, "load_detector", load)
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=2).parent
    code, out, err = _run(["eval", "--data", str(bench), "--device", "cpu", "--workers", "0",
                           "--quiet", "--format", "json"], capsys)
    assert code == 0, err
    assert asked == ["univfd"]
    report = json.loads(out)
    # Named as in scan's report: the tool and its version.
    assert report["tool"]["name"] == "aidetect" and report["tool"]["version"]
    assert "aidetect_version" not in report


def test_calibrate_says_how_many_real_images_the_threshold_rests_on(cli_run, tmp_path,
                                                                   capsys):
    import shutil

    root, _ = cli_run
    folder = tmp_path / "det"
    shutil.copytree(root / "run", folder, ignore=shutil.ignore_patterns("train"))
    bench = write_labelled_folder(tmp_path / "bench" / "a", n=10, seed=21).parent
    base = ["eval", "--weights", str(folder), "--data", str(bench), "--device", "cpu",
            "--workers", "0", "--format", "json"]
    code, out, err = _run([*base, "--calibrate", "0.01"], capsys)
    assert code == 0, err
    assert "estimated from 10 real images" in err
    assert ("warning: a 1.0% false-positive rate estimated from 10 real images is coarse: "
            "1000 or more give it some precision") in err
    assert json.loads(out)["calibrated"]["n_real"] == 10
    assert "for a false-positive rate of at most 1.0% on 10 real images" in (
        folder / "README.md").read_text()
    # 20 real images are enough for a rate of 0.5 (10 / 0.5): no warning.
    bench = write_labelled_folder(tmp_path / "bench2" / "a", n=20, seed=22).parent
    base[4] = str(bench)
    code, out, err = _run([*base, "--calibrate", "0.5"], capsys)
    assert code == 0 and "estimated from 20 real images" in err and "warning" not in err
