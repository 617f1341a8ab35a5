"""Weights references: folders, single files, the Hub cache (offline), and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_hub_cache

from aidetect.errors import EXIT_WEIGHTS, WeightsError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def same_outputs(a, b) -> None:
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images))


# --- parsing -------------------------------------------------------------------------------
def test_parse_reference_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aidetect.loading import parse_reference

    monkeypatch.chdir(tmp_path)
    assert parse_reference("univfd").kind == "preset"
    assert parse_reference("hf://owner/name@v1").revision == "v1"
    ref = parse_reference("owner/name@" + COMMIT)
    assert (ref.kind, ref.target, ref.revision) == ("hub", "owner/name", COMMIT)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert parse_reference("owner/name").kind == "folder"  # a local path wins over the Hub
    (tmp_path / "univfd").mkdir()
    assert parse_reference("univfd").kind == "preset"  # ... but not over a preset name
    assert parse_reference("./univfd").kind == "folder"


# --- local folders and single files --------------------------------------------------------
def test_folder_reports_path_and_sha256(detector_dir: Path, make_detector) -> None:
    import hashlib

    from aidetect.loading import load_detector

    loaded = load_detector(str(detector_dir))
    assert (loaded.source, loaded.path, loaded.revision) == ("folder", str(detector_dir), None)
    data = (detector_dir / "model.safetensors").read_bytes()
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    same_outputs(loaded.detector, make_detector())


def test_single_file_round_trip(make_detector, tmp_path: Path) -> None:
    from aidetect.loading import SINGLE_FILE_CONFIG_KEY, load_detector, save_single_file

    detector = make_detector(seed=3, threshold=0.3)
    path = save_single_file(detector, tmp_path / "det.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()[SINGLE_FILE_CONFIG_KEY])["threshold"] == 0.3
    loaded = load_detector(str(path))
    assert loaded.source == "file" and loaded.detector.threshold == 0.3
    same_outputs(loaded.detector, detector)


def test_saved_folder_needs_no_backbone_registry(tiny_local_dir: str, tmp_path: Path) -> None:
    """A detector on a `local-dir:` backbone loads after that folder is gone (model_cfg)."""
    from aidetect import Detector
    from aidetect.loading import load_detector

    torch.manual_seed(0)
    detector = Detector(backbone=tiny_local_dir, pretrained=None).eval()
    detector.save_pretrained(tmp_path / "det")
    gone = tmp_path / "moved-away"
    shutil.copytree(tiny_local_dir.removeprefix("local-dir:"), gone)
    shutil.rmtree(tiny_local_dir.removeprefix("local-dir:"))
    try:
        loaded = load_detector(str(tmp_path / "det"))
    finally:
        shutil.copytree(gone, tiny_local_dir.removeprefix("local-dir:"))
    assert loaded.detector.quick_gelu
    same_outputs(loaded.detector, detector)


# --- the Hub, through huggingface_hub's own cache lookup ----------------------------------
@pytest.fixture
def cached_repo(hub_cache: Path, detector_dir: Path) -> Path:
    return write_hub_cache(hub_cache, "owner/name", detector_dir, commit=COMMIT)


@pytest.mark.parametrize("reference", ["hf://owner/name", "owner/name", f"owner/name@{COMMIT}",
                                       "hf://owner/name@main"])
def test_hub_forms_load_from_the_cache(cached_repo: Path, detector_dir: Path, make_detector,
                                       reference: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from aidetect.hub import file_sha256
    from aidetect.loading import load_detector

    monkeypatch.chdir(tmp_path)  # no local owner/name folder here
    loaded = load_detector(reference)
    assert loaded.source == "hub" and loaded.revision == COMMIT
    assert loaded.path == str(cached_repo)
    assert loaded.sha256 == file_sha256(detector_dir / "model.safetensors")
    same_outputs(loaded.detector, make_detector())


def test_hub_revision_pins_a_commit(hub_cache: Path, make_detector, tmp_path: Path) -> None:
    from aidetect.loading import load_detector

    make_detector(seed=0).save_pretrained(tmp_path / "v1")
    make_detector(seed=1).save_pretrained(tmp_path / "v2")
    write_hub_cache(hub_cache, "owner/name", tmp_path / "v1", commit=OTHER, ref=None)
    write_hub_cache(hub_cache, "owner/name", tmp_path / "v2", commit=COMMIT)  # main
    old = load_detector(f"hf://owner/name@{OTHER}")
    new = load_detector("hf://owner/name")
    assert (old.revision, new.revision) == (OTHER, COMMIT)
    same_outputs(old.detector, make_detector(seed=0))
    same_outputs(new.detector, make_detector(seed=1))


def test_cached_detectors_lists_aidetect_repos_only(cached_repo: Path, hub_cache: Path,
                                                     tmp_path: Path) -> None:
    from aidetect.hub import cached_detectors

    other = tmp_path / "not-a-detector"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    write_hub_cache(hub_cache, "someone/bert", other, commit=OTHER)
    found = cached_detectors()
    assert [(c.repo_id, c.commit, c.refs) for c in found] == [("owner/name", COMMIT, ("main",))]


# --- errors: one line each, exit code 4 ----------------------------------------------------
def expect(reference: str, pattern: str) -> str:
    from aidetect.loading import load_detector

    with pytest.raises(WeightsError, match=pattern) as info:
        load_detector(reference)
    assert info.value.exit_code == EXIT_WEIGHTS and "\n" not in info.value.message
    return info.value.message


def test_offline_and_not_cached(hub_cache: Path) -> None:
    message = expect("hf://owner/missing", "not in the Hugging Face cache")
    assert message.endswith("run once online, or pass --weights PATH; HF_HUB_OFFLINE is set")
    assert "(no local folder owner/missing either)" in expect("owner/missing", "cache")


def test_univfd_preset_offline_fails_fast_without_download(hub_cache: Path) -> None:
    message = expect("univfd", "ViT-L-14-quickgelu 'openai' weights")
    assert message.endswith("HF_HUB_OFFLINE is set")
    assert not any(hub_cache.iterdir())  # nothing was fetched, not even partially


def test_unknown_preset_lists_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expect("dgsnet", r"unknown preset 'dgsnet': choose one of univfd")
    expect("missing.safetensors", "no such file or folder")


def test_missing_and_mismatched_files(detector_dir: Path, make_detector, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "empty").mkdir()
    expect(str(tmp_path / "empty"), "not a detector folder \\(no config.json\\)")
    shutil.copytree(detector_dir, tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    expect(str(tmp_path / "noweights"), "no model.safetensors")
    shutil.copytree(detector_dir, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    (tmp_path / "lora" / "config.json").write_text(json.dumps({**config, "lora_rank": 4}))
    expect(str(tmp_path / "lora"), "do not match the detector's config: missing")
    shutil.copytree(detector_dir, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"garbage")
    expect(str(tmp_path / "corrupt"), "not a valid safetensors file")
    (tmp_path / "model.pth").write_bytes(b"x")
    expect(str(tmp_path / "model.pth"), "only .safetensors weights are loaded; convert")
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    expect(str(tmp_path / "plain.safetensors"), "without a detector config in its metadata")
    shutil.copytree(detector_dir, tmp_path / "badprep")
    (tmp_path / "badprep" / "config.json").write_text(
        json.dumps({**config, "preprocess": {"method": "magic"}}))
    expect(str(tmp_path / "badprep"), "field 'preprocess.method' must be")


def test_newer_format_is_refused(detector_dir: Path, make_detector, tmp_path: Path) -> None:
    from aidetect.loading import save_single_file

    config = json.loads((detector_dir / "config.json").read_text())
    (detector_dir / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    expect(str(detector_dir), "saved by a newer aidetect .*format 99.*upgrade aidetect")

    detector = make_detector()
    path = save_single_file(detector, tmp_path / "det.safetensors")
    from safetensors.torch import load_file, save_file

    newer = {**detector.config, "format_version": 99}
    save_file(load_file(str(path)), path,
              metadata={"format": "pt", "aidetect_config": json.dumps(newer)})
    expect(str(path), "saved by a newer aidetect")


def test_repo_not_in_cache_but_others_are(cached_repo: Path) -> None:
    expect(f"hf://owner/name@{OTHER}", "not in the Hugging Face cache")
