"""Spectral-entropy patch selection and centre crop (dgs-net.md sections 4 and 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image

from aidetect.config import DGS_PREPROCESS, UNIVFD_PREPROCESS, PreprocessConfig
from aidetect.errors import ImageError
from aidetect.preprocess import (
    build_transform,
    center_crop,
    extract_patches,
    preprocess_tensor,
    select_patches,
    spectral_entropy,
    to_tensor,
)


def numpy_entropy(patch_rgb: np.ndarray) -> float:
    """The method page's formula, written directly for one (p, p, 3) patch in [0, 1]."""
    gray = 0.299 * patch_rgb[..., 0] + 0.587 * patch_rgb[..., 1] + 0.114 * patch_rgb[..., 2]
    power = np.abs(np.fft.fft2(gray)) ** 2
    p = power / (power.sum() + 1e-12)
    return float(-(p * np.log2(p + 1e-12)).sum())


def numpy_patches(array: np.ndarray, size: int = 32) -> list[np.ndarray]:
    rows, cols = array.shape[0] // size, array.shape[1] // size
    return [array[r * size:(r + 1) * size, c * size:(c + 1) * size]
            for r in range(rows) for c in range(cols)]


def test_entropy_matches_numpy_formula():
    image = random_image(96, 64, seed=4)
    array = np.asarray(image, dtype=np.float64) / 255.0
    expected = np.array([numpy_entropy(p) for p in numpy_patches(array)])
    got = spectral_entropy(extract_patches(to_tensor(image).float() / 255, 32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert expected.std() > 0.1  # the image has patches of clearly different entropy


def test_flat_patch_has_zero_entropy_and_noise_high():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    entropy = spectral_entropy(torch.cat([flat, noise]))
    assert entropy[0].abs() < 1e-6  # all power in the DC term
    assert entropy[1] > 1.0  # power spread over many frequencies (DC still dominates)


def test_selects_24_lowest_and_25_highest_in_fixed_order():
    image = random_image(320, 256, seed=5)  # 10 x 8 = 80 patches
    array = np.asarray(image, dtype=np.float64) / 255.0
    patches = numpy_patches(array)
    entropy = np.array([numpy_entropy(p) for p in patches])
    order = np.argsort(entropy, kind="stable")
    expected_ids = list(order[:24]) + list(order[-25:])
    tiled = select_patches(to_tensor(image), DGS_PREPROCESS)  # (3, 224, 224)
    assert tiled.shape == (3, 224, 224)
    for slot, patch_id in enumerate(expected_ids):
        r, c = divmod(slot, 7)
        tile = tiled[:, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(tile, patches[patch_id], atol=1e-6)


def test_inference_is_deterministic_and_training_shuffles_the_same_tiles():
    image = to_tensor(random_image(320, 320, seed=6))
    first = preprocess_tensor(image, DGS_PREPROCESS)
    assert torch.equal(first, preprocess_tensor(image, DGS_PREPROCESS))
    torch.manual_seed(0)
    shuffled = preprocess_tensor(image, DGS_PREPROCESS, train=True)
    assert not torch.equal(first, shuffled)

    def tiles(x):
        t = x.reshape(3, 7, 32, 7, 32).permute(1, 3, 0, 2, 4).reshape(49, -1)
        return sorted(map(tuple, t.tolist()))

    flipped_back = [tiles(shuffled), tiles(shuffled.flip(-1).contiguous())]
    assert tiles(first) in flipped_back  # same 49 tiles, other order (and maybe flipped)


def test_crop_is_top_left_to_multiples_of_32():
    image = torch.zeros(3, 70, 100, dtype=torch.uint8)
    image[:, 64:, :] = 255  # outside the 64-px crop: must never be selected
    image[:, :, 96:] = 255
    patches = extract_patches(image.float() / 255, 32)
    assert patches.shape == (2 * 3, 3, 32, 32)
    assert patches.max() == 0


def test_small_images():
    with pytest.raises(ImageError, match="at least 32x32"):
        select_patches(torch.zeros(3, 31, 500, dtype=torch.uint8), DGS_PREPROCESS)
    # 2 x 3 = 6 patches: all of them in ascending entropy, repeated to fill 49 tiles.
    image = to_tensor(random_image(96, 64, seed=7))
    tiled = select_patches(image, DGS_PREPROCESS)
    tiles = tiled.reshape(3, 7, 32, 7, 32).permute(1, 3, 0, 2, 4).reshape(49, 3, 32, 32)
    patches = extract_patches(image.float() / 255, 32)
    order = torch.argsort(spectral_entropy(patches), stable=True)
    for slot in range(49):
        torch.testing.assert_close(tiles[slot], patches[order[slot % 6]])


def test_center_crop_pads_small_images_with_zeros_like_torchvision():
    image = torch.full((3, 100, 300), 255, dtype=torch.uint8)
    cropped = center_crop(image, 224)
    assert cropped.shape == (3, 224, 224)
    assert cropped[:, :62].max() == 0 and cropped[:, 162:].max() == 0  # padded rows
    assert cropped[:, 62:162].min() == 1.0


def test_normalisation_uses_the_config_statistics():
    image = to_tensor(random_image(224, 224, seed=8))
    out = preprocess_tensor(image, UNIVFD_PREPROCESS)
    raw = image.float() / 255
    mean = torch.tensor(UNIVFD_PREPROCESS.mean).view(3, 1, 1)
    std = torch.tensor(UNIVFD_PREPROCESS.std).view(3, 1, 1)
    torch.testing.assert_close(out, (raw - mean) / std)


def test_transform_from_pil_and_config_validation():
    transform = build_transform(DGS_PREPROCESS)
    out = transform(random_image(256, 256, seed=9))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="do not tile"):
        PreprocessConfig(n_low=20, n_high=20)
    round_trip = PreprocessConfig.from_dict(UNIVFD_PREPROCESS.to_dict())
    assert round_trip == UNIVFD_PREPROCESS


def test_preprocess_batch_rows_equal_preprocess_tensor():
    from aidetect.preprocess import check_image_size, preprocess_batch

    sizes = [(320, 240), (100, 80), (320, 240), (64, 64), (160, 96), (33, 500), (320, 240)]
    images = [to_tensor(random_image(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    for config in (DGS_PREPROCESS, UNIVFD_PREPROCESS):
        batch = preprocess_batch(images, config)
        expected = torch.stack([preprocess_tensor(image, config) for image in images])
        assert torch.equal(batch, expected), config.method  # same arithmetic, row by row
    with pytest.raises(ImageError, match="20x40 px"):
        check_image_size(20, 40, DGS_PREPROCESS)
    check_image_size(20, 40, UNIVFD_PREPROCESS)  # a centre crop pads


def test_preprocess_batch_stays_on_the_images_device():
    """What the GPU pipeline runs, on the meta device, which holds no data: a tensor made on
    the host (a device mismatch on a GPU) or a value read back from the device (a stall per
    batch) would fail here."""
    from aidetect.preprocess import preprocess_batch

    images = [torch.empty(3, h, w, dtype=torch.uint8, device="meta")
              for w, h in [(1024, 768), (1024, 768), (500, 600), (1024, 768)]]
    for config in (DGS_PREPROCESS, UNIVFD_PREPROCESS):
        for batch in (images, images[:2]):  # sizes mixed, and one size
            out = preprocess_batch(batch, config)
            assert out.device.type == "meta" and out.dtype == torch.float32
            assert out.shape == (len(batch), 3, config.size, config.size)
