"""`aidetect models`, `convert`, `push`, and `--weights` forms through the CLI."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

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


def test_push_uploads_the_folder_as_it_is(detector_dir: Path, fake_hub, capsys) -> None:
    (detector_dir / "README.md").write_text("# My detector\n\nTrained on my data.\n")
    code, out, err = run(["push", str(detector_dir), "--repo", "me/my-detector", "--private",
                          "-m", "first"], capsys)
    assert code == 0, err
    assert out.strip() == f"https://huggingface.co/me/my-detector/commit/{'0' * 40}"
    assert f"pushed 3 files of {detector_dir} to hf://me/my-detector@main" in err
    create, commit = fake_hub
    assert create["repo_id"] == "me/my-detector" and create["private"] is True
    assert commit["commit_message"] == "first" and commit["revision"] == "main"
    assert commit["files"] == {p.name: p.read_bytes() for p in detector_dir.iterdir()}
    config = json.loads(commit["files"]["config.json"])
    assert config["pretrained"] is None and "model_cfg" in config
    assert config["aidetect_version"]  # the folder's own config, as saved


def test_push_dry_run_lists_files_and_target(detector_dir: Path, fake_hub, capsys) -> None:
    (detector_dir / "README.md").unlink()
    (detector_dir / "train").mkdir()
    (detector_dir / "train" / "checkpoint.pt").write_bytes(b"state")
    code, out, err = run(["push", str(detector_dir), "--repo", "hf://me/det", "--revision",
                          "dev", "--dry-run"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "would upload to hf://me/det@dev:",
        "  README.md (aidetect's card, written first: the folder has none)",
        "  config.json",
        "  model.safetensors",
        "  left out: train/",
    ]
    assert fake_hub == [] and not (detector_dir / "README.md").exists()


def test_push_refuses_a_missing_licence_file_in_one_line(detector_dir: Path, fake_hub,
                                                         capsys) -> None:
    config = json.loads((detector_dir / "config.json").read_text())
    config["licenses"].append({"subject": "head", "name": "MIT", "file": "LICENSE-head.txt"})
    (detector_dir / "config.json").write_text(json.dumps(config))
    code, out, err = run(["push", str(detector_dir), "--repo", "me/det"], capsys)
    assert (code, out) == (4, "")
    assert err == (f"aidetect: error: {detector_dir}: licence file LICENSE-head.txt is named in "
                   "its config or model card but missing from the folder; put it back before "
                   "publishing\n")
    assert fake_hub == []
    (detector_dir / "LICENSE-head.txt").write_text("MIT License\n")
    code, _, err = run(["push", str(detector_dir), "--repo", "me/det"], capsys)
    assert code == 0, err
    assert fake_hub[-1]["files"]["LICENSE-head.txt"] == b"MIT License\n"


def test_push_refuses_a_non_detector_in_one_line(tmp_path: Path, fake_hub, capsys) -> None:
    (tmp_path / "run").mkdir()
    code, out, err = run(["push", str(tmp_path / "run"), "--repo", "me/det"], capsys)
    assert (code, out) == (4, "")
    assert err.count("\n") == 1 and "not a detector folder (no config.json)" in err
    assert fake_hub == []  # nothing reached the Hub


def test_push_without_a_token_stops_before_the_hub(detector_dir: Path, fake_hub,
                                                   monkeypatch, capsys) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no `hf auth login` either
    code, out, err = run(["push", str(detector_dir), "--repo", "me/det"], capsys)
    assert (code, out) == (2, "")
    assert err == ("aidetect: error: no Hugging Face token: set HF_TOKEN to a token with write "
                   "access, or run `hf auth login` (or use --dry-run to check the folder)\n")
    assert fake_hub == []


def test_push_offline_is_one_line_not_a_traceback(detector_dir: Path, fake_hub, monkeypatch,
                                                  capsys) -> None:
    """No network: huggingface_hub lets its HTTP client's ConnectError through."""
    import requests
    from huggingface_hub import HfApi
    from huggingface_hub.utils import _http

    # The HTTP client this huggingface_hub uses: httpx2 (2.x), httpx (1.x) or requests (0.x).
    client = vars(_http).get("httpx2") or vars(_http).get("httpx")
    connect_error = client.ConnectError if client else requests.ConnectionError

    def unreachable(self, repo_id, **kwargs):
        raise connect_error("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    code, out, err = run(["push", str(detector_dir), "--repo", "me/det"], capsys)
    assert (code, out) == (4, "")
    assert err == ("aidetect: error: hf://me/det: cannot reach the Hugging Face Hub ([Errno -2] "
                   "Name or service not known); check the network and try again\n")


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
