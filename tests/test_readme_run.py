"""The README's commands, run against the real CLI (test_readme.py only parses them).

Each command runs as written, in a folder laid out as the README's examples assume (photos/
with two images and a truncated file, a detector folder, checkpoints), with three changes a
test machine needs: `--workers 0` (no decoding processes inside pytest), a tiny detector in
place of the `univfd` preset's ViT-L/14 (never downloaded), and, for train/finetune/eval, a
tiny random backbone and one epoch. What the README shows is compared with what comes out: the
exit codes, the JSON report's fields, the CSV columns, the wording of the summary line, the
offline error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_image, write_labelled_folder
from test_readme import README, readme_commands

from aidetect.cli.app import main

COMMANDS = readme_commands()
SCAN_COMMANDS = sorted({c for c in COMMANDS if c.startswith("aidetect scan ")})


def readme_json_report() -> dict:
    block = re.search(r"```json\n(.*?)```", README, flags=re.S).group(1)
    return json.loads(block.replace('"a825..."', '"' + "a" * 64 + '"'))


def readme_summary_line() -> str:
    return next(line for line in README.splitlines() if re.match(r"^\d+ scanned: ", line))


def summary_pattern(line: str) -> str:
    """The summary line with its numbers and device made generic: the wording alone."""
    parts = line.split(" · ")
    parts[1] = "DEVICE"
    generic = re.sub(r"\d+(\.\d+)?", "N", " · ".join(parts))
    generic = generic.replace(", N declared AI-generated", "")  # only when a file declares it
    return generic.replace("N error ", "N errors ")  # the plural follows the count


def run(capsys, words: list[str], stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    with pytest.raises(SystemExit) as exit_info:
        main(words)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_backbone) -> Path:
    """The folder the README's scan examples run in."""
    from aidetect import Detector

    root = tmp_path_factory.mktemp("readme")
    photos = root / "photos"
    (photos / "party").mkdir(parents=True)
    (photos / "holiday").mkdir()
    from PIL.PngImagePlugin import PngInfo

    parameters = PngInfo()  # AUTOMATIC1111's text chunk, as in the README's JSON example
    parameters.add_text("parameters", "a lighthouse at dusk\nNegative prompt: blurry\n"
                        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 96x96")
    random_image(96, 96, seed=1).save(photos / "party" / "IMG_2231.png", pnginfo=parameters)
    random_image(120, 90, seed=2).save(photos / "holiday" / "DSC01874.jpg", quality=90)
    jpeg = io.BytesIO()
    random_image(64, 64, seed=3).save(jpeg, format="JPEG")
    (photos / "broken.jpg").write_bytes(jpeg.getvalue()[:-8])  # truncated
    torch.manual_seed(0)
    detector = Detector(backbone=tiny_backbone, pretrained=None).eval()
    detector.save_pretrained(root / "my-detector")
    detector.save_pretrained(root / "tiny-univfd")
    from test_convert import authors_checkpoint

    from aidetect.convert import convert_checkpoint

    torch.save(authors_checkpoint(merged=False), root / "model_epoch_step2.pth")
    convert_checkpoint(root / "model_epoch_step2.pth", root / "dgs-net-official")
    random_image(64, 64, seed=4).save(root / "a.jpg")
    from provenance_files import make_chain

    (root / "roots.pem").write_bytes(make_chain("README newsroom").root_pem)  # --trust-anchors
    for folder in ("dir", "more"):
        (root / folder).mkdir()
        random_image(64, 64, seed=5).save(root / folder / "x.png")
    return root


@pytest.fixture
def in_workspace(workspace, monkeypatch) -> Path:
    """In the workspace, with the `univfd` preset answered by the tiny detector."""
    import aidetect.loading

    real_load = aidetect.loading.load_detector

    def load(reference, *, device="cpu", on_download=None):
        if reference != "univfd":
            return real_load(reference, device=device, on_download=on_download)
        loaded = real_load(str(workspace / "tiny-univfd"), device=device)
        loaded.reference, loaded.source = "univfd", "preset"
        return loaded

    monkeypatch.setattr(aidetect.loading, "load_detector", load)
    # The score cache keys `univfd` on the preset's own files: key it on the stand-in's.
    import aidetect.incremental

    real_facts = aidetect.incremental.read_model_facts

    def facts(reference, **kwargs):
        if reference != "univfd":
            return real_facts(reference, **kwargs)
        found = real_facts(str(workspace / "tiny-univfd"), **kwargs)
        return dataclasses.replace(found, reference="univfd", source="preset")

    monkeypatch.setattr(aidetect.incremental, "read_model_facts", facts)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("COLUMNS", "200")
    return workspace


@pytest.mark.parametrize("command", SCAN_COMMANDS)
def test_readme_scan_commands_run(command, in_workspace, capsys, monkeypatch):
    words = [*shlex.split(command)[1:], "--workers", "0"]
    stdin = "photos/party/IMG_2231.png\nphotos/holiday/DSC01874.jpg\n" if "-" in words else None
    code, out, err = run(capsys, words, stdin, monkeypatch)
    if "--device" in words and "cuda" in words and not torch.cuda.is_available():
        # "--device cuda without a GPU is an error, never a silent fallback" (exit 2)
        assert code == 2 and err.count("\n") == 1 and "cuda" in err
        return
    broken = "photos/broken.jpg" in out or any(w.startswith("./photos") for w in words)
    if "--output" in words:
        report = Path(words[words.index("--output") + 1])
        assert report.is_file() and out == ""
        assert f"report written to {report}" in err
    if "--fail-on-declared-ai" in words:  # scans ./photos, where IMG_2231.png declares AI
        assert code == 1, err  # 1 wins over 3
    elif "--fail-on-ai" in words:
        assert code in (1, 3)  # 1 wins over 3 when an image is judged AI-generated
    else:
        assert code == (3 if broken else 0), err  # 3: photos/broken.jpg has no score
    summary = next(line for line in err.splitlines() if " scanned: " in line) if (
        "--output" in words or "-f" in words or "--format" in words or not out.startswith(
            "verdict")) else None
    if summary is not None:
        assert summary_pattern(summary) == summary_pattern(readme_summary_line())


def test_the_json_report_has_the_readme_fields(in_workspace, capsys):
    code, _, err = run(capsys, ["scan", "./photos", "--format", "json", "--output",
                                "report.json", "--workers", "0"])
    report = json.loads((in_workspace / "report.json").read_text())
    shown = readme_json_report()
    assert code == 3
    assert list(report) == list(shown)
    for key in ("tool", "model", "counts"):
        assert list(report[key]) == list(shown[key]), key
    assert [list(r) for r in report["results"]] == [list(r) for r in shown["results"]]
    # The README's example is this scan: two images scored, one truncated file.
    assert [r["path"] for r in report["results"]] == [r["path"] for r in shown["results"]]
    for key in ("found", "total", "scanned", "errors", "declared_ai"):
        assert report["counts"][key] == shown["counts"][key], key
    assert (report["complete"], report["all_scored"]) == (shown["complete"],
                                                          shown["all_scored"])
    truncated, shown_truncated = report["results"][0], shown["results"][0]
    ignored = {"error": None, "sha256": None}  # the README abbreviates the hash
    assert {**truncated, **ignored} == {**shown_truncated, **ignored}
    for error in (truncated["error"], shown_truncated["error"]):  # Pillow counts the bytes
        assert re.fullmatch(r"truncated file \(image file is truncated \(\d+ bytes not "
                            r"processed\)\)", error), error
    assert report["model"]["reference"] == "univfd" and report["schema_version"] == 1
    counts = report["counts"]
    line = next(line for line in err.splitlines() if " scanned: " in line)
    assert line.startswith(f"{counts['scanned']} scanned: {counts['ai_generated']} "
                           f"AI-generated, {counts['real']} real, 1 error, "
                           f"{counts['declared_ai']} declared AI-generated · ")
    assert counts["declared_ai"] == shown["counts"]["declared_ai"] == 1


def test_the_csv_report_has_the_readme_columns(in_workspace, capsys):
    run(capsys, ["scan", "./photos", "--format", "csv", "--output", "report.csv", "--workers",
                 "0"])
    row = re.search(r"\| `csv` \| one row per file: ([^|]+)\|", README).group(1)
    columns = ",".join(re.findall(r"`([a-z0-9_,]+)`", row))
    with open(in_workspace / "report.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert ",".join(rows[0]) == columns and len(rows) == 4


def test_the_table_ends_with_the_readme_summary_wording(in_workspace, capsys):
    code, out, _ = run(capsys, ["scan", "./photos", "--format", "table", "--workers", "0"])
    lines = out.rstrip().splitlines()
    assert code == 3 and lines[0].split() == ["verdict", "┃", "score", "┃", "declared", "┃",
                                              "path", "┃", "size"]
    assert lines[0].split() == README.split("$ aidetect scan ./photos\n")[1].split("\n")[0].split()
    assert summary_pattern(lines[-1]) == summary_pattern(readme_summary_line())
    assert lines[-1].startswith("2 scanned: ")
    assert " real, 1 error, 1 declared AI-generated · " in lines[-1]
    assert "truncated file (image file is truncated" in out


def test_the_offline_error_is_the_readme_line(workspace, hub_cache, capsys, monkeypatch):
    """`HF_HUB_OFFLINE=1 aidetect scan ./photos`, the real preset, an empty cache."""
    monkeypatch.chdir(workspace)
    shown = next(line for line in README.splitlines()
                 if line.startswith("aidetect: error: univfd: "))
    code, out, err = run(capsys, ["scan", "./photos", "--workers", "0"])
    assert (code, out) == (4, "")
    assert err.strip() == shown.replace("/home/me/.cache/huggingface/hub", str(hub_cache))


def test_models_commands(capsys):
    code, out, _ = run(capsys, ["models", "--json"])
    document = json.loads(out)
    assert code == 0 and [p["name"] for p in document["presets"]] == ["univfd"]
    assert document["presets"][0]["license"] == "MIT"
    code, out, _ = run(capsys, ["models"])
    assert code == 0 and "univfd" in out and "license" in out


def test_convert_commands(workspace, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(workspace / "model_epoch_step2.pth", tmp_path)
    torch.save({"weight": torch.randn(1, 768), "bias": torch.zeros(1)},
               tmp_path / "fc_weights.pth")
    for command in [c for c in COMMANDS if c.startswith("aidetect convert ")]:
        words = shlex.split(command)[1:]
        out_folder = Path(words[words.index("--out") + 1])
        code, out, err = run(capsys, words)
        assert (code, out.strip()) == (0, str(out_folder)), err
        assert (out_folder / "config.json").is_file()
        code, _, err = run(capsys, words)  # run twice: refused, nothing overwritten
        assert code == 2 and "not empty" in err


def test_train_finetune_and_eval_commands(tmp_path, tiny_local_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_labelled_folder(tmp_path / "DATA", n=2)
    write_labelled_folder(tmp_path / "NEWGEN", n=2, seed=1)
    for subset in ("sdxl", "midjourney"):
        write_labelled_folder(tmp_path / "BENCH" / subset, n=2, seed=2)
    tiny = ["--probe-epochs", "1", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
            "--workers", "0"]
    backbone = ["--backbone", tiny_local_dir, "--pretrained", "none"]
    commands = [c for c in COMMANDS
                if c.startswith(("aidetect train", "aidetect finetune", "aidetect eval"))]
    assert len(commands) == 7
    import aidetect.loading

    real_load = aidetect.loading.load_detector

    def load(reference, *, device="cpu", on_download=None):  # `univfd`: a tiny stand-in
        reference = str(tmp_path / "runs" / "exp2") if reference == "univfd" else reference
        return real_load(reference, device=device, on_download=on_download)

    monkeypatch.setattr(aidetect.loading, "load_detector", load)
    for command in commands:
        words = shlex.split(command)[1:]
        if words[0] == "train":
            words += backbone + tiny
        elif words[0] == "finetune":
            words += ["--epochs", "1", "--batch-size", "2", "--device", "cpu", "--workers", "0"]
        else:
            words += ["--device", "cpu", "--workers", "0"]
        code, _, err = run(capsys, words)
        assert code == 0, (command, err)
    document = json.loads((tmp_path / "eval.json").read_text())
    assert sorted(s["name"] for s in document["subsets"]) == ["midjourney", "sdxl"]
    assert set(document["subsets"][0]) >= {"name", "acc", "ap", "r_acc", "f_acc", "n_real",
                                          "n_fake"}
    assert "mean" in document
