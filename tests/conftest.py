"""Shared fixtures: tiny open_clip models (random weights, no download), generated images.

Tests never reach the network: HF_HUB_OFFLINE is set and the Hugging Face cache points into a
temporary folder for the whole session.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import results  # noqa: F401  (the report tests' fixture)

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


@pytest.fixture(autouse=True)
def score_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own, empty score cache (never the user's): AIDETECT_CACHE."""
    folder = tmp_path / "score-cache"
    monkeypatch.setenv("AIDETECT_CACHE", str(folder))
    return folder


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


def labelled_image(kind: str, seed: int, size: int = 64) -> Image.Image:
    """A 'real' image (a smooth colour gradient) or a 'fake' one (the same kind of gradient
    with a bright grid every 4 px on top, like a generator's upsampling artefacts)."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:size, 0:size]
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / size  # (size, size)
    colours = rng.uniform(40, 215, (2, 3))
    array = colours[0] + (colours[1] - colours[0]) * ramp[..., None]
    if kind == "fake":
        array = array + 60.0 * ((x % 4 == 0) | (y % 4 == 0))[..., None]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def write_labelled_folder(
    root: Path, n: int = 8, classes=None, size: int = 64, seed: int = 0
) -> Path:
    """A training/benchmark layout of generated images: n real and n fake PNGs under
    root/0_real and root/1_fake, or under root/<class>/... for each class."""
    groups = [root / c for c in classes] if classes else [root]
    for g, group in enumerate(groups):
        for kind, folder in (("real", "0_real"), ("fake", "1_fake")):
            (group / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                key = seed * 100_003 + g * 1009 + i * 2 + (kind == "fake")
                labelled_image(kind, key, size).save(group / folder / f"{i:03d}.png")
    return root


@pytest.fixture
def make_labelled_folder():
    """Factory: `write_labelled_folder` (a layout of generated real and fake images)."""
    return write_labelled_folder


def write_hub_cache(cache: Path, repo_id: str, folder: Path, *, commit: str,
                    ref: str | None = "main") -> Path:
    """Lay out `folder`'s files as huggingface_hub caches a download of `repo_id` at `commit`.

    `models--owner--name/blobs/<sha256>`, `snapshots/<commit>/<file>` as relative symlinks to
    the blobs, and `refs/<ref>` holding the commit. Returns the snapshot folder.
    """
    import hashlib
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for item in sorted(folder.iterdir()):
        blob = blobs / hashlib.sha256(item.read_bytes()).hexdigest()
        shutil.copyfile(item, blob)
        link = snapshot / item.name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache folder, set as HF_HUB_CACHE, with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """HfApi's network calls replaced at the boundary, a token set and the Hub switched on;
    records each call, and for a commit the bytes of every file it uploads."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi, constants

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id, **kwargs):
        calls.append({"call": "create_branch", "repo_id": repo_id, **kwargs})

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        calls.append({"call": "create_commit", "repo_id": repo_id, "files": files, **kwargs})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}")

    def upload_folder(self, **kwargs):  # push must commit the files it checked, not re-list
        raise AssertionError("upload_folder is not used")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture
def make_read_only():
    """Make a folder (and its files) unwritable: chmod, and for root `chattr +i`; skips where
    neither stops this process from writing."""
    locked: list[Path] = []
    changed: list[Path] = []

    def lock(folder: Path) -> None:
        paths = [*folder.iterdir(), folder]
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
            changed.append(path)
        if os.access(folder, os.W_OK):  # root: permissions do not stop it
            if shutil.which("chattr") is None:
                pytest.skip("cannot make a read-only folder as root without chattr")
            for path in paths:
                if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                    pytest.skip("chattr +i is not permitted here")
                locked.append(path)
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            return
        pytest.skip("could not make a read-only folder")

    yield lock
    for path in locked:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    for path in changed:
        path.chmod(0o755)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Good images of every mode and format a scan decodes, and broken files of each kind
    (named in tests/cli_helpers.py: GOOD, BAD; BOMB refuses bomb.png)."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    random_image(96, 64, seed=1).save(folder / "a.png")
    random_image(120, 90, seed=2).save(folder / "b.JPG", quality=90)
    random_image(64, 64, seed=3).save(folder / "nested" / "c.webp")
    random_image(70, 50, seed=4, mode="RGBA").save(folder / "nested" / "d.png")
    modes = folder / "modes"
    modes.mkdir()
    base = random_image(80, 60, seed=5)
    base.convert("CMYK").save(modes / "cmyk.jpg")
    base.convert("L").save(modes / "gray.tiff")
    base.convert("LA").save(modes / "gray-alpha.png")
    base.convert("P").save(modes / "palette.gif", transparency=0)
    base.save(modes / "anim.gif", save_all=True, append_images=[base.rotate(90)])
    base.save(modes / "plain.bmp")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(
        modes / "deep.png")  # 16-bit gray
    broken = folder / "broken"
    broken.mkdir()
    (broken / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    base.save(jpeg, format="JPEG")
    (broken / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (broken / "text.jpg").write_text("not an image")
    png = bytearray((folder / "a.png").read_bytes())
    png[200:260] = bytes(60)
    (broken / "corrupt.png").write_bytes(bytes(png))
    Image.new("L", (4000, 4000)).save(broken / "bomb.png")  # refused with --max-pixels below
    (folder / "broken.jpg").write_bytes(random.Random(0).randbytes(500))
    os.symlink("loop.png", folder / "loop.png")
    return folder


def touch(path: Path, data: bytes = b"x") -> Path:
    """A file holding DATA, its folders made as needed: no image is encoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
