"""`aidetect scan` end to end against the bare forward pass of the same model, in one run.

- bare forward: the detector on already-preprocessed tensors, batch after batch, under
  inference_mode: the ceiling a scan can reach.
- scan: the real command (`python -m aidetect scan DIR --format jsonl`) in a subprocess, its
  stdout read line by line as results arrive: the start-up time to the first result, and the
  steady-state rate (results after the first two batches, over the time they took).
- where the time goes, per image: decoding (aidetect.data.open_image), preprocessing (patch
  selection or centre crop), and the model's share of a batch.
- on CUDA: the largest score difference between the bf16 (fp16 before Ampere) autocast the scan
  uses and fp32.

- with --precisions (CPU): the scan through the Scanner with its default decoding processes
  and threads, as `aidetect scan` runs, once per precision (fp32, auto, int8 by default), in
  the same run: images/s, the ratio to fp32, and each precision's largest score and logit
  difference from fp32, also at a trained detector's scale (see `precision_gaps`).

The detector has random weights (speed does not depend on them); the images are 1024x768
JPEGs of smooth noise with some texture, so they compress like photographs.

    python benchmarks/scan.py                                   # CPU, ViT-B-16
    python benchmarks/scan.py --device cuda --backbone ViT-L-14-quickgelu --images 512
    python benchmarks/scan.py --precisions fp32,auto,int8 --images 48 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_images(folder: Path, count: int, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 255, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        grain = rng.normal(0, 6, (height, width, 3))
        pixels = np.clip(np.asarray(smooth, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)


def bare_forward(detector, tensors, batch_size: int, device, repeats: int) -> float:
    """Images/s of the model alone on preprocessed tensors (after one warm-up batch)."""
    import torch

    from aidetect.scan import Scanner

    scanner = Scanner(detector, device=device, threshold=0.5)
    batches = [tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size)]
    scanner.score_tensors(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for batch in batches:
            scanner.score_tensors(batch)
            count += len(batch)
    return count / (time.perf_counter() - start)


def scan_subprocess(folder: Path, weights: Path, *, device: str, batch_size: int,
                    workers: int | None) -> dict:
    """Run the real command; time each result line as it arrives."""
    command = [sys.executable, "-m", "aidetect", "scan", str(folder), "--weights", str(weights),
               "--device", device, "--batch-size", str(batch_size), "--format", "jsonl", "-q"]
    if workers is not None:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stamps, device_used = [], None
    for line in process.stdout:
        record = json.loads(line)
        if "summary" in record:
            device_used = record["summary"]["device"]
            continue
        if record["error"] is not None:
            raise RuntimeError(f"{record['path']}: {record['error']}")
        stamps.append(time.perf_counter() - start)
    if process.wait() != 0:
        raise RuntimeError(f"scan exited with {process.returncode}")
    skip = min(2 * batch_size, len(stamps) // 2)  # the first batches include warm-up
    steady = (len(stamps) - skip) / (stamps[-1] - stamps[skip - 1]) if skip else 0.0
    return {"first_result_s": stamps[0], "total_s": stamps[-1], "steady_images_per_s": steady,
            "images": len(stamps), "device": device_used}


def time_stages(detector, paths: list[Path], batch_size: int, device) -> dict:
    """Seconds per image spent decoding, preprocessing and in the model (one process)."""
    import torch

    from aidetect.data import open_image
    from aidetect.preprocess import preprocess_tensor, to_tensor
    from aidetect.scan import Scanner

    decode = preprocess = 0.0
    tensors = []
    for path in paths:
        t0 = time.perf_counter()
        image = open_image(path).image
        t1 = time.perf_counter()
        uint8 = to_tensor(image)
        tensors.append(preprocess_tensor(uint8, detector.preprocess_config))
        preprocess += time.perf_counter() - t1
        decode += t1 - t0
    batch = torch.stack(tensors)
    scanner = Scanner(detector, device=device, threshold=0.5)
    model = 1.0 / bare_forward_once(scanner, batch, batch_size, device)
    n = len(paths)
    return {"decode_ms": 1000 * decode / n, "preprocess_ms": 1000 * preprocess / n,
            "model_ms": 1000 * model, "tensors": batch}


def bare_forward_once(scanner, batch, batch_size: int, device) -> float:
    import torch

    scanner.score_tensors(batch[:batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        scanner.score_tensors(batch[i : i + batch_size])
    return len(batch) / (time.perf_counter() - start)


def precision_gap(detector, tensors, device, batch_size: int) -> float:
    """Largest |score(autocast) - score(fp32)| over the images."""
    import torch

    from aidetect.scan import Scanner

    scores = {}
    for precision in ("auto", "fp32"):
        scanner = Scanner(detector, device=device, threshold=0.5, precision=precision)
        logits = torch.cat([scanner.score_tensors(tensors[i : i + batch_size])
                            for i in range(0, len(tensors), batch_size)])
        scores[precision] = torch.sigmoid(logits.double())
    return float((scores["auto"] - scores["fp32"]).abs().max())


def machine(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


TRAINED_LOGIT = 10.0  # |logit| a trained detector reaches on confident images (score 0.99995)


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def scan_in_process(weights: Path, folder: Path, *, precision: str, batch_size: int,
                    workers: int | None, threads: int | None) -> dict:
    """One scan through `Scanner.scan`, as `aidetect scan` runs it: images/s and logits.

    The model is loaded and warmed up (one forward pass) before the clock starts, so the
    figure is the steady work of a scan: decoding processes, batching, the model.
    """
    import torch

    from aidetect.data import find_images
    from aidetect.model import Detector
    from aidetect.scan import Scanner

    scanner = Scanner(Detector.from_pretrained(weights), device=torch.device("cpu"),
                      threshold=0.5, precision=precision, threads=threads)
    size = scanner.detector.preprocess_config.size
    scanner.score_tensors(torch.zeros(batch_size, 3, size, size))  # warm-up
    candidates = find_images([folder])
    start = time.perf_counter()
    results = list(scanner.scan(candidates, batch_size=batch_size, workers=workers))
    elapsed = time.perf_counter() - start
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(errors[0])
    return {"precision": scanner.precision, "device": scanner.description,
            "images_per_s": len(results) / elapsed, "seconds": elapsed,
            "logits": torch.tensor([r.logit for r in results], dtype=torch.float64)}


def precision_gaps(logits, reference) -> dict:
    """Largest differences from fp32: scores and logits as they are, and at a trained scale.

    Random weights give logits within about +-1, where a score moves by at most a quarter of
    its logit's error. A trained detector's head is larger: its logits reach +-10. The head is
    linear and runs in fp32, so scaling it by k scales every logit and every logit error by k;
    at that scale a score near the threshold (0.5) moves by up to k * error / 4.
    """
    import torch

    scale = TRAINED_LOGIT / float(reference.abs().max())
    logit_gap = float((logits - reference).abs().max())
    return {
        "score": float((torch.sigmoid(logits) - torch.sigmoid(reference)).abs().max()),
        "logit": logit_gap,
        "trained_logit": scale * logit_gap,
        "trained_at_threshold": scale * logit_gap / 4,
    }


def compare_precisions(args) -> None:
    """Scan the same images at each precision on the CPU, in one run, and print the figures."""
    import torch

    from aidetect.devices import default_workers, physical_cores
    from aidetect.model import Detector
    from aidetect.precision import cpu_features

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    width, height = (int(v) for v in args.size.split("x"))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, weights = Path(tmp) / "images", Path(tmp) / "detector"
        folder.mkdir()
        make_images(folder, args.images, width, height)
        torch.manual_seed(0)
        Detector(backbone=args.backbone, pretrained=None).save_pretrained(weights)
        for precision in precisions:
            runs[precision] = scan_in_process(weights, folder, precision=precision,
                                              batch_size=args.batch_size, workers=args.workers,
                                              threads=args.threads)
        other_batch = max(1, args.batch_size // 2)
        rebatched = None
        if "auto" in runs and args.images > other_batch:
            rebatched = scan_in_process(weights, folder, precision="auto",
                                        batch_size=other_batch, workers=args.workers,
                                        threads=args.threads)

    workers = args.workers if args.workers is not None else default_workers(torch.device("cpu"))
    print(f"machine: {cpu_name()} ({platform.machine()}; {cpu_features().describe()}), "
          f"{physical_cores()} physical cores, torch {torch.__version__}")
    print(f"model: {args.backbone} (random weights), {args.images} JPEGs {args.size}, "
          f"batch {args.batch_size}, {workers} decoding worker(s), "
          f"{torch.get_num_threads()} model thread(s)")
    reference = runs.get("fp32")
    print(f"{'precision':<16} {'images/s':>9} {'x fp32':>7} {'score gap':>10} "
          f"{'logit gap':>10} {'trained: logit gap':>19} {'score at 0.5':>13}")
    for requested, run in runs.items():
        name = f"{requested} ({run['precision']})" if requested == "auto" else requested
        line = f"{name:<16} {run['images_per_s']:9.2f}"
        if reference is not None:
            gaps = precision_gaps(run["logits"], reference["logits"])
            line += (f" {run['images_per_s'] / reference['images_per_s']:7.2f} "
                     f"{gaps['score']:10.2e} {gaps['logit']:10.2e} "
                     f"{gaps['trained_logit']:19.2e} {gaps['trained_at_threshold']:13.2e}")
        print(line)
    auto = runs.get("auto")
    if auto is not None:
        print(f"auto = {auto['device']}")
    if rebatched is not None:
        drift = float((rebatched["logits"] - auto["logits"]).abs().max())
        print(f"auto, batch {other_batch} vs {args.batch_size}: largest logit difference "
              f"{drift:.2e}")
    print(f"trained scale: the head scaled so that |fp32 logit| reaches {TRAINED_LOGIT:g}; "
          "'score at 0.5': the most a score at the threshold moves then")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: the scan's own")
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--precisions", default=None,
                        help="CPU: compare these precisions end to end, e.g. fp32,auto,int8")
    parser.add_argument("--threads", type=int, default=None, help="default: the scan's own")
    args = parser.parse_args()
    if args.precisions:
        compare_precisions(args)
        return

    import torch

    from aidetect.model import Detector

    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder, weights = Path(tmp) / "images", Path(tmp) / "detector"
        folder.mkdir()
        make_images(folder, args.images, width, height)
        torch.manual_seed(0)
        Detector(backbone=args.backbone, pretrained=None).save_pretrained(weights)
        detector = Detector.from_pretrained(weights)

        paths = sorted(folder.iterdir())
        stages = time_stages(detector, paths[: min(32, len(paths))], args.batch_size, device)
        tensors = stages.pop("tensors")
        bare = bare_forward(detector, tensors, args.batch_size, device, repeats=3)
        scan = scan_subprocess(folder, weights, device=args.device, batch_size=args.batch_size,
                               workers=args.workers)

        print(f"machine: {machine(device)}")
        print(f"model: {args.backbone} (random weights), {args.images} JPEGs {args.size}, "
              f"batch {args.batch_size}, scan device {scan['device']}")
        print(f"per image: decode {stages['decode_ms']:.1f} ms, preprocess "
              f"{stages['preprocess_ms']:.1f} ms, model {stages['model_ms']:.1f} ms")
        print(f"bare forward:      {bare:8.2f} images/s")
        print(f"aidetect scan:     {scan['steady_images_per_s']:8.2f} images/s steady state "
              f"({scan['images']} images in {scan['total_s']:.1f} s)")
        print(f"ratio scan / bare: {scan['steady_images_per_s'] / bare:8.3f}  (target >= 0.9)")
        print(f"start-up to first result: {scan['first_result_s']:.2f} s")
        if device.type == "cuda":
            gap = precision_gap(detector, tensors, device, args.batch_size)
            print(f"max |score autocast - score fp32|: {gap:.2e}  (must be < 1e-2)")


if __name__ == "__main__":
    main()
