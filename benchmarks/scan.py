"""`aidetect scan` against the model-only ceiling of the same model, in one run, per preprocessing.

For each preprocessing (`patches`, DGS-Net's patch selection; `center_crop`, UnivFD's):
- model-only ceiling: the detector as the scan prepares it (converted weights: bf16 on CUDA from
  Ampere on) on already-preprocessed tensors on the device, batch after batch, one
  synchronisation at the end: the most a scan can reach.
- scan: the real command (`python -m aidetect scan DIR --format jsonl`) in a subprocess, its
  stdout read line by line as results arrive: the steady-state rate (results after the first
  two batches, over the time they took) and the start-up time to the first result.
- in process: the time from the weights being loaded (Scanner ready) to the first result, and
  where the scan's time goes (`Scanner.timings`: waiting for the decoding workers, decoding
  and preprocessing on the device, the model).
- scores: the largest |score - score of the CPU fp32 path| over the first --compare files (the
  scan's pipeline and precision against Pillow decoding, CPU preprocessing and fp32).
- with --provenance (aidetect.provenance: C2PA, XMP, EXIF, generator parameters): the scan with
  and without it (`--no-provenance`), and its cost per image read alone; target: at most 5% of
  the CPU scan's time.
- with --precisions (CPU, instead of the above): the scan through the Scanner with its default
  decoding processes and threads, as `aidetect scan` runs, once per precision (fp32, auto,
  int8 by default), in the same run: images/s, the ratio to fp32, and each precision's largest
  score and logit difference from fp32, also at a trained detector's scale (see
  `precision_gaps`).

On CUDA the scan runs the device pipeline (nvJPEG, batched preprocessing on the GPU). On the CPU
the in-process figures run the same device pipeline on the CPU (a dry run of its logic), the
subprocess runs the CPU pipeline. The detector has random weights (speed does not depend on
them); the images are JPEGs of smooth noise with some texture, so they compress like photos,
with EXIF and an XMP packet as a camera or an editor writes them (so that provenance has
something to parse).

    python benchmarks/scan.py                                  # CPU dry run, ViT-B-16
    python benchmarks/scan.py --device cuda --backbone ViT-L-14-quickgelu --images 2048 \\
        --batch-size 64
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
        exif = Image.Exif()
        exif.update({0x010F: "Canon", 0x0110: "Canon EOS R5", 0x0131: "Adobe Lightroom 13.1"})
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90, exif=exif,
                                     xmp=XMP_PACKET)


XMP_PACKET = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    b'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    b'xmp:CreatorTool="Adobe Lightroom 13.1" Iptc4xmpExt:DigitalSourceType='
    b'"http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"/></rdf:RDF></x:xmpmeta>'
    b'<?xpacket end="w"?>'
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


def scan_subprocess(folder: Path, weights: Path, *, device: str, batch_size: int,
                    workers: int | None, extra: tuple[str, ...] = ()) -> dict:
    """Run the real command; time each result line as it arrives."""
    command = [sys.executable, "-m", "aidetect", "scan", str(folder), "--weights", str(weights),
               "--device", device, "--batch-size", str(batch_size), "--format", "jsonl", "-q",
               "--no-cache",  # the scan itself, every time (the cache has its own benchmark)
               *extra]
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
    return {"first_result_s": stamps[0], "total_s": stamps[-1],
            "steady_images_per_s": steady_rate(stamps, batch_size), "images": len(stamps),
            "device": device_used}


def steady_rate(stamps: list[float], batch_size: int) -> float:
    """Results after the first batches (warm-up: the batch of one, then up to two full ones)
    over the time they took, counted from a batch's end (results arrive a batch at a time)."""
    skip = 1 + 2 * batch_size if len(stamps) > 1 + 3 * batch_size else 1 + batch_size
    if len(stamps) <= skip:
        return 0.0
    return (len(stamps) - skip) / (stamps[-1] - stamps[skip - 1])


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


def machine(device) -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = f"{platform.machine()}, {cores} cores, torch {torch.__version__}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {host}"
    return f"{host}, {torch.get_num_threads()} torch threads"


def provenance_ms(paths: list[Path]) -> float:
    """Milliseconds per image of `read_provenance` alone (after one warm-up read)."""
    from aidetect.provenance import read_provenance

    read_provenance(paths[0])
    start = time.perf_counter()
    for path in paths:
        read_provenance(path)
    return 1000 * (time.perf_counter() - start) / len(paths)


def provenance_cost(args, folder: Path, weights: Path, paths: list[Path]) -> None:
    """The scan with and without provenance, interleaved; the best total of each (the least
    disturbed by other load on the machine), and provenance's cost per image alone."""
    totals: dict[str, list[float]] = {"with": [], "without": []}
    steady = []
    for mode in ("with", "without", "with", "without"):
        run = scan_subprocess(folder, weights, device=args.device, batch_size=args.batch_size,
                              workers=args.workers,
                              extra=("--no-provenance",) if mode == "without" else ())
        totals[mode].append(run["total_s"])
        steady.append(run["steady_images_per_s"])
    with_s, without_s = min(totals["with"]), min(totals["without"])
    print(f"\nscan time with provenance {with_s:.1f} s, --no-provenance {without_s:.1f} s "
          f"(best of 2 each, interleaved): ratio {with_s / without_s:.3f}  (target <= 1.05)")
    share = provenance_ms(paths) * max(steady) / 1000
    print(f"provenance alone: {provenance_ms(paths):.2f} ms per image = {100 * share:.1f}% of "
          "the scan's steady-state time per image  (target <= 5%)")


def run_one(method: str, args, device, folder: Path, paths: list[Path], tmp: Path) -> Path:
    import torch

    from aidetect.config import DGS_PREPROCESS, UNIVFD_PREPROCESS
    from aidetect.model import Detector
    from aidetect.scan import Scanner

    config = DGS_PREPROCESS if method == "patches" else UNIVFD_PREPROCESS
    weights = tmp / f"detector-{method}"
    torch.manual_seed(0)
    Detector(backbone=args.backbone, pretrained=None,
             preprocess=config.to_dict()).save_pretrained(weights)

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
    return weights


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


def scan_at_precision(weights: Path, folder: Path, *, precision: str, batch_size: int,
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
            runs[precision] = scan_at_precision(weights, folder, precision=precision,
                                              batch_size=args.batch_size, workers=args.workers,
                                              threads=args.threads)
        other_batch = max(1, args.batch_size // 2)
        rebatched = None
        if "auto" in runs and args.images > other_batch:
            rebatched = scan_at_precision(weights, folder, precision="auto",
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
    parser.add_argument("--preprocess", default="patches,center_crop")
    parser.add_argument("--compare", type=int, default=16,
                        help="files scored on the CPU in fp32 for the score gap")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the model-only ceiling under torch.compile")
    parser.add_argument("--provenance", action="store_true",
                        help="also measure what reading provenance costs the scan")
    parser.add_argument("--precisions", default=None,
                        help="CPU: compare these precisions end to end, e.g. fp32,auto,int8")
    parser.add_argument("--threads", type=int, default=None, help="default: the scan's own")
    args = parser.parse_args()
    if args.precisions:
        compare_precisions(args)
        return

    import torch

    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images, width, height)
        paths = sorted(folder.iterdir())
        print(f"machine: {machine(device)}")
        print(f"model: {args.backbone} (random weights), {args.images} JPEGs {args.size}, "
              f"batch {args.batch_size}")
        for method in args.preprocess.split(","):
            weights = run_one(method.strip(), args, device, folder, paths, Path(tmp))
        if args.provenance:
            provenance_cost(args, folder, weights, paths)


if __name__ == "__main__":
    main()
