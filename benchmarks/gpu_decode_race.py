"""Does decoding JPEGs on the GPU overwrite memory that queued work still reads?

torchvision's CUDA `decode_jpeg` allocates its images on the caller's stream and decodes on a
private one that never waits for the caller's (pytorch/vision#9606), and nvJPEG's hardware
engine does not wait for queued work either. The scan queues a batch on the GPU and decodes the
next while it runs, so `aidetect.gpu_decode.decode_jpegs` decodes with a stream of its own
current and hands each image over with `record_stream`. This script sets the trap for both:

  1. fills `--victims` tensors, each the size of a decoded image, with a known value;
  2. queues a long kernel (`torch.cuda._sleep`), then one sum per victim behind it;
  3. frees the victims while their sums are still queued;
  4. decodes a batch of JPEGs (torchvision directly, or aidetect's `decode_jpegs`);
  5. waits, and counts the sums that are not what was written.

It prints, per decoder, how many of `--iterations` rounds read a corrupted victim. aidetect's
must be 0; torchvision's count says whether the hazard shows on this GPU at all (0 there
means the check proves nothing on this machine). On a CPU (`--device cpu`) there are no
streams: it runs the same steps as a dry run of the script.

    python benchmarks/gpu_decode_race.py                       # CUDA
    python benchmarks/gpu_decode_race.py --device cpu --iterations 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

from scan_common import machine, make_images

WIDTH, HEIGHT = 1024, 768
FILL = 7


def one_round(decode, device, victims: int, stall_cycles: int) -> bool:
    """True when a queued read saw memory that `decode()` wrote."""
    import torch

    tensors = [torch.full((3, HEIGHT, WIDTH), FILL, dtype=torch.uint8, device=device)
               for _ in range(victims)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda._sleep(stall_cycles)  # the sums below wait behind this
    sums = [tensor.sum(dtype=torch.int64) for tensor in tensors]
    del tensors  # freed while their sums are queued
    images = decode()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    expected = FILL * 3 * HEIGHT * WIDTH
    assert all(image is not None and image.shape == (3, HEIGHT, WIDTH) for image in images)
    return any(int(value) != expected for value in sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16, help="JPEGs decoded per round")
    parser.add_argument("--victims", type=int, default=16)
    parser.add_argument("--stall-ms", type=float, default=50.0,
                        help="how long the queued kernel holds the sums back")
    args = parser.parse_args()

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from aidetect.gpu_decode import decode_jpegs, read_jpeg

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: pass --device cpu for a dry run of the script")
    device = torch.device(args.device)
    cycles = 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # kHz x ms = cycles; older torch does not report the clock: an H100's 1.98 GHz
        clock_khz = getattr(torch.cuda.get_device_properties(device), "clock_rate", 0)
        cycles = int(args.stall_ms * (clock_khz or 1_980_000))
    print(f"machine: {machine(device)}")
    with tempfile.TemporaryDirectory() as tmp:  # baseline JPEGs: nvJPEG's hardware path
        paths = make_images(Path(tmp) / "images", args.batch, WIDTH, HEIGHT)
        files = [read_jpeg(path, max_pixels=None)[0] for path in paths]  # as a worker reads
    data = [file.data for file in files]

    def torchvision_decode():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    def aidetect_decode():
        return decode_jpegs(files, device)

    print(f"{args.iterations} rounds: {args.victims} victims of {3 * HEIGHT * WIDTH} bytes freed "
          f"behind a {args.stall_ms:g} ms kernel, then {args.batch} {WIDTH}x{HEIGHT} JPEGs "
          f"decoded on {args.device}")
    results = {}
    for label, decode in (("torchvision decode_jpeg", torchvision_decode),
                          ("aidetect decode_jpegs", aidetect_decode)):
        start = time.perf_counter()
        corrupted = sum(one_round(decode, device, args.victims, cycles)
                        for _ in range(args.iterations))
        results[label] = corrupted
        print(f"{label:24} corrupted rounds {corrupted}/{args.iterations} "
              f"({time.perf_counter() - start:.1f} s)")
    if device.type == "cpu":
        print("CPU: no streams, nothing can race; this was a dry run of the script")
    elif results["torchvision decode_jpeg"] == 0:
        print("the hazard did not show with torchvision's decoder on this GPU: aidetect's 0 "
              "proves nothing here")
    sys.exit(1 if results["aidetect decode_jpegs"] else 0)


if __name__ == "__main__":
    main()
