"""`aidetect models`, `convert`, `push`, and `--weights` forms through the CLI."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_hub_cache
from test_convert import authors_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
app_module = importlib.import_module("aidetect.cli.app")


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`aidetect ARGV` in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        app_module.main(argv)
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_lists_presets_and_cached_detectors(hub_cache: Path, detector_dir: Path,
                                                   capsys) -> None:
    code, out, _ = run(["models", "--json"], capsys)
    assert code == 0
    document = json.loads(out)
    univfd = next(p for p in document["presets"] if p["name"] == "univfd")
    assert univfd["backbone"] == "ViT-L-14-quickgelu" and univfd["license"] == "MIT"
    assert univfd["preprocess"] == "center_crop" and document["cached"] == []

    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=COMMIT)
    code, out, _ = run(["models", "--json"], capsys)
    cached = json.loads(out)["cached"]
    assert [(c["repo_id"], c["commit"], c["refs"]) for c in cached] == [
        ("owner/name", COMMIT, ["main"])]
    assert cached[0]["reference"] == f"hf://owner/name@{COMMIT}"
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "univfd" in out and "center_crop" in out and "MIT" in out
    assert f"hf://owner/name@{COMMIT[:12]}" in out


def test_convert_writes_a_loadable_detector(tmp_path: Path, capsys) -> None:
    from aidetect.loading import load_detector

    torch.save(authors_checkpoint(merged=False), tmp_path / "model_epoch_step2.pth")
    code, out, err = run(["convert", str(tmp_path / "model_epoch_step2.pth"),
                          "--out", str(tmp_path / "dgs")], capsys)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "dgs")  # stdout: only the output path
    assert "delta already in stored W: no" in err and "LoRA rank 3" in err
    assert load_detector(str(tmp_path / "dgs")).detector.preprocess_config.method == "patches"


def test_convert_errors_exit_4_and_bad_options_2(tmp_path: Path, capsys) -> None:
    code, out, err = run(["convert", str(tmp_path / "missing.pth"), "--out",
                          str(tmp_path / "o")], capsys)
    assert (code, out) == (4, "")
    assert err == f"aidetect: error: {tmp_path / 'missing.pth'}: no such file\n"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, tmp_path / "fc.pth")
    code, _, err = run(["convert", str(tmp_path / "fc.pth"), "--out", str(tmp_path / "o.st"),
                        "--single-file"], capsys)
    assert code == 2 and "--single-file is for full detectors" in err  # a usage error
    code, _, err = run(["convert", str(tmp_path / "fc.pth"), "--out", str(tmp_path / "o"),
                        "--format", "bogus"], capsys)
    assert code == 2 and "--format bogus: choose one of auto, dgs-net, univfd" in err


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """HfApi's network calls replaced at the boundary; records what would be uploaded."""
    from huggingface_hub import HfApi

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls.append({"call": "upload_folder", "files": files, **kwargs})
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/{COMMIT}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_config_weights_and_keeps_the_card(detector_dir: Path, fake_hub,
                                                        capsys) -> None:
    (detector_dir / "README.md").write_text("# My detector\n\nTrained on my data.\n")
    code, out, err = run(["push", str(detector_dir), "--repo", "me/my-detector", "--private",
                          "-m", "first"], capsys)
    assert code == 0, err
    assert out.strip() == f"https://huggingface.co/me/my-detector/commit/{COMMIT}"
    create, upload = fake_hub
    assert create == {"call": "create_repo", "repo_id": "me/my-detector", "private": True,
                      "exist_ok": True}
    assert upload["repo_id"] == "me/my-detector" and upload["repo_type"] == "model"
    assert upload["commit_message"] == "first"
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert upload["files"]["README.md"].decode() == "# My detector\n\nTrained on my data.\n"
    config = json.loads(upload["files"]["config.json"])
    assert config["pretrained"] is None and "model_cfg" in config
    assert config["aidetect_version"] and config == json.loads(
        (detector_dir / "config.json").read_text())  # the folder's own config, as saved


def test_push_without_a_card_writes_the_mixin_card(detector_dir: Path, fake_hub,
                                                   capsys) -> None:
    (detector_dir / "README.md").unlink(missing_ok=True)
    code, _, err = run(["push", str(detector_dir), "--repo", "hf://me/det"], capsys)
    assert code == 0, err
    card = fake_hub[1]["files"]["README.md"].decode()
    assert "library_name: aidetect" in card
    assert fake_hub[0]["private"] is False


def test_push_refuses_a_non_detector_in_one_line(tmp_path: Path, fake_hub, capsys) -> None:
    (tmp_path / "run").mkdir()
    code, out, err = run(["push", str(tmp_path / "run"), "--repo", "me/det"], capsys)
    assert (code, out) == (4, "")
    assert err.count("\n") == 1 and "not a detector folder (no config.json)" in err
    assert fake_hub == []  # nothing reached the Hub


def test_eval_reports_the_hub_commit_and_sha256(hub_cache: Path, detector_dir: Path,
                                                make_labelled_folder, tmp_path: Path,
                                                monkeypatch, capsys) -> None:
    """`--weights owner/name@commit` in a command that loads weights, offline."""
    from aidetect.hub import file_sha256

    pytest.importorskip("aidetect.data")  # eval decodes images with the scan helper's module
    write_hub_cache(hub_cache, "owner/name", detector_dir, commit=COMMIT)
    bench = make_labelled_folder(tmp_path / "bench" / "subset", n=2, size=64).parent
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["eval", "--weights", f"owner/name@{COMMIT}", "--data", str(bench),
                          "--format", "json", "--device", "cpu", "--workers", "0", "--quiet"],
                         capsys)
    assert code == 0, err
    model = json.loads(out)["model"]
    assert model["revision"] == COMMIT and model["source"] == "hub"
    assert model["sha256"] == file_sha256(detector_dir / "model.safetensors")


def test_weights_errors_reach_the_user_in_one_line(hub_cache: Path, tmp_path: Path,
                                                   make_labelled_folder, capsys) -> None:
    bench = make_labelled_folder(tmp_path / "bench" / "subset", n=1, size=64).parent
    code, out, err = run(["eval", "--weights", "hf://owner/absent", "--data", str(bench),
                          "--device", "cpu", "--workers", "0", "--quiet"], capsys)
    assert (code, out) == (4, "")
    assert err.startswith("aidetect: error: hf://owner/absent: not in the Hugging Face cache")
    assert err.endswith("HF_HUB_OFFLINE is set\n") and err.count("\n") == 1
