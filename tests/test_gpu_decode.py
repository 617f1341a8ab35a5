"""The device pipeline on the CPU: torchvision's decode_jpeg against Pillow, header checks, the
per-file fallback to the CPU path, and batching that never loses or reorders a result."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from conftest import random_image
from PIL import Image

from aidetect import gpu_decode
from aidetect.data import THUMBNAIL_SIDE, Candidate, find_images, open_image
from aidetect.gpu_decode import decode_jpegs, orient, read_jpeg
from aidetect.preprocess import to_tensor
from aidetect.scan import Scanner

CPU = torch.device("cpu")
# Largest difference, in 8-bit levels, between torchvision's CPU decode_jpeg and Pillow: both
# are libjpeg-turbo with the same IDCT and upsampling (measured: 0).
PIXEL_TOLERANCE = 1


def _save_jpeg(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, format="JPEG", **options)
    return path


def _rotated(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save_jpeg(path, random_image(96, 64, seed=orientation), quality=92, exif=exif)


@pytest.mark.parametrize("options", [
    {"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "subsampling": 1},
    {"quality": 85, "progressive": True},
])
def test_decode_jpeg_matches_pillow_within_the_stated_tolerance(tmp_path, options):
    for seed, size in enumerate([(333, 251), (64, 64), (1000, 37)]):
        path = _save_jpeg(tmp_path / f"{seed}.jpg", random_image(*size, seed=seed), **options)
        jpeg, _ = read_jpeg(path, max_pixels=None)
        [ours] = decode_jpegs([jpeg], CPU)
        pillow = to_tensor(open_image(path).image)
        assert ours.shape == pillow.shape
        assert (ours.int() - pillow.int()).abs().max() <= PIXEL_TOLERANCE


def test_gray_jpeg_becomes_three_equal_channels(tmp_path):
    path = _save_jpeg(tmp_path / "g.jpg", random_image(80, 48).convert("L"))
    jpeg, _ = read_jpeg(path, max_pixels=None)
    assert jpeg.mode == "L"
    [ours] = decode_jpegs([jpeg], CPU)
    assert torch.equal(ours, to_tensor(open_image(path).image))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_the_cpu_path_applies_it(tmp_path, orientation):
    path = _rotated(tmp_path / "r.jpg", orientation)
    jpeg, _ = read_jpeg(path, max_pixels=None)
    expected = open_image(path)
    assert (jpeg.width, jpeg.height) == (expected.width, expected.height)
    [ours] = decode_jpegs([jpeg], CPU)
    assert torch.equal(ours, to_tensor(expected.image))


def test_orient_is_exif_transpose_on_any_tensor():
    image = torch.arange(2 * 3 * 5).reshape(2, 3, 5)
    pillow = Image.fromarray(np.arange(15, dtype=np.uint8).reshape(3, 5))
    methods = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
               6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
    for orientation, method in methods.items():
        expected = np.asarray(pillow.transpose(getattr(Image.Transpose, method)))
        assert np.array_equal(orient(image, orientation)[0].numpy(), expected), orientation
    assert orient(image, 1) is image
    meta = torch.empty(3, 20, 30, dtype=torch.uint8, device="meta")  # no host round trip
    assert [tuple(orient(meta, o).shape) for o in (2, 6)] == [(3, 20, 30), (3, 30, 20)]


def test_only_plain_jpegs_go_to_the_device(tmp_path):
    image = random_image(120, 90)
    good = _save_jpeg(tmp_path / "good.jpg", image)
    progressive = _save_jpeg(tmp_path / "progressive.jpg", image, progressive=True)
    cmyk = _save_jpeg(tmp_path / "cmyk.jpg", image.convert("CMYK"))
    png = tmp_path / "png.jpg"
    image.save(png, format="PNG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:-400])
    assert read_jpeg(good, max_pixels=None) is not None
    assert read_jpeg(progressive, max_pixels=None) is not None
    for path in (cmyk, png, truncated, tmp_path / "missing.jpg"):
        assert read_jpeg(path, max_pixels=None) is None, path.name
    assert read_jpeg(good, max_pixels=120 * 90 - 1) is None  # the CPU path words the refusal
    jpeg, small = read_jpeg(good, max_pixels=None, thumbnail_side=32)
    assert small.mode == "RGB" and min(small.size) >= 32


@pytest.fixture
def awkward_folder(tmp_path: Path) -> Path:
    """JPEGs of several sizes, and every kind of file the device must hand to the CPU path."""
    folder = tmp_path / "awkward"
    folder.mkdir()
    for i, (w, h) in enumerate([(320, 240), (320, 240), (100, 80), (64, 64), (320, 240)]):
        _save_jpeg(folder / f"a{i}.jpg", random_image(w, h, seed=i), quality=90)
    good = (folder / "a0.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    _save_jpeg(folder / "c_cmyk.jpg", random_image(128, 96, seed=7).convert("CMYK"))
    _save_jpeg(folder / "d_progressive.jpg", random_image(200, 150, seed=8), progressive=True)
    random_image(96, 96, seed=9).save(folder / "e_png_named.jpg", format="PNG")
    _rotated(folder / "f_rotated.jpg", 6)
    _save_jpeg(folder / "g_tiny.jpg", random_image(20, 40, seed=10))  # under one patch
    random_image(70, 50, seed=11).save(folder / "h.webp")
    (folder / "i_empty.jpg").write_bytes(b"")
    (folder / "k_text.jpg").write_text("not an image")
    (folder / "l_magic.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) + b"\xff\xd9")
    damaged = bytearray((folder / "a1.jpg").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)  # corrupt, not truncated
    (folder / "m_damaged.jpg").write_bytes(bytes(damaged))
    _save_jpeg(folder / "n_big.jpg", random_image(400, 300, seed=12))  # over --max-pixels
    for i in range(3):
        _save_jpeg(folder / f"j{i}.jpg", random_image(160, 120, seed=20 + i).convert("L"))
    return folder


def _fields(result):
    return (result.path, result.format, result.mode, result.width, result.height, result.error)


def test_device_pipeline_gives_the_cpu_pipelines_results(make_detector, awkward_folder):
    scanner = Scanner(make_detector(seed=4), device=CPU, threshold=0.5, precision="fp32")
    candidates = find_images([awkward_folder])
    reference = list(scanner.scan(candidates, workers=0, batch_size=4, device_decode=False,
                                  max_pixels=100_000))
    errors = {Path(r.path).name: r.error for r in reference if r.error}
    assert {"b_truncated.jpg", "g_tiny.jpg", "i_empty.jpg", "k_text.jpg", "l_magic.jpg",
            "n_big.jpg"} <= set(errors)
    assert "truncated" in errors["b_truncated.jpg"] and "--max-pixels" in errors["n_big.jpg"]
    for batch_size, workers in [(1, 0), (4, 0), (64, 0), (3, 2)]:
        results = list(scanner.scan(candidates, workers=workers, batch_size=batch_size,
                                    device_decode=True, max_pixels=100_000))
        assert [_fields(r) for r in results] == [_fields(r) for r in reference]
        for ours, theirs in zip(results, reference, strict=True):
            if theirs.ok:
                assert ours.logit == pytest.approx(theirs.logit, abs=1e-5), ours.path
                assert ours.label == theirs.label


def test_same_file_same_score_on_every_run(make_detector, awkward_folder):
    scanner = Scanner(make_detector(seed=5), device=CPU, threshold=0.5)
    candidates = find_images([awkward_folder])
    runs = [[r.logit for r in scanner.scan(candidates, workers=0, batch_size=5,
                                           device_decode=True)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_file_the_device_refuses_falls_back_alone(make_detector, awkward_folder,
                                                    monkeypatch):
    refused = (awkward_folder / "a2.jpg").read_bytes()
    real_decode = torchvision.io.decode_jpeg
    calls = []

    def picky_decode(data, **options):
        files = data if isinstance(data, list) else [data]
        calls.append(len(files))
        if any(bytes(f.numpy()) == refused for f in files):
            raise RuntimeError("nvjpeg: unsupported")
        return real_decode(data, **options)

    scanner = Scanner(make_detector(seed=6), device=CPU, threshold=0.5, precision="fp32")
    candidates = find_images([awkward_folder])
    reference = list(scanner.scan(candidates, workers=0, batch_size=16, device_decode=False))
    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky_decode)
    results = list(scanner.scan(candidates, workers=0, batch_size=16, device_decode=True))
    assert [_fields(r) for r in results] == [_fields(r) for r in reference]
    for ours, theirs in zip(results, reference, strict=True):
        assert ours.logit == pytest.approx(theirs.logit, abs=1e-5) if theirs.ok else not ours.ok
    assert 1 in calls  # the refused batch was retried file by file


def test_thumbnails_on_the_device_pipeline_are_upright(make_detector, tmp_path):
    path = _rotated(tmp_path / "r.jpg", 6)  # stored 96x64, displayed 64x96
    scanner = Scanner(make_detector(), device=CPU, threshold=0.5)
    [result] = scanner.scan([Candidate(str(path))], workers=0, thumbnails=True,
                            device_decode=True)
    thumb = Image.open(io.BytesIO(result.thumbnail))
    assert (result.width, result.height) == (64, 96)
    assert thumb.width < thumb.height and max(thumb.size) <= THUMBNAIL_SIDE


def test_timings_account_for_every_stage(make_detector, awkward_folder):
    scanner = Scanner(make_detector(), device=CPU, threshold=0.5)
    results = list(scanner.scan(find_images([awkward_folder]), workers=0, batch_size=4,
                                device_decode=True))
    timings = scanner.timings
    assert timings.images == len(results)
    assert min(timings.decode, timings.preprocess, timings.model, timings.waiting) > 0


def test_a_batch_travels_from_its_worker_as_one_tensor_per_kind(awkward_folder):
    from aidetect.config import DGS_PREPROCESS
    from aidetect.scan_inputs import collate as _collate
    from aidetect.scan_inputs import read_file

    candidates = find_images([awkward_folder])
    items = [read_file(c, DGS_PREPROCESS, pipeline="device", max_pixels=None, thumbnails=False,
                       index=i) for i, c in enumerate(candidates)]
    expected = {item.index: (item.jpeg.data.clone() if item.jpeg else None,
                             item.pixels.clone() if item.pixels is not None else None)
                for item in items}
    batch = _collate(items)
    assert set(batch.packed) == {"jpeg", "pixels"}  # one flat tensor each, not one per file
    assert all(item.pixels is None and (item.jpeg is None or item.jpeg.data is None)
               for item in batch.items)
    batch.unpack()
    for item in batch.items:
        jpeg, pixels = expected[item.index]
        assert (jpeg is None) == (item.jpeg is None)
        if jpeg is not None:
            assert torch.equal(item.jpeg.data, jpeg)
        assert (pixels is None) == (item.pixels is None)
        if pixels is not None:
            assert torch.equal(item.pixels, pixels)


def test_cuda_decoding_has_its_own_stream_and_hands_each_image_over(tmp_path, monkeypatch):
    """torchvision allocates the images on the current stream and decodes without waiting for
    it, so on the scan's stream an image could overwrite memory that queued work still reads:
    the decode must run with the decoder's own stream current, the scan's stream must wait for
    it, and every image must be recorded on the scan's stream before anything uses it. (The
    CUDA calls are stand-ins here; `benchmarks/gpu_decode_race.py` runs the hazard on a GPU.)"""
    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits for {other.name}")

    decoding, scanning = Stream("decoding"), Stream("scan")
    current = [scanning]

    @contextmanager
    def make_current(stream):
        current.append(stream)
        yield
        current.pop()

    real_decode = torchvision.io.decode_jpeg

    def decode_on_cpu(data, *, mode, device):
        assert device.type == "cuda"
        events.append(f"decode on {current[-1].name}")
        return real_decode(data, mode=mode)

    def record_stream(image, stream):
        events.append(f"{tuple(image.shape)} recorded on {stream.name}")

    real_orient = gpu_decode.orient

    def orient_logged(image, orientation):
        events.append("oriented")
        return real_orient(image, orientation)

    monkeypatch.setattr(gpu_decode, "_decoding_stream", lambda device: decoding)
    monkeypatch.setattr(torch.cuda, "stream", make_current)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_on_cpu)
    monkeypatch.setattr(torch.Tensor, "record_stream", record_stream)
    monkeypatch.setattr(gpu_decode, "orient", orient_logged)
    paths = [_save_jpeg(tmp_path / "a.jpg", random_image(48, 32, seed=1)),
             _rotated(tmp_path / "b.jpg", 6)]
    jpegs = [read_jpeg(path, max_pixels=None)[0] for path in paths]
    images = decode_jpegs(jpegs, torch.device("cuda"))
    assert events == ["decode on decoding", "scan waits for decoding",
                      "(3, 32, 48) recorded on scan", "(3, 64, 96) recorded on scan",  # as stored
                      "oriented", "oriented"]
    for image, path in zip(images, paths, strict=True):
        assert torch.equal(image, to_tensor(open_image(path).image))
    assert current == [scanning]


def test_the_cpu_has_no_decoding_stream():
    assert gpu_decode._decoding_stream(CPU) is None
