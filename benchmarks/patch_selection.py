"""Patches per second of the batched patch selection against a per-patch numpy loop.

Both compute the same thing (dgs-net.md section 4): crop to multiples of 32, split into 32x32
patches, spectral entropy of each, keep the 24 lowest and 25 highest, tile a 7x7 grid.

    python benchmarks/patch_selection.py [--repeats 5] [--device cpu|cuda]

With `--device cuda` the batched selection runs on the GPU (timed with synchronisation, the
image already on the device); the numpy loop, the baseline, always runs on the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from aidetect.config import DGS_PREPROCESS
from aidetect.preprocess import select_patches


def loop_select(image: np.ndarray, size: int = 32) -> np.ndarray:
    """The straightforward version: one numpy FFT per patch, in a Python loop."""
    rows, cols = image.shape[0] // size, image.shape[1] // size
    patches, entropies = [], []
    for r in range(rows):
        for c in range(cols):
            patch = image[r * size:(r + 1) * size, c * size:(c + 1) * size].astype(np.float64) / 255
            gray = 0.299 * patch[..., 0] + 0.587 * patch[..., 1] + 0.114 * patch[..., 2]
            power = np.abs(np.fft.fft2(gray)) ** 2
            p = power / (power.sum() + 1e-12)
            entropies.append(-(p * np.log2(p + 1e-12)).sum())
            patches.append(patch)
    order = np.argsort(np.array(entropies), kind="stable")
    keep = list(order[:24]) + list(order[-25:])
    grid = np.zeros((7 * size, 7 * size, 3))
    for slot, index in enumerate(keep):
        r, c = divmod(slot, 7)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = patches[index]
    return grid


def best_time(fn, repeats: int, *, device: torch.device | None = None) -> float:
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the batched selection runs (the loop runs on the CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    device = torch.device(args.device)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}")
    if device.type == "cuda":
        print(f"batched selection on {torch.cuda.get_device_name(device)}")
    rng = np.random.default_rng(0)
    for width, height in [(512, 512), (2048, 1536)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(device)
        n_patches = (width // 32) * (height // 32)
        batched = best_time(lambda t=tensor: select_patches(t, DGS_PREPROCESS), args.repeats,
                            device=device)
        looped = best_time(lambda i=image: loop_select(i), args.repeats)
        # Same selection from both (up to float32 vs float64 rounding of the entropies).
        got = select_patches(tensor, DGS_PREPROCESS).permute(1, 2, 0).cpu().numpy()
        same = np.abs(got - loop_select(image)).max() < 1e-6
        print(f"{width}x{height} ({n_patches} patches): batched ({device.type}) "
              f"{n_patches / batched:,.0f} "
              f"patches/s ({batched * 1e3:.2f} ms/image), per-patch loop "
              f"{n_patches / looped:,.0f} patches/s ({looped * 1e3:.2f} ms/image), "
              f"speed-up x{looped / batched:.1f}, same tiles: {same}")


if __name__ == "__main__":
    main()
