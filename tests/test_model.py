"""Detector construction, QuickGELU, the teacher, captions, and save/load round trips."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import load_file, save_file

from aidetect import Detector, Teacher
from aidetect.captions import encode_captions
from aidetect.errors import WeightsError
from aidetect.model import FORMAT_VERSION
from aidetect.towers import create_clip, tag_uses_quick_gelu


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_builds_offline_with_random_weights(make_detector):
    detector = make_detector()
    logits = detector(_images())
    assert logits.shape == (3,)
    assert detector.encode_image(_images()).shape == (3, 16)
    assert detector.threshold == 0.5 and detector.preprocess_config.method == "patches"


def test_vit_b16_builds_offline_without_download():
    detector = Detector(backbone="ViT-B-16", pretrained=None)
    assert detector.embed_dim == 512
    assert not detector.quick_gelu  # no OpenAI tag asked: open_clip's plain GELU


def test_openai_tags_get_quick_gelu(monkeypatch, tiny_backbone):
    assert tag_uses_quick_gelu("ViT-L-14", "openai")
    assert tag_uses_quick_gelu("ViT-L-14-quickgelu", "openai")
    assert not tag_uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")
    # The call for the paper's backbone asks open_clip for QuickGELU and refuses random weights.
    seen = {}
    real_create = open_clip.create_model

    def recording_create(name, **kwargs):
        seen.update(kwargs, name=name)
        return real_create(tiny_backbone, pretrained=None,
                           force_quick_gelu=kwargs["force_quick_gelu"])

    monkeypatch.setattr(open_clip, "create_model", recording_create)
    model = create_clip("ViT-L-14", "openai")
    assert seen["force_quick_gelu"] is True and seen["require_pretrained"] is True
    assert seen["pretrained"] == "openai" and seen["load_weights"] is True
    assert any(isinstance(m, QuickGELU) for m in model.visual.modules())


def test_a_pretrained_tag_that_cannot_load_is_an_error(tiny_backbone):
    with pytest.raises(RuntimeError):  # never a silent fallback to random weights
        create_clip(tiny_backbone, "openai")


def test_save_load_round_trip_is_exact_and_quiet(make_detector, tmp_path, capsys):
    detector = make_detector(lora_rank=6, threshold=0.7)
    with torch.no_grad():
        for layer in detector.visual.transformer.resblocks:
            layer.attn.lora_v_B.normal_()
    detector.save_pretrained(tmp_path / "det")
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["pretrained"] is None and config["lora_rank"] == 6
    assert config["threshold"] == 0.7 and config["format_version"] == FORMAT_VERSION

    loaded = Detector.from_pretrained(tmp_path / "det")
    assert capsys.readouterr().out == ""  # stdout stays clean for machine output
    assert loaded.has_lora and loaded.threshold == 0.7 and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images()), detector.eval()(_images()), rtol=0, atol=0)

    detector.merge_lora()
    detector.save_pretrained(tmp_path / "merged")
    merged = Detector.from_pretrained(tmp_path / "merged")
    assert not merged.has_lora
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["lora_rank"] == 0
    with torch.no_grad():
        torch.testing.assert_close(merged(_images()), loaded(_images()), rtol=1e-5, atol=1e-5)


def test_loading_is_strict(detector_dir):
    weights = load_file(detector_dir / "model.safetensors")
    weights.pop("head.bias")
    save_file(weights, detector_dir / "model.safetensors")
    with pytest.raises(WeightsError, match="missing 1 tensors"):
        Detector.from_pretrained(detector_dir)


def test_newer_format_and_missing_weights_are_refused(detector_dir):
    config_path = detector_dir / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(WeightsError, match="newer aidetect"):
        Detector.from_pretrained(detector_dir)
    config_path.write_text(json.dumps(config))
    (detector_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        Detector.from_pretrained(detector_dir)


def test_teacher_shares_the_student_encoder(make_detector):
    student = make_detector(lora_rank=6)
    with torch.no_grad():
        for layer in student.visual.transformer.resblocks:
            layer.attn.lora_q_B.normal_()
    probe = torch.nn.Linear(student.embed_dim, 1)
    teacher = Teacher(student, probe)
    # No second copy of CLIP: the teacher owns only its head.
    assert [name for name, _ in teacher.named_parameters()] == ["head.weight", "head.bias"]
    assert not any(p.requires_grad for p in teacher.parameters())
    student.train()
    features = teacher.features(_images())
    assert not features.requires_grad
    with torch.no_grad(), student.lora_disabled():
        torch.testing.assert_close(features, student.encode_image(_images()))
    with torch.no_grad():
        assert not torch.allclose(features, student.eval().encode_image(_images()))


def test_captions_encode_each_distinct_caption_once(monkeypatch, tiny_backbone):
    calls = []
    real_get_tokenizer = open_clip.get_tokenizer

    def counting_get_tokenizer(name):
        tokenizer = real_get_tokenizer(name)

        def tokenize(texts):
            calls.extend(texts)
            return tokenizer(texts)

        return tokenize

    monkeypatch.setattr(open_clip, "get_tokenizer", counting_get_tokenizer)
    torch.manual_seed(0)
    captions = ["a photo of a cat", "a photo of a dog", "a photo of a cat", "x" * 1000]
    features = encode_captions(captions, backbone=tiny_backbone, pretrained=None)
    assert sorted(calls) == sorted(set(captions))  # the long one is truncated, not an error
    batch = features.lookup(["a photo of a dog", "a photo of a cat", "a photo of a cat"])
    assert batch.shape == (3, 16)
    torch.testing.assert_close(batch[1], batch[2])
    assert not torch.allclose(batch[0], batch[1])


def test_random_detector_builds_the_image_tower_alone(tiny_backbone, monkeypatch):
    import aidetect.model as model_module

    torch.manual_seed(0)
    expected = model_module.create_clip(tiny_backbone, None).visual.state_dict()

    def no_whole_clip(*args, **kwargs):
        raise AssertionError("a random detector must not build the text tower")

    monkeypatch.setattr(model_module, "create_clip", no_whole_clip)
    torch.manual_seed(0)
    detector = Detector(backbone=tiny_backbone, pretrained=None)
    built = detector.visual.state_dict()
    assert built.keys() == expected.keys()
    assert all(torch.equal(built[k], expected[k]) for k in built)  # same weights, same seed


def test_saved_folder_files_get_ordinary_permissions(make_detector, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        make_detector().save_pretrained(tmp_path / "det")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "det").iterdir()}
    assert modes == {"README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}


def test_api_save_pretrained_writes_aidetects_card(make_detector, tmp_path):
    """Not the Hub mixin's generic card ("[More Information Needed]")."""
    from aidetect.licences import Licence

    detector = make_detector(threshold=0.3)
    detector.base_pretrained = "openai"  # as a detector built on OpenAI CLIP records it
    detector.save_pretrained(tmp_path / "det")
    card = (tmp_path / "det" / "README.md").read_text()
    assert "More Information Needed" not in card and card.startswith("---\nlibrary_name: aidetect")
    assert "Decision threshold: **0.3**" in card and "aidetect scan --weights" in card
    assert "OpenAI CLIP weights" in card and ": MIT" in card and "Radford" in card
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["licenses"][0]["name"] == "MIT"
    assert Detector.from_pretrained(tmp_path / "det").threshold == 0.3  # the record loads

    head = Licence(subject="head", name="MIT", file="LICENSE-head.txt", citation="Someone 2025.")
    detector.save_pretrained(tmp_path / "given", licences=[head])
    card = (tmp_path / "given" / "README.md").read_text()
    assert "- head: MIT; the notice ships in this folder as `LICENSE-head.txt`." in card
    assert "- Someone 2025." in card and "OpenAI CLIP" not in card
    assert json.loads((tmp_path / "given" / "config.json").read_text())["licenses"] == [
        head.to_dict()]
    detector.save_pretrained(tmp_path / "own", model_card_kwargs={"card_text": "# Mine\n"})
    assert (tmp_path / "own" / "README.md").read_text() == "# Mine\n"  # kept byte for byte
