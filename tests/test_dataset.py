"""Layouts, captions, augmentations, and the deterministic, crash-free dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import labelled_image

from aidetect.config import PreprocessConfig
from aidetect.dataset import (
    Augment,
    ImageDataset,
    augment,
    collate,
    epoch_order,
    find_labelled_images,
    find_subsets,
    jpeg_recompress,
    make_loader,
    resolve_captions,
)
from aidetect.errors import UsageError


def _write(folder, kind="real", n=2, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        labelled_image(kind, start + i).save(folder / f"{kind}{i}.png")


def test_flat_layout_with_aliases_and_any_case(tmp_path):
    _write(tmp_path / "Real", "real", 3)
    _write(tmp_path / "1_FAKE" / "nested", "fake", 2)
    (tmp_path / "1_FAKE" / "notes.txt").write_text("not an image")
    found = find_labelled_images(tmp_path)
    assert (found.n_real, found.n_fake, found.classes) == (3, 2, ())
    assert found.labels == [0, 0, 0, 1, 1]
    assert all(s.group is None for s in found.samples)


def test_class_layout_and_class_selection(make_labelled_folder, tmp_path):
    root = make_labelled_folder(tmp_path / "data", n=2, classes=["car", "cat", "horse"])
    everything = find_labelled_images(root)
    assert everything.classes == ("car", "cat", "horse") and len(everything.samples) == 12
    chosen = find_labelled_images(root, classes=["CAT", "car"])
    assert chosen.classes == ("cat", "car")
    assert {s.group for s in chosen.samples} == {"cat", "car"}
    with pytest.raises(UsageError, match="no class folder dog .*found car, cat, horse"):
        find_labelled_images(root, classes=["dog"])


def test_layout_errors_say_what_was_found(tmp_path):
    _write(tmp_path / "0_real", "real", 2)
    with pytest.raises(UsageError, match="found 2 real and 0 AI-generated images"):
        find_labelled_images(tmp_path)
    other = tmp_path / "other"
    (other / "pictures").mkdir(parents=True)
    with pytest.raises(UsageError, match="expected 0_real/ and 1_fake/.*found folders pictures"):
        find_labelled_images(other)
    with pytest.raises(UsageError, match="no such folder"):
        find_labelled_images(tmp_path / "missing")
    with pytest.raises(UsageError, match="no class folders"):
        find_labelled_images(tmp_path, classes=["cat"])


def test_benchmark_subsets(make_labelled_folder, tmp_path):
    bench = tmp_path / "bench"
    make_labelled_folder(bench / "progan", n=1, classes=["car", "cat"])
    make_labelled_folder(bench / "sdv14", n=2)
    (bench / "cache").mkdir()  # no layout: ignored
    subsets = find_subsets(bench)
    assert [name for name, _ in subsets] == ["progan", "sdv14"]
    assert [s.n_fake for _, s in subsets] == [2, 2]
    # A benchmark that is itself a single layout is one subset.
    assert [name for name, _ in find_subsets(bench / "sdv14")] == ["sdv14"]


def test_captions_from_file_class_or_generic(make_labelled_folder, tmp_path):
    root = make_labelled_folder(tmp_path / "data", n=1, classes=["golden_retriever", "cat"])
    mapping = {"cat/1_fake/000.png": "a cat on a sofa"}
    (tmp_path / "captions.json").write_text(json.dumps(mapping))
    image_set = find_labelled_images(root)
    captions = resolve_captions(image_set, tmp_path / "captions.json")
    by_path = dict(zip((s.path.relative_to(root).as_posix() for s in image_set.samples),
                       captions.texts, strict=True))
    assert by_path["cat/1_fake/000.png"] == "a cat on a sofa"
    assert by_path["golden_retriever/0_real/000.png"] == "a photo of a golden retriever"
    assert "captions.json (1)" in captions.source and "class folder names (3)" in captions.source

    flat = make_labelled_folder(tmp_path / "flat", n=1)
    generic = resolve_captions(find_labelled_images(flat))
    assert set(generic.texts) == {"a photo"} and "generic" in generic.source

    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a JSON object"):
        resolve_captions(image_set, tmp_path / "bad.json")


def test_items_depend_only_on_seed_stage_epoch_and_index(make_labelled_folder, tmp_path):
    root = make_labelled_folder(tmp_path / "data", n=3, size=96)
    image_set = find_labelled_images(root)
    config = PreprocessConfig()
    aug = Augment(blur_prob=0.5, jpeg_prob=0.5)

    def build(seed=0):
        return ImageDataset(image_set.paths, image_set.labels, preprocess=config, train=True,
                            augment=aug, seed=seed)

    first, second = build(), build()
    second.epoch = 0
    order = [4, 1, 5, 0]
    a = [first[i][0] for i in order]
    b = [second[i][0] for i in reversed(order)][::-1]  # another visiting order: same items
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    second.epoch = 1
    assert not torch.equal(second[4][0], a[0])  # a new epoch draws afresh
    assert not torch.equal(build(seed=1)[4][0], a[0])
    # Worker processes build the same batches as the main process.
    batches = [[4, 1], [5, 0]]
    inline = [b.images for b in make_loader(first, batches, workers=0)]
    pooled = [b.images for b in make_loader(first, batches, workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(inline, pooled, strict=True))


def test_unreadable_files_become_failures_not_crashes(make_labelled_folder, tmp_path):
    root = make_labelled_folder(tmp_path / "data", n=2)
    (root / "1_fake" / "broken.png").write_bytes(b"\x89PNG not really")
    labelled_image("real", 0, size=20).save(root / "0_real" / "tiny.png")  # under 32 px
    image_set = find_labelled_images(root)
    dataset = ImageDataset(image_set.paths, image_set.labels, preprocess=PreprocessConfig())
    batches = [list(range(len(dataset)))]
    (batch,) = list(make_loader(dataset, batches, workers=2))
    assert len(batch) == 4 and batch.images.shape == (4, 3, 224, 224)
    assert sorted(f.path.rsplit("/", 1)[-1] for f in batch.failures) == ["broken.png",
                                                                         "tiny.png"]
    assert all(f.reason for f in batch.failures)
    empty = collate([batch.failures[0]])
    assert len(empty) == 0 and empty.images.shape[0] == 0


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(50, seed=3, stage=2, epoch=1)
    assert sorted(a) == list(range(50))
    assert a == epoch_order(50, seed=3, stage=2, epoch=1)
    assert a != epoch_order(50, seed=3, stage=2, epoch=2)
    assert a != epoch_order(50, seed=3, stage=1, epoch=1)


def test_augmentations_draw_from_the_given_generator():
    image = labelled_image("fake", 1, size=64)
    config = Augment(blur_prob=1.0, blur_sigma=(1.0, 2.0), jpeg_prob=1.0, jpeg_quality=(30, 40))
    one = np.asarray(augment(image, config, np.random.default_rng(5)))
    two = np.asarray(augment(image, config, np.random.default_rng(5)))
    assert np.array_equal(one, two) and not np.array_equal(one, np.asarray(image))
    off = np.asarray(augment(image, Augment(), np.random.default_rng(5)))
    assert np.array_equal(off, np.asarray(image))  # off by default
    assert np.asarray(jpeg_recompress(image, 10)).shape == (64, 64, 3)
