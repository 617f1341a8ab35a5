"""The scan engine: one result per file in order, scores as the model gives them, errors as
results, determinism across batch sizes and worker counts, LoRA merged, thumbnails."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from conftest import random_image
from PIL import Image

from aidetect.config import LoraConfig
from aidetect.data import THUMBNAIL_SIDE, Candidate, find_images, open_image
from aidetect.errors import UsageError
from aidetect.preprocess import preprocess_tensor, to_tensor
from aidetect.results import LABEL_AI, LABEL_REAL
from aidetect.scan import Scanner

CPU = torch.device("cpu")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Seven good images of different sizes and modes, and two files that cannot be scored."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, (w, h) in enumerate([(64, 64), (100, 80), (320, 240), (97, 131), (256, 40),
                                 (40, 256), (513, 77)]):
        random_image(w, h, seed=i).save(folder / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    random_image(20, 20).save(folder / "tiny.png")  # under one 32 px patch
    return folder


def _direct_logit(detector, path: Path) -> float:
    image = open_image(path).image
    tensor = preprocess_tensor(to_tensor(image), detector.preprocess_config)
    with torch.no_grad():
        return float(detector(tensor[None])[0])


def test_one_result_per_file_in_order_with_errors_as_results(make_detector, mixed_folder):
    detector = make_detector()
    candidates = find_images([mixed_folder])
    scanner = Scanner(detector, device=CPU, threshold=0.5, precision="fp32")
    results = list(scanner.scan(candidates, workers=0, batch_size=3))
    assert [r.path for r in results] == [c.path for c in candidates]
    by_name = {Path(r.path).name: r for r in results}
    assert "truncated" in by_name["broken.jpg"].error  # a JPEG header, then nothing
    assert "20x20" in by_name["tiny.png"].error
    for name in ("broken.jpg", "tiny.png"):
        assert by_name[name].score is None and by_name[name].label is None
    good = [r for r in results if r.ok]
    assert len(good) == 7
    for result in good:
        assert result.format == "PNG" and result.mode == "RGB"
        assert result.error is None and 0.0 <= result.score <= 1.0


def test_scores_are_the_models_and_labels_follow_the_threshold(make_detector, mixed_folder):
    detector = make_detector(seed=3)
    candidates = [c for c in find_images([mixed_folder]) if "img" in c.path]
    expected = {c.path: _direct_logit(detector, Path(c.path)) for c in candidates}
    median = sorted(1 / (1 + math.exp(-v)) for v in expected.values())[3]
    scanner = Scanner(detector, device=CPU, threshold=median, precision="fp32")
    results = list(scanner.scan(candidates, workers=0))
    for result in results:
        assert result.logit == pytest.approx(expected[result.path], abs=1e-5)
        assert result.score == pytest.approx(1 / (1 + math.exp(-result.logit)), abs=1e-12)
        assert result.label == (LABEL_AI if result.score > median else LABEL_REAL)
    assert sum(r.label == LABEL_AI for r in results) == 3  # strictly above the median


def test_same_scores_across_batch_sizes_and_workers(make_detector, mixed_folder):
    scanner = Scanner(make_detector(seed=1), device=CPU, threshold=0.5)
    candidates = find_images([mixed_folder])
    runs = [list(scanner.scan(candidates, batch_size=b, workers=w))
            for b, w in [(1, 0), (4, 0), (32, 0), (2, 2)]]
    reference = runs[0]
    for run in runs[1:]:
        assert [r.path for r in run] == [r.path for r in reference]
        for a, b in zip(run, reference, strict=True):
            assert a.error == b.error
            if a.ok:
                assert a.score == pytest.approx(b.score, abs=1e-5)


def test_lora_is_merged_and_scores_match_the_unmerged_model(make_detector, mixed_folder):
    detector = make_detector(seed=2)
    detector.add_lora(LoraConfig(rank=4))
    with torch.no_grad():
        for layer in detector.visual.transformer.resblocks:
            layer.attn.lora_q_B.normal_(std=0.5)
    detector.eval()
    candidates = [c for c in find_images([mixed_folder]) if "img" in c.path]
    expected = {c.path: _direct_logit(detector, Path(c.path)) for c in candidates}
    scanner = Scanner(detector, device=CPU, threshold=0.5, precision="fp32")
    assert not scanner.detector.has_lora  # merged for inference
    for result in scanner.scan(candidates, workers=0):
        assert result.logit == pytest.approx(expected[result.path], abs=1e-4)


def test_thumbnails_only_when_asked(make_detector, tmp_path):
    path = tmp_path / "wide.png"
    random_image(600, 300).save(path)
    scanner = Scanner(make_detector(), device=CPU, threshold=0.5)
    [plain] = scanner.scan([Candidate(str(path))], workers=0)
    [with_thumb] = scanner.scan([Candidate(str(path))], workers=0, thumbnails=True)
    assert plain.thumbnail is None
    thumb = Image.open(io.BytesIO(with_thumb.thumbnail))
    assert thumb.format == "JPEG" and thumb.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)


def test_discovery_errors_and_pixel_limit_become_results(make_detector, tmp_path):
    path = tmp_path / "big.png"
    random_image(200, 100).save(path)
    scanner = Scanner(make_detector(), device=CPU, threshold=0.5)
    results = list(scanner.scan([Candidate("gone.jpg", error="broken symbolic link"),
                                 Candidate(str(path))], workers=0, max_pixels=10_000))
    assert results[0].error == "broken symbolic link"
    assert "20,000 pixels" in results[1].error and "--max-pixels" in results[1].error


def test_non_finite_logits_become_errors(make_detector, tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    random_image(64, 64).save(path)
    scanner = Scanner(make_detector(), device=CPU, threshold=0.5)
    monkeypatch.setattr(scanner, "_forward",
                        lambda images: torch.full((len(images),), float("nan")))
    [result] = scanner.scan([Candidate(str(path))], workers=0)
    assert result.score is None and "non-finite" in result.error


def test_bad_settings_are_usage_errors(make_detector):
    detector = make_detector()
    with pytest.raises(UsageError, match="--threshold"):
        Scanner(detector, device=CPU, threshold=1.5)
    with pytest.raises(UsageError, match="--precision"):
        Scanner(detector, device=CPU, threshold=0.5, precision="fp16")
    scanner = Scanner(detector, device=CPU, threshold=0.5)
    with pytest.raises(UsageError, match="--batch-size"):
        list(scanner.scan([Candidate("x.png")], batch_size=0))
    assert scanner.description.startswith("cpu (") and scanner.precision in scanner.description
    assert list(scanner.scan([])) == []


def test_the_cpu_model_sees_one_shape_whatever_the_batch_size(make_detector, mixed_folder):
    """oneDNN picks bf16 kernels by shape: one shape keeps scores identical across batches."""
    from aidetect.precision import CPU_GROUP_BF16_NARROW, _micro_batches

    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    groups = list(_micro_batches(images, 4))
    assert [(g.shape[0], n) for g, n in groups] == [(4, 4), (4, 4), (4, 2)]
    assert groups[-1][0].flatten().tolist() == [8.0, 9.0, 9.0, 9.0]  # padded with the last

    scanner = Scanner(make_detector(), device=CPU, threshold=0.5, precision="bf16")
    shapes = []
    forward = scanner.detector.forward

    def recording(x):
        shapes.append(x.shape[0])
        return forward(x)

    scanner.detector.forward = recording
    candidates = find_images([mixed_folder])
    logits = {}
    for batch_size in (1, 3, 9, 32):
        for result in scanner.scan(candidates, workers=0, batch_size=batch_size):
            if result.ok:
                logits.setdefault(result.path, set()).add(result.logit)
    assert set(shapes) == {CPU_GROUP_BF16_NARROW}  # a narrow bf16 tower: groups of 8
    assert logits and all(len(values) == 1 for values in logits.values())  # bit-identical


def test_the_cpu_scan_hands_the_model_one_group_at_a_time(make_detector, mixed_folder,
                                                          monkeypatch):
    """Whatever --batch-size, the CPU loader's batches are the model's groups: the model starts
    after one group's decoding and results come a group at a time."""
    import aidetect.scan
    from aidetect.precision import CPU_GROUP, CPU_GROUP_BF16_NARROW

    asked = []
    real_order = aidetect.scan.batch_order
    monkeypatch.setattr(aidetect.scan, "batch_order",
                        lambda count, size: asked.append(size) or real_order(count, size))
    candidates = find_images([mixed_folder])
    for precision, group in (("fp32", CPU_GROUP), ("bf16", CPU_GROUP_BF16_NARROW)):
        scanner = Scanner(make_detector(), device=CPU, threshold=0.5, precision=precision)
        assert len(list(scanner.scan(candidates, workers=0, batch_size=32))) == len(candidates)
        assert asked.pop() == group
