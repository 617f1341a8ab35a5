"""Evaluation over benchmark subsets, robustness perturbations, and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_labelled_folder
from sklearn.metrics import average_precision_score

from aidetect import Detector
from aidetect.card import update_threshold
from aidetect.dataset import ImageDataset, find_labelled_images
from aidetect.errors import UsageError
from aidetect.evaluate import evaluate, predict, write_threshold
from aidetect.metrics import threshold_at_fpr


@pytest.fixture
def bench(tmp_path):
    root = tmp_path / "bench"
    write_labelled_folder(root / "gan", n=3, classes=["car", "cat"])
    write_labelled_folder(root / "diffusion", n=4, seed=3)
    return root


def _scores(detector, folder, **perturbation):
    image_set = find_labelled_images(folder)
    dataset = ImageDataset(image_set.paths, image_set.labels,
                           preprocess=detector.preprocess_config, **perturbation)
    return predict(detector, dataset, device="cpu", batch_size=4)


def test_report_per_subset_and_mean(make_detector, bench):
    detector = make_detector()
    report = evaluate(detector, bench, device="cpu", batch_size=4)
    assert [s.name for s in report.subsets] == ["diffusion", "gan"]
    assert [(s.scores.n_real, s.scores.n_fake) for s in report.subsets] == [(4, 4), (6, 6)]
    for subset in report.subsets:
        found = _scores(detector, bench / subset.name)
        assert subset.scores.ap == pytest.approx(average_precision_score(found.labels,
                                                                         found.scores))
        real, fake = found.scores[found.labels == 0], found.scores[found.labels == 1]
        assert subset.scores.r_acc == pytest.approx(np.mean(real <= 0.5))
        assert subset.scores.f_acc == pytest.approx(np.mean(fake > 0.5))
    for key in ("acc", "ap", "r_acc", "f_acc"):
        assert report.mean[key] == pytest.approx(
            np.mean([getattr(s.scores, key) for s in report.subsets]))
    document = report.to_dict({"reference": "x", "sha256": "y", "revision": None})
    json.dumps(document, allow_nan=False)  # strict JSON
    assert set(document) >= {"subsets", "mean", "threshold", "calibration", "model"}
    assert set(document["subsets"][0]) == {"name", "acc", "ap", "r_acc", "f_acc", "n_real",
                                           "n_fake"}
    assert all(0 <= v <= 1 for s in document["subsets"] for k, v in s.items()
               if k in ("acc", "ap", "r_acc", "f_acc"))


def test_calibration_thresholds_come_from_all_real_images(make_detector, bench):
    detector = make_detector()
    report = evaluate(detector, bench, device="cpu", batch_size=4)
    real = np.concatenate([
        _scores(detector, bench / name).scores[_scores(detector, bench / name).labels == 0]
        for name in ("diffusion", "gan")
    ])
    assert [c.fpr for c in report.calibration] == [0.01, 0.05]
    for c in report.calibration:
        assert c.threshold == threshold_at_fpr(real, c.fpr) and c.n_real == 10
        assert c.observed_fpr <= c.fpr


def test_perturbations_change_inputs_deterministically(make_detector, bench):
    detector = make_detector()
    clean = _scores(detector, bench / "diffusion").scores
    assert np.array_equal(clean, _scores(detector, bench / "diffusion").scores)
    jpeg = _scores(detector, bench / "diffusion", jpeg_quality=30).scores
    blur = _scores(detector, bench / "diffusion", blur_sigma=2.0).scores
    assert not np.allclose(clean, jpeg) and not np.allclose(clean, blur)
    report = evaluate(detector, bench, device="cpu", jpeg_quality=30, blur_sigma=2.0)
    assert (report.jpeg_quality, report.blur_sigma) == (30, 2.0)
    with pytest.raises(UsageError, match="jpeg-quality"):
        evaluate(detector, bench, device="cpu", jpeg_quality=0)


def test_unreadable_images_are_skipped_and_listed(make_detector, bench):
    (bench / "diffusion" / "1_fake" / "broken.png").write_bytes(b"garbage")
    report = evaluate(make_detector(), bench, device="cpu")
    assert [f.path.rsplit("/", 1)[-1] for f in report.failures] == ["broken.png"]
    assert report.subsets[0].scores.n_fake == 4
    for path in (bench / "gan" / "car" / "1_fake").iterdir():
        path.write_bytes(b"garbage")
    for path in (bench / "gan" / "cat" / "1_fake").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="subset gan: no readable AI-generated image left"):
        evaluate(make_detector(), bench, device="cpu")


def test_write_threshold_updates_config_and_card(detector_dir):
    write_threshold(detector_dir, 0.8125, fpr=0.01, data="bench")
    config = json.loads((detector_dir / "config.json").read_text())
    assert config["threshold"] == 0.8125
    assert Detector.from_pretrained(detector_dir).threshold == 0.8125  # scan's default now
    card = (detector_dir / "README.md").read_text()
    assert "0.8125" in card and "1.0%" in card and "`bench`" in card
    update_threshold(detector_dir, threshold=0.9, fpr=0.05)
    card = (detector_dir / "README.md").read_text()
    assert card.count("aidetect:threshold -->") == 2  # one section (start and end markers)
    assert "0.8125" not in card and "0.9" in card and "5.0%" in card
    with pytest.raises(UsageError, match="not a probability"):
        write_threshold(detector_dir, 1.5, fpr=0.01)


def test_eval_scores_are_the_scans_to_the_bit(make_detector, bench):
    """Same precision, same CPU groups: a threshold calibrated by eval is the scan's."""
    import torch

    from aidetect.data import Candidate
    from aidetect.scan import Scanner

    image_set = find_labelled_images(bench / "gan")
    detector = make_detector(seed=5)
    prepared = Scanner(make_detector(seed=5), device=torch.device("cpu"), threshold=0.5,
                       precision="bf16")
    scanned = {r.path: r.score for r in prepared.scan([Candidate(str(p)) for p in
                                                         image_set.paths], workers=0,
                                                        batch_size=3)}
    from aidetect.precision import prepare_for_inference

    prepare_for_inference(detector, "bf16")
    dataset = ImageDataset(image_set.paths, image_set.labels,
                           preprocess=detector.preprocess_config)
    found = predict(detector, dataset, device="cpu", batch_size=5)
    assert found.scores.tolist() == [scanned[str(p)] for p in image_set.paths]


def _eval_with_cache(detector_dir, bench, **perturbation):
    """evaluate() as `aidetect eval` runs it with the score cache; (report, model calls)."""
    import torch

    from aidetect.incremental import EvalCache, open_session
    from aidetect.loading import load_detector

    loaded = load_detector(str(detector_dir))
    calls = []
    forward = loaded.detector.forward
    loaded.detector.forward = lambda x: calls.append(len(x)) or forward(x)
    session = open_session(weights=str(detector_dir), device="cpu", precision="fp32",
                           cache=None, extra={"pipeline": "eval", **perturbation})
    cache = EvalCache(session, sha256=loaded.sha256,
                      preprocess=loaded.detector.preprocess_config, device_type="cpu",
                      precision="fp32")
    with session:
        report = evaluate(loaded.detector, bench, device=torch.device("cpu"), batch_size=4,
                          precision="fp32", score_cache=cache, **perturbation)
    return report, len(calls)


def test_a_second_eval_reads_every_score_from_the_cache(detector_dir, bench):
    first, first_calls = _eval_with_cache(detector_dir, bench)
    again, again_calls = _eval_with_cache(detector_dir, bench)
    assert first_calls > 0 and again_calls == 0  # nothing scored the second time
    assert again.to_dict({}) == first.to_dict({})  # the same metrics and thresholds
    _, perturbed_calls = _eval_with_cache(detector_dir, bench, jpeg_quality=60)
    assert perturbed_calls > 0  # a perturbation is part of the key
    plain = evaluate(Detector.from_pretrained(detector_dir), bench, device="cpu",
                     batch_size=4, precision="fp32")
    assert plain.to_dict({}) == first.to_dict({})  # cached or not, the same report


def test_eval_cache_scores_identical_files_once_and_skips_broken_ones(detector_dir, tmp_path):
    root = tmp_path / "bench"
    write_labelled_folder(root / "gan", n=3)
    real = sorted((root / "gan" / "0_real").iterdir())
    (root / "gan" / "0_real" / "copy.png").write_bytes(real[0].read_bytes())
    (root / "gan" / "1_fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report, calls = _eval_with_cache(detector_dir, root)
    assert [f.path.endswith("broken.png") for f in report.failures] == [True]
    assert report.subsets[0].scores.n_real == 4  # the copy counted, scored once
    assert calls > 0
    second, again = _eval_with_cache(detector_dir, root)
    assert again == 0  # every readable file cached; the broken one is decoded again and fails
    assert [f.path.endswith("broken.png") for f in second.failures] == [True]  # not cached
    assert second.to_dict({}) == report.to_dict({})
