"""From a decoded image to the detector's input tensor (dgs-net.md sections 4 and 7).

DGS-Net keeps the 24 lowest- and 25 highest-spectral-entropy 32x32 patches of the image and
tiles them into a 7x7 grid; UnivFD centre-crops 224x224 at native resolution. All of it is
batched tensor arithmetic on whatever device the image is on.

Tile order (fixed at inference, so a file always gets the same score): the 24 lowest-entropy
patches in ascending entropy, then the 25 highest in ascending entropy, filling the grid row by
row; ties keep raster order. Training may shuffle the tiles instead.

`preprocess_batch` does the same for many images at once (the GPU scan): same-sized images
are stacked, and each row equals `preprocess_tensor` of its image.

Small images: an image under one patch (32 px) in either side is an error. One with fewer
patches than tiles (e.g. 160x96, 15 patches) uses all its patches in ascending entropy, repeated
in that order until the grid is full.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from aidetect.config import PreprocessConfig
from aidetect.errors import ImageError

LOG_EPS = 1e-12  # the published code's epsilon in the normalisation and the log
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as the published code


def to_tensor(image) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) uint8 tensor, without copying through Python lists."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)


def _as_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


def _grid_shape(image: torch.Tensor, patch_size: int) -> tuple[int, int]:
    height, width = image.shape[-2:]
    rows, cols = height // patch_size, width // patch_size
    if rows == 0 or cols == 0:
        raise ImageError(
            f"image is {width}x{height} px; at least {patch_size}x{patch_size} px is needed"
        )
    return rows, cols


def check_image_size(width: int, height: int, config: PreprocessConfig) -> None:
    """Raise the `ImageError` that preprocessing would raise for an image of this size."""
    if config.method == "patches":
        _grid_shape(torch.empty(0, height, width), config.patch_size)


def extract_patches(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Non-overlapping patches of the top-left crop to multiples of `patch_size`.

    (C, H, W) -> (N, C, p, p), N = (H // p) * (W // p), in raster order.
    """
    rows, cols = _grid_shape(image, patch_size)
    channels = image.shape[0]
    cropped = image[:, : rows * patch_size, : cols * patch_size]
    patches = cropped.reshape(channels, rows, patch_size, cols, patch_size)
    return patches.permute(1, 3, 0, 2, 4).reshape(rows * cols, channels, patch_size, patch_size)


def luma(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> (..., H, W): 0.299 R + 0.587 G + 0.114 B."""
    weights = _constant(GRAY_WEIGHTS, image)
    return torch.einsum("...chw,c->...hw", image, weights)


def luma_entropy(gray: torch.Tensor) -> torch.Tensor:
    """Spectral entropy of (N, p, p) luma patches -> (N,).

    H = -sum p log2(p + eps), p = P / (sum P + eps), P = |FFT2(gray)|^2 over the full spectrum.
    A real patch's spectrum is conjugate-symmetric, so the half spectrum of `rfft2` with each
    mirrored column counted twice gives the same sums for half the work.
    """
    size = gray.shape[-1]
    spectrum = torch.fft.rfft2(gray)  # (N, p, p // 2 + 1)
    # re^2 + im^2 rather than abs().square(): the same power without a square root, 2.5x faster.
    power = spectrum.real.square().addcmul_(spectrum.imag, spectrum.imag)
    counts = torch.full((power.shape[-1],), 2.0, dtype=power.dtype, device=power.device)
    counts[0] = 1.0  # the DC column has no mirror
    if size % 2 == 0:
        counts[-1] = 1.0  # nor has the Nyquist column of an even size
    total = (power @ counts).sum(dim=1)  # (N,): the full spectrum's power
    prob = power.div_((total + LOG_EPS)[:, None, None])
    plogp = prob.add(LOG_EPS).log2_().mul_(prob)
    return -(plogp @ counts).sum(dim=1)


def spectral_entropy(patches: torch.Tensor) -> torch.Tensor:
    """Spectral entropy of each patch's luma: (N, 3, p, p) in [0, 1] -> (N,)."""
    return luma_entropy(luma(patches))


def select_patch_indices(entropy: torch.Tensor, n_low: int, n_high: int) -> torch.Tensor:
    """Indices of the kept patches in tile order (see the module docstring), over the last
    dimension: (..., N) -> (..., n_low + n_high)."""
    order = torch.sort(entropy, dim=-1, stable=True).indices  # ascending, ties in raster order
    total, count = n_low + n_high, order.shape[-1]
    if count >= total:
        return torch.cat([order[..., :n_low], order[..., count - n_high :]], dim=-1)
    repeats = -(-total // count)  # ceil
    return order.repeat(*([1] * (order.dim() - 1)), repeats)[..., :total]


def select_patches(
    image: torch.Tensor,
    config: PreprocessConfig,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DGS-Net's patch selection: (3, H, W) uint8 or [0, 1] float -> (3, S, S) float in [0, 1].

    With `shuffle`, the kept tiles are put in random order (a training augmentation, drawn from
    `generator` or torch's global generator); without it, the tile order is fixed.
    """
    keep = _kept_patches(image[None], config)[0]
    if shuffle:
        keep = keep[torch.randperm(keep.numel(), generator=generator).to(keep.device)]
    return _tile(image[None], keep[None], config)[0]


def select_patches_stacked(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """`select_patches` (fixed tile order) over images of one size: (G, 3, H, W) -> (G, 3, S, S),
    with a handful of tensor operations for the whole stack."""
    return _tile(images, _kept_patches(images, config), config)


def _kept_patches(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """(G, 3, H, W) -> (G, n_low + n_high) raster indices of the kept patches, in tile order."""
    p = config.patch_size
    rows, cols = _grid_shape(images, p)
    # Entropy needs only the luma; the colour patches are gathered for the 49 kept ones alone.
    gray = luma(_as_unit_float(images[..., : rows * p, : cols * p]))  # (G, rows*p, cols*p)
    count = images.shape[0]
    gray_patches = gray.reshape(count, rows, p, cols, p).permute(0, 1, 3, 2, 4)
    entropy = luma_entropy(gray_patches.reshape(-1, p, p)).reshape(count, rows * cols)
    return select_patch_indices(entropy, config.n_low, config.n_high)


def _tile(images: torch.Tensor, keep: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """The kept patches (G, 49) of (G, 3, H, W) tiled row by row: (G, 3, S, S) in [0, 1]."""
    p, grid, count = config.patch_size, config.size // config.patch_size, images.shape[0]
    rows, cols = _grid_shape(images, p)
    # A view of the patches, (G, 3, rows, cols, p, p): only the kept ones are copied (a
    # reshape of the whole image would copy it all: 1.7 ms against 0.3 ms for 1024x768).
    patches = images[..., : rows * p, : cols * p].unfold(-2, p, p).unfold(-2, p, p)
    picked = torch.arange(count, device=images.device)[:, None]
    tiles = _as_unit_float(patches[picked, :, keep // cols, keep % cols])  # (G, 49, 3, p, p)
    tiles = tiles.reshape(count, grid, grid, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(count, 3, grid * p, grid * p)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """UnivFD's crop: the central size x size at native resolution, zero-padded if smaller.

    Same placement as torchvision's `center_crop` (which pads, then crops).
    """
    from torchvision.transforms.functional import center_crop as tv_center_crop

    return tv_center_crop(_as_unit_float(image), [size, size])


def normalize(image: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> standardised with the config's mean and std."""
    mean = _constant(config.mean, image).view(3, 1, 1)
    std = _constant(config.std, image).view(3, 1, 1)
    return (image - mean) / std


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """`values` as a tensor on `like`'s device and dtype. Made once per GPU: creating it from
    a list is a copy the host waits for, which would stall the device pipeline every batch."""
    if like.device.type == "cpu":
        return torch.tensor(values, dtype=like.dtype)
    return _device_constant(tuple(values), like.device, like.dtype)


@lru_cache(maxsize=32)
def _device_constant(values: tuple[float, ...], device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):  # an ordinary tensor, usable in training too
        return torch.tensor(values, dtype=dtype).to(device)


def preprocess_tensor(
    image: torch.Tensor,
    config: PreprocessConfig,
    *,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(3, H, W) uint8 image -> (3, S, S) normalised input, per the detector's config.

    With `train`: tiles shuffled (patches method) and a random horizontal flip, drawn from
    `generator` or torch's global generator (which DataLoader seeds per worker).
    """
    if config.method == "patches":
        tiled = select_patches(image, config, shuffle=train, generator=generator)
    else:
        tiled = center_crop(image, config.size)
    if train and torch.rand((), generator=generator) < 0.5:
        tiled = tiled.flip(-1)
    return normalize(tiled, config)


def preprocess_batch(images: list[torch.Tensor], config: PreprocessConfig) -> torch.Tensor:
    """Inference preprocessing of many images at once: [(3, H_i, W_i) uint8] -> (B, 3, S, S).

    Row i is `preprocess_tensor(images[i], config)`. Images of the same size are stacked and
    processed together, so a batch of same-sized photos costs a few tensor operations; the
    result stays on the images' device. Sizes must have been checked (`check_image_size`).
    """
    if not images:
        raise ValueError("preprocess_batch needs at least one image")
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(tuple(image.shape), []).append(index)
    groups = []
    for indices in by_shape.values():
        stacked = torch.stack([images[i] for i in indices])
        if config.method == "patches":
            groups.append(select_patches_stacked(stacked, config))
        else:
            groups.append(center_crop(stacked, config.size))
    if len(groups) == 1:
        return normalize(groups[0], config)
    # Rows back in the images' order, copied one by one: an index tensor made on the host
    # would be a copy that waits for the device.
    out = torch.empty(len(images), 3, config.size, config.size, device=images[0].device)
    for indices, tiled in zip(by_shape.values(), groups, strict=True):
        for row, index in enumerate(indices):
            out[index].copy_(tiled[row])
    return normalize(out, config)


def build_transform(config: PreprocessConfig, *, train: bool = False) -> Callable:
    """A picklable callable (for DataLoader workers): PIL RGB image -> input tensor (3, S, S)."""
    return _Transform(config, train)


class _Transform:
    def __init__(self, config: PreprocessConfig, train: bool) -> None:
        self.config = config
        self.train = train

    def __call__(self, image) -> torch.Tensor:
        return preprocess_tensor(to_tensor(image), self.config, train=self.train)
