"""`aidetect.publish`: a detector folder goes to the Hub as it is, licence files included.

The Hub is faked at HfApi's boundary (`fake_hub` in conftest.py): nothing leaves the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aidetect.errors import UsageError, WeightsError


def converted_univfd_on_tiny_tower(tmp_path: Path, tiny_backbone: str) -> Path:
    """`convert --format univfd`'s folder (config, card, licence file), its tower swapped for a
    tiny one stored in a file, so that it loads offline exactly as scan loads it."""
    import open_clip
    from safetensors.torch import save_file

    from aidetect.convert import convert_checkpoint

    torch.save({"weight": torch.randn(1, 768), "bias": torch.randn(1)}, tmp_path / "fc.pth")
    folder = tmp_path / "univfd-head"
    convert_checkpoint(tmp_path / "fc.pth", folder, format="univfd")
    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_backbone, pretrained=None)
    save_file(clip.state_dict(), tmp_path / "tiny-clip.safetensors")
    save_file({"head.weight": torch.randn(1, 16), "head.bias": torch.randn(1)},
              folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    tiny_clip = str(tmp_path / "tiny-clip.safetensors")  # its text tower serves finetune too
    config.update(backbone=tiny_backbone, pretrained=tiny_clip, base_pretrained=tiny_clip)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_commit_holds_the_folders_files_byte_for_byte(detector_dir: Path, fake_hub) -> None:
    from aidetect.publish import push_detector

    (detector_dir / "NOTES.md").write_text("how I trained it\n")
    (detector_dir / "train").mkdir()
    (detector_dir / "train" / "checkpoint.pt").write_bytes(b"resume state")
    (detector_dir / ".cache").mkdir()
    (detector_dir / ".cache" / "x").write_text("x")
    result = push_detector(detector_dir, "hf://me/det", commit_message="first")
    create, commit = fake_hub
    assert create == {"call": "create_repo", "repo_id": "me/det", "private": False,
                      "exist_ok": True, "token": "hf_test_token"}
    assert commit["revision"] == "main" and commit["commit_message"] == "first"
    expected = {p.name: p.read_bytes() for p in detector_dir.iterdir() if p.is_file()}
    assert commit["files"] == expected  # every file, unchanged; nothing else
    assert set(expected) == {"config.json", "model.safetensors", "README.md", "NOTES.md"}
    assert result.left_out == [".cache/", "train/"]
    assert json.loads(commit["files"]["config.json"])["aidetect_version"]
    assert result.url == f"https://huggingface.co/me/det/commit/{'0' * 40}"


def test_a_converted_univfd_head_travels_with_its_licence(tmp_path: Path, tiny_backbone: str,
                                                          fake_hub) -> None:
    from aidetect.publish import push_detector

    folder = converted_univfd_on_tiny_tower(tmp_path, tiny_backbone)
    push_detector(folder, "me/univfd", revision="v1")
    create, branch, commit = fake_hub
    assert branch == {"call": "create_branch", "repo_id": "me/univfd", "branch": "v1",
                      "exist_ok": True, "token": "hf_test_token"}
    assert commit["revision"] == "v1"
    assert set(commit["files"]) == {"config.json", "model.safetensors", "README.md",
                                    "LICENSE-univfd.txt"}
    assert b"Wisconsin AI and Vision Lab" in commit["files"]["LICENSE-univfd.txt"]
    # a head-only folder stays head-only: two tensors, and the config that names its tower
    assert commit["files"]["config.json"] == (folder / "config.json").read_bytes()
    assert commit["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_a_missing_licence_file_is_refused_before_the_hub(tmp_path: Path, tiny_backbone: str,
                                                          fake_hub) -> None:
    from aidetect.publish import push_detector

    folder = converted_univfd_on_tiny_tower(tmp_path, tiny_backbone)
    (folder / "LICENSE-univfd.txt").unlink()
    with pytest.raises(WeightsError, match="licence file LICENSE-univfd.txt is named in its "
                                           "config or model card but missing") as error:
        push_detector(folder, "me/univfd")
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="LICENSE-univfd.txt"):
        push_detector(folder, "me/univfd", dry_run=True)
    assert fake_hub == []


@pytest.mark.parametrize("card", [
    "# Mine\n\nWeights under the terms in LICENSE-weights.txt.\n",
    "---\nlicense: other\nlicense_link: terms/LICENSE.md\n---\n# Mine\n",
])
def test_a_licence_file_named_by_the_card_is_required(detector_dir: Path, fake_hub,
                                                      card: str) -> None:
    from aidetect.publish import push_detector

    (detector_dir / "README.md").write_text(card)
    with pytest.raises(WeightsError, match="licence file .*LICENSE"):
        push_detector(detector_dir, "me/det")
    assert fake_hub == []


def test_licence_names_in_urls_and_prose_are_not_files(detector_dir: Path) -> None:
    from aidetect.licences import named_licence_files

    (detector_dir / "README.md").write_text(
        "MIT License, see https://github.com/openai/CLIP/blob/main/LICENSE and "
        "[the terms](https://example.org/LICENSE-x.txt).\n")
    assert named_licence_files(detector_dir) == []


def test_dry_run_checks_and_uploads_nothing(detector_dir: Path, fake_hub,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from aidetect.publish import push_detector

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(detector_dir.parent / "no-token-here"))
    (detector_dir / "README.md").unlink()
    result = push_detector(detector_dir, "me/det", revision="dev", dry_run=True)
    assert (result.repo_id, result.revision, result.url) == ("me/det", "dev", None)
    assert result.files == ["README.md", "config.json", "model.safetensors"]
    assert result.card_written and not (detector_dir / "README.md").exists()  # nothing written
    assert fake_hub == []


def test_a_folder_without_a_card_gets_aidetects_once(detector_dir: Path, fake_hub) -> None:
    from aidetect.publish import push_detector

    (detector_dir / "README.md").unlink()
    result = push_detector(detector_dir, "me/det")
    card = (detector_dir / "README.md").read_text()
    assert result.card_written and fake_hub[-1]["files"]["README.md"] == card.encode()
    assert "library_name: aidetect" in card and "More Information Needed" not in card
    assert "## Licence" in card
    assert not push_detector(detector_dir, "me/det").card_written  # written once, then kept


def test_refusals_are_one_line_and_reach_no_hub(tmp_path: Path, detector_dir: Path,
                                                fake_hub) -> None:
    from aidetect.publish import push_detector

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    with pytest.raises(WeightsError, match="not a detector folder"):
        push_detector(tmp_path / "run", "me/det")
    with pytest.raises(UsageError, match="not a Hub repository id"):
        push_detector(detector_dir, "not a repo")
    (detector_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        push_detector(detector_dir, "me/det")  # loaded as scan loads it, before any upload
    assert fake_hub == []


def test_a_folder_named_like_a_preset_is_pushed_as_the_folder(detector_dir: Path, fake_hub,
                                                              monkeypatch) -> None:
    from aidetect.publish import push_detector

    named = detector_dir.parent / "univfd"
    detector_dir.rename(named)
    monkeypatch.chdir(named.parent)
    result = push_detector("univfd", "me/det")  # the folder, not the preset's ViT-L
    assert "model.safetensors" in fake_hub[-1]["files"] and result.url


def test_a_refused_token_says_how_to_fix_it(detector_dir: Path, fake_hub,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from aidetect.publish import push_detector

    def refuse(self, repo_id, **kwargs):
        response = SimpleNamespace(status_code=401, headers={}, request=None)
        raise HfHubHTTPError("401 Client Error: Unauthorized for url: https://huggingface.co/"
                             "api/repos/create\nInvalid credentials", response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(WeightsError) as error:
        push_detector(detector_dir, "me/det")
    assert str(error.value) == (
        "hf://me/det: the Hub refused: 401 Client Error: Unauthorized for url: "
        "https://huggingface.co/api/repos/create; check HF_TOKEN / `hf auth login` (a token "
        "with write access)")

