"""`aidetect scan` end to end against the bare forward pass of the same model, in one run.

- bare forward: the detector on already-preprocessed tensors, batch after batch, under
  inference_mode: the ceiling a scan can reach.
- scan: the real command (`python -m aidetect scan DIR --format jsonl`) in a subprocess, its
  stdout read line by line as results arrive: the start-up time to the first result, and the
  steady-state rate (results after the first two batches, over the time they took).
- where the time goes, per image: decoding (aidetect.data.open_image), preprocessing (patch
  selection or centre crop), and the model's share of a batch.
- provenance (aidetect.provenance: C2PA, XMP, EXIF, generator parameters): the scan with and
  without it (`--no-provenance`), and its cost per image read alone; target: at most 5% of the
  CPU scan's time.
- on CUDA: the largest score difference between the bf16 (fp16 before Ampere) autocast the scan
  uses and fp32.

The detector has random weights (speed does not depend on them); the images are 1024x768
JPEGs of smooth noise with some texture, so they compress like photographs, with EXIF and an
XMP packet as a camera or an editor writes them (so that provenance has something to parse).

    python benchmarks/scan.py                                   # CPU, ViT-B-16
    python benchmarks/scan.py --device cuda --backbone ViT-L-14-quickgelu --images 512
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
                    workers: int | None, extra: tuple[str, ...] = ()) -> dict:
    """Run the real command; time each result line as it arrives."""
    command = [sys.executable, "-m", "aidetect", "scan", str(folder), "--weights", str(weights),
               "--device", device, "--batch-size", str(batch_size), "--format", "jsonl", "-q",
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


def provenance_ms(paths: list[Path]) -> float:
    """Milliseconds per image of `read_provenance` alone (after one warm-up read)."""
    from aidetect.provenance import read_provenance

    read_provenance(paths[0])
    start = time.perf_counter()
    for path in paths:
        read_provenance(path)
    return 1000 * (time.perf_counter() - start) / len(paths)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: the scan's own")
    parser.add_argument("--size", default="1024x768")
    args = parser.parse_args()

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
        # With and without provenance, interleaved (the first with-run is `scan` above), the
        # best total of each: the least disturbed by other load on the machine.
        totals = {"with": [scan["total_s"]], "without": []}
        for mode in ("without", "with", "without"):
            run = scan_subprocess(folder, weights, device=args.device,
                                  batch_size=args.batch_size, workers=args.workers,
                                  extra=("--no-provenance",) if mode == "without" else ())
            totals[mode].append(run["total_s"])
        provenance = provenance_ms(paths)

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
        with_s, without_s = min(totals["with"]), min(totals["without"])
        print(f"scan time with provenance {with_s:.1f} s, --no-provenance {without_s:.1f} s "
              f"(best of 2 each, interleaved): ratio {with_s / without_s:.3f}  (target <= 1.05)")
        share = provenance * scan["steady_images_per_s"] / 1000
        print(f"provenance alone: {provenance:.2f} ms per image = {100 * share:.1f}% of the "
              f"scan's steady-state time per image  (target <= 5%)")
        if device.type == "cuda":
            gap = precision_gap(detector, tensors, device, args.batch_size)
            print(f"max |score autocast - score fp32|: {gap:.2e}  (must be < 1e-2)")


if __name__ == "__main__":
    main()
