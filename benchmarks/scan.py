"""`aidetect scan` against the model-only ceiling of the same model, in one run, per preprocessing.

For each preprocessing (`patches`, DGS-Net's patch selection; `center_crop`, UnivFD's) it prints:
- model-only ceiling: the detector as the scan prepares it (converted weights: bf16 on CUDA from
  Ampere on) on already-preprocessed tensors on the device, batch after batch, one
  synchronisation at the end: the most a scan can reach (with --compile, also under
  torch.compile).
- scan: the real command (`python -m aidetect scan DIR --format jsonl`) in a subprocess, its
  stdout read line by line as results arrive: the steady-state rate (results after the first
  two batches, over the time they took), its ratio to the ceiling, and the start-up time to
  the first result.
- in process: the time from the weights being loaded (Scanner ready) to the first result, and
  where the scan's time goes (`Scanner.timings`: waiting for the decoding workers, decoding
  and preprocessing on the device, the model).
- scores: the largest |score - score of the CPU fp32 path| over the first --compare files (the
  scan's pipeline and precision against Pillow decoding, CPU preprocessing and fp32).

On CUDA the scan runs the device pipeline (nvJPEG, batched preprocessing on the GPU). On the CPU
the in-process figures run the same device pipeline on the CPU (a dry run of its logic), the
subprocess runs the CPU pipeline. The detector has random weights (speed does not depend on
them); the images are JPEGs of smooth noise with some texture, so they compress like photos
(scan_common.make_images).

Provenance's cost has its own script (benchmarks/scan_provenance.py), and so has the CPU
precision comparison (benchmarks/scan_precision.py).

    python benchmarks/scan.py                                  # CPU dry run, ViT-B-16
    python benchmarks/scan.py --device cuda --backbone ViT-L-14-quickgelu --images 2048 \\
        --batch-size 64
    python benchmarks/scan.py --device cuda --compile          # also under torch.compile
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from scan_common import (
    machine,
    make_images,
    parse_size,
    save_detector,
    scan_arguments,
    scan_subprocess,
    steady_rate,
)


def cpu_tensors(detector, paths: list[Path]):
    """The CPU path's preprocessed inputs of `paths`: (n, 3, S, S)."""
    import torch

    from aidetect.data import open_image
    from aidetect.preprocess import preprocess_tensor, to_tensor

    return torch.stack([preprocess_tensor(to_tensor(open_image(p).image),
                                          detector.preprocess_config) for p in paths])


def model_ceiling(scanner, tensors, batch_size: int, images: int) -> float:
    """Images/s of the prepared model alone on preprocessed tensors already on the device."""
    import torch

    batch = tensors[torch.arange(batch_size) % len(tensors)].to(scanner.device)
    model = scanner.detector
    with torch.inference_mode():
        model(batch)  # warm-up
        model(batch)
        synchronize(scanner.device)
        count, start = 0, time.perf_counter()
        while count < images:
            model(batch).float()
            count += batch_size
        synchronize(scanner.device)
    return count / (time.perf_counter() - start)


def compiled_ceiling(scanner, tensors, batch_size: int, images: int) -> tuple[float, float]:
    """(seconds to compile and run the first batch, images/s) under torch.compile."""
    import torch

    batch = tensors[torch.arange(batch_size) % len(tensors)].to(scanner.device)
    compiled = torch.compile(scanner.detector)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(batch)
        synchronize(scanner.device)
        compile_s = time.perf_counter() - start
        count, start = 0, time.perf_counter()
        while count < images:
            compiled(batch).float()
            count += batch_size
        synchronize(scanner.device)
    return compile_s, count / (time.perf_counter() - start)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scan_in_process(scanner, paths: list[Path], *, batch_size: int, workers: int | None,
                    device_decode: bool) -> dict:
    """The scan from a loaded Scanner: time to the first result, stage timings, logits."""
    from aidetect.data import Candidate

    candidates = [Candidate(str(p)) for p in paths]
    start = time.perf_counter()
    stamps, logits = [], []
    for result in scanner.scan(candidates, batch_size=batch_size, workers=workers,
                               device_decode=device_decode):
        if result.error is not None:
            raise RuntimeError(f"{result.path}: {result.error}")
        stamps.append(time.perf_counter() - start)
        logits.append(result.logit)
    return {"first_result_s": stamps[0], "wall_s": stamps[-1], "timings": scanner.timings,
            "steady_images_per_s": steady_rate(stamps, batch_size), "logits": logits}


def largest_score_gap(logits, reference) -> float:
    import torch

    ours = torch.sigmoid(torch.tensor(logits, dtype=torch.float64))
    theirs = torch.sigmoid(torch.tensor(reference, dtype=torch.float64))
    return float((ours - theirs).abs().max())


def run_one(method: str, args, device, folder: Path, paths: list[Path], tmp: Path) -> None:
    """Measure one preprocessing (`patches` or `center_crop`) and print its figures."""
    import torch

    from aidetect.config import DGS_PREPROCESS, UNIVFD_PREPROCESS
    from aidetect.model import Detector
    from aidetect.scan import Scanner

    config = DGS_PREPROCESS if method == "patches" else UNIVFD_PREPROCESS
    weights = save_detector(tmp / f"detector-{method}", args.backbone, method)

    def scanner(on, precision="auto"):
        return Scanner(Detector.from_pretrained(weights), device=on, threshold=0.5,
                       precision=precision)

    gpu = scanner(device)
    tensors = cpu_tensors(gpu.detector, paths[: min(32, len(paths))])
    count = max(len(paths), 4 * args.batch_size)
    ceiling = model_ceiling(gpu, tensors, args.batch_size, count)
    compiled = compiled_ceiling(gpu, tensors, args.batch_size, count) if args.compile else None
    inside = scan_in_process(gpu, paths, batch_size=args.batch_size, workers=args.workers,
                             device_decode=True)
    outside = scan_subprocess(folder, weights, device=args.device, batch_size=args.batch_size,
                              workers=args.workers)
    compare = paths[: args.compare]
    reference = scan_in_process(scanner(torch.device("cpu"), "fp32"), compare,
                                batch_size=args.batch_size, workers=args.workers,
                                device_decode=False)
    gap = largest_score_gap(inside["logits"][: len(compare)], reference["logits"])

    t = inside["timings"]
    wall = inside["wall_s"]
    print(f"\n== {method} ({config.method}), scan device {outside['device']}")
    print(f"model-only ceiling ({gpu.precision} weights): {ceiling:9.1f} images/s")
    if compiled is not None:
        print(f"  under torch.compile:                 {compiled[1]:9.1f} images/s "
              f"(compile and first batch {compiled[0]:.1f} s)")
    print(f"aidetect scan (subprocess):      {outside['steady_images_per_s']:9.1f} images/s "
          f"steady state; ratio to the ceiling {outside['steady_images_per_s'] / ceiling:.3f} "
          f"(target >= 0.9, and >= 2000 images/s on an H100/H200)")
    print(f"  start-up to the first result {outside['first_result_s']:.2f} s "
          f"({outside['images']} images in {outside['total_s']:.1f} s)")
    print(f"device pipeline (in process):    {inside['steady_images_per_s']:9.1f} images/s "
          f"steady state; first result {inside['first_result_s']:.2f} s after the weights "
          "were loaded (target <= 3 s)")
    print(f"  where the time goes ({t.images} images, {wall:.2f} s wall): "
          + ", ".join(f"{name} {seconds:.2f} s ({1000 * seconds / t.images:.2f} ms/image)"
                      for name, seconds in (("decode", t.decode), ("preprocess", t.preprocess),
                                            ("model", t.model), ("waiting", t.waiting))))
    print(f"max |score - score of the CPU fp32 path| over {len(compare)} files: {gap:.2e} "
          "(bound 1e-2)")


def main() -> None:
    parser = scan_arguments(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preprocess", default="patches,center_crop",
                        help="comma-separated: patches, center_crop")
    parser.add_argument("--compare", type=int, default=16,
                        help="files scored on the CPU in fp32 for the score gap")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the model-only ceiling under torch.compile")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device)
    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        paths = make_images(folder, args.images, width, height)
        print(f"machine: {machine(device)}")
        print(f"model: {args.backbone} (random weights), {args.images} JPEGs {args.size}, "
              f"batch {args.batch_size}")
        for method in args.preprocess.split(","):
            run_one(method.strip(), args, device, folder, paths, Path(tmp))


if __name__ == "__main__":
    main()
