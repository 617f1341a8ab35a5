"""Caption features: the text tower alone, the same numbers as CLIP's `encode_text`."""

from __future__ import annotations

import json

import open_clip
import open_clip.model
import pytest
import torch
from safetensors.torch import save_file

from aidetect.captions import build_text_tower, encode_captions
from aidetect.towers import create_clip

CAPTIONS = ["a photo of a cat", "a photo of a dog", "a photo of a cat", "a photo"]


def _encode_text(clip: torch.nn.Module, backbone: str, captions: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return clip.eval().encode_text(open_clip.get_tokenizer(backbone)(captions))


def test_random_captions_never_build_the_image_tower(monkeypatch, tiny_backbone):
    def no_image_tower(*args, **kwargs):
        raise AssertionError("the image tower was built to encode captions")

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", no_image_tower)
    features = encode_captions(CAPTIONS, backbone=tiny_backbone, pretrained=None)
    assert features.features.shape == (3, 16)
    assert not any(name.startswith("visual") for name, _ in
                   build_text_tower(tiny_backbone, None).named_parameters())


def test_features_equal_encode_text_of_the_whole_clip(tiny_backbone):
    torch.manual_seed(0)
    features = encode_captions(CAPTIONS, backbone=tiny_backbone, pretrained=None)
    torch.manual_seed(0)
    tower = build_text_tower(tiny_backbone, None)  # the weights encode_captions used
    clip = create_clip(tiny_backbone, None)
    result = clip.load_state_dict(tower.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("visual.") or k == "logit_scale" for k in result.missing_keys)
    expected = _encode_text(clip, tiny_backbone, list(features.captions))
    assert torch.equal(features.features, expected)  # bit for bit, not just close
    assert torch.equal(features.lookup(["a photo"])[0], expected[2])


def test_pretrained_text_weights_come_from_open_clip_loading(tmp_path, tiny_backbone):
    # A local-dir checkpoint is open_clip's pretrained loading path, offline.
    torch.manual_seed(3)
    clip = create_clip(tiny_backbone, None)
    model_cfg = open_clip.get_model_config(tiny_backbone)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file(clip.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    backbone = f"local-dir:{tmp_path}"
    torch.manual_seed(0)  # random weights drawn now would differ from the checkpoint's
    features = encode_captions(CAPTIONS, backbone=backbone, pretrained="local")
    assert torch.equal(features.features, _encode_text(clip, backbone, list(features.captions)))


def test_a_tag_that_cannot_load_fails_as_create_clip_does(tiny_backbone):
    with pytest.raises(RuntimeError) as expected:
        create_clip(tiny_backbone, "openai")
    with pytest.raises(RuntimeError) as raised:  # never random text weights instead
        encode_captions(CAPTIONS, backbone=tiny_backbone, pretrained="openai")
    assert str(raised.value) == str(expected.value)
