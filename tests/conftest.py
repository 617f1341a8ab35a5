"""Shared fixtures: tiny open_clip models (random weights, no download), generated images.

Tests never reach the network: HF_HUB_OFFLINE is set and the Hugging Face cache points into a
temporary folder for the whole session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A CLIP small enough to run a forward pass in milliseconds; QuickGELU like OpenAI's.
TINY_CLIP = "aidetect-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session", autouse=True)
def offline_hub(tmp_path_factory: pytest.TempPathFactory):
    """No test downloads: offline mode and a throwaway cache for the whole session."""
    home = tmp_path_factory.mktemp("hf-home")
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE")}
    os.environ.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub")
    )
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The name of a tiny open_clip architecture, registered through `add_model_config`."""
    import open_clip

    folder = tmp_path_factory.mktemp("open-clip-configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_CLIP


@pytest.fixture(scope="session")
def tiny_local_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same tiny architecture as an open_clip `local-dir:` name (config only, no weights)."""
    folder = tmp_path_factory.mktemp("tiny-local-dir")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    return f"local-dir:{folder}"


@pytest.fixture
def make_detector(tiny_backbone: str):
    """Factory for tiny detectors with random (seeded) weights."""

    def make(seed: int = 0, **kwargs):
        import torch

        from aidetect import Detector

        torch.manual_seed(seed)
        return Detector(backbone=tiny_backbone, pretrained=None, **kwargs).eval()

    return make


@pytest.fixture
def detector_dir(make_detector, tmp_path: Path) -> Path:
    """A saved tiny detector folder (config.json + model.safetensors)."""
    folder = tmp_path / "tiny-detector"
    make_detector().save_pretrained(folder)
    return folder


def random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A deterministic noisy image with some smooth regions (so entropies differ)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    smooth = (x * 0.5 + y * 0.5).repeat(3, axis=2)
    noise = rng.normal(0, 60, (height, width, 3)) * (rng.random((height, width, 1)) > 0.5)
    array = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder with a few generated images of different sizes and formats."""
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(256, 256, seed=1).save(folder / "a.png")
    random_image(320, 240, seed=2).save(folder / "b.jpg", quality=90)
    random_image(300, 300, seed=3).save(folder / "c.webp")
    return folder
