"""`aidetect.licences` and the cards: every detector names what it was built from, under which
licence, with the citation; the licence files travel with the weights."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_labelled_folder
from test_publish import converted_univfd_on_tiny_tower

from aidetect.card import CardInfo, render_card
from aidetect.errors import WeightsError
from aidetect.licences import (
    DGS_NET_CITATION,
    Licence,
    licences_of_loaded,
    missing_licence_files,
    named_licence_files,
    recorded_licences,
)


def card_info(**overrides) -> CardInfo:
    fields = dict(kind="train", backbone="ViT-L-14-quickgelu", base_pretrained="openai",
                  data="DATA", data_summary="2 real and 2 AI-generated images",
                  captions="class folders", recipe={"seed": 0})
    return CardInfo(**{**fields, **overrides})


def test_train_card_names_clip_mit_and_cites_dgs_net() -> None:
    card = render_card(card_info())
    assert "## Licence" in card and "OpenAI CLIP weights (ViT-L-14-quickgelu, open_clip tag " \
        "'openai'): MIT (https://github.com/openai/CLIP/blob/main/LICENSE)." in card
    assert f"- {DGS_NET_CITATION}" in card and "Learning Transferable Visual Models" in card
    assert named_licence_files_of_text(card) == []  # a URL is not a file in the folder
    random = render_card(card_info(base_pretrained=None))
    assert "Built from random weights" in random and "OpenAI CLIP weights" not in random


def named_licence_files_of_text(text: str, tmp: Path | None = None) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "README.md").write_text(text)
        return named_licence_files(folder)


def test_converted_univfd_names_and_ships_its_licence(tmp_path: Path) -> None:
    from aidetect.convert import convert_checkpoint

    torch.save({"weight": torch.randn(1, 768), "bias": torch.randn(1)}, tmp_path / "fc.pth")
    out = tmp_path / "univfd"
    convert_checkpoint(tmp_path / "fc.pth", out, format="univfd")
    config = json.loads((out / "config.json").read_text())
    licences = recorded_licences(config, "config.json")
    assert [(x.name, x.file) for x in licences] == [("MIT", None), ("MIT", "LICENSE-univfd.txt")]
    card = (out / "README.md").read_text()
    assert "the notice ships in this folder as `LICENSE-univfd.txt`" in card
    assert "Ojha" in card and "Radford" in card  # UnivFD's and CLIP's citations
    assert named_licence_files(out) == ["LICENSE-univfd.txt"] and not missing_licence_files(out)
    (out / "LICENSE-univfd.txt").unlink()
    assert missing_licence_files(out) == ["LICENSE-univfd.txt"]


def test_converted_dgs_net_states_no_licence_it_does_not_know(tmp_path: Path) -> None:
    from test_convert import authors_checkpoint

    from aidetect.convert import convert_checkpoint, dgs_net_licences

    torch.save(authors_checkpoint(merged=False), tmp_path / "ckpt.pth")
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "DGS-Net authors' published checkpoint" in card
    assert "not stated in the sources aidetect follows" in card and DGS_NET_CITATION in card
    assert not missing_licence_files(tmp_path / "out")  # names no file it lacks
    vit_l = SimpleNamespace(backbone="ViT-L-14-quickgelu", base_pretrained="openai")
    assert [x.name for x in dgs_net_licences(vit_l)][0] == "MIT"  # OpenAI CLIP underneath


def test_finetune_inherits_the_licences_and_their_files(tmp_path: Path, tiny_backbone: str
                                                        ) -> None:
    from aidetect.config import TrainConfig
    from aidetect.train import TrainJob, run_training

    start = converted_univfd_on_tiny_tower(tmp_path, tiny_backbone)
    data = write_labelled_folder(tmp_path / "data", n=2)
    job = TrainJob(data=data, out=tmp_path / "ft", weights=str(start),
                   config=TrainConfig(epochs=1, batch_size=4, lr=0.0), device="cpu", workers=0)
    run_training(job)
    out = tmp_path / "ft"
    assert (out / "LICENSE-univfd.txt").read_bytes() == (start / "LICENSE-univfd.txt").read_bytes()
    card = (out / "README.md").read_text()
    assert "fine-tuning" in card and "`LICENSE-univfd.txt`" in card and "Ojha" in card
    config = json.loads((out / "config.json").read_text())
    assert config["licenses"] == json.loads((start / "config.json").read_text())["licenses"]


def test_a_preset_start_brings_the_presets_licences() -> None:
    from aidetect.presets import get_preset

    loaded = SimpleNamespace(source="preset", reference="univfd", path="", detector=None)
    licences, folder = licences_of_loaded(loaded)
    assert [x.file for x in licences] == [None, "LICENSE-univfd.txt"]
    assert folder == get_preset("univfd").license_path.parent


@pytest.mark.parametrize("entry", [
    {"subject": "x", "name": "MIT", "file": "../outside.txt"},
    {"subject": "x"},
    "MIT",
])
def test_malformed_licence_records_are_one_line_errors(entry) -> None:
    with pytest.raises(WeightsError, match="config.json: .*licence"):
        recorded_licences({"licenses": [entry]}, "config.json")


def test_a_record_round_trips() -> None:
    licence = Licence(subject="head", name="MIT", file="LICENSE", url=None, citation="C.")
    assert Licence.from_dict(licence.to_dict(), "x") == licence


def test_a_hub_start_fetches_its_licence_files_from_the_same_commit(
        tmp_path: Path, tiny_backbone: str, hub_cache: Path, monkeypatch) -> None:
    import huggingface_hub
    from conftest import write_hub_cache

    from aidetect.licences import copy_licence_files
    from aidetect.loading import load_detector

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = converted_univfd_on_tiny_tower(tmp_path, tiny_backbone)
    snapshot = write_hub_cache(hub_cache, "me/univfd", folder, commit=commit)
    (snapshot / "LICENSE-univfd.txt").unlink()  # loading fetches config and weights only
    loaded = load_detector(f"hf://me/univfd@{commit}")
    monkeypatch.chdir(tmp_path)

    licences, source = licences_of_loaded(loaded)  # offline, not cached: stays missing
    assert copy_licence_files(licences, source, tmp_path) == ["LICENSE-univfd.txt"]

    asked = []

    def download(repo_id, filename, *, revision, **kwargs):
        asked.append((repo_id, filename, revision))
        (snapshot / filename).write_bytes((folder / filename).read_bytes())
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    licences, source = licences_of_loaded(loaded)
    assert asked == [("me/univfd", "LICENSE-univfd.txt", commit)]
    out = tmp_path / "out"
    out.mkdir()
    assert copy_licence_files(licences, source, out) == []
    assert (out / "LICENSE-univfd.txt").read_bytes() == (folder / "LICENSE-univfd.txt").read_bytes()
