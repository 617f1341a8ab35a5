"""What the scan benchmarks share: the images they scan, the machine's name, the real command.

Imported by benchmarks/scan.py, scan_provenance.py, scan_precision.py and scan_cache.py (run as
`python benchmarks/X.py`, so this folder is on sys.path). Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

XMP_PACKET = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    b'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    b'xmp:CreatorTool="Adobe Lightroom 13.1" Iptc4xmpExt:DigitalSourceType='
    b'"http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"/></rdf:RDF></x:xmpmeta>'
    b'<?xpacket end="w"?>'
)


def scan_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the options every scan benchmark takes: the detector's backbone, how many
    images of what size, and the scan's --batch-size and --workers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", default="1024x768", help="the images' WIDTHxHEIGHT")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: the scan's own")
    return parser


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` JPEGs of smooth noise with some grain (so they compress like photos), with EXIF
    and an XMP packet as a camera or an editor writes them (so provenance has something to
    parse), in a new `folder`; returns their paths, sorted."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
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
    return sorted(folder.iterdir())


def parse_size(size: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` as (width, height)."""
    width, height = (int(v) for v in size.split("x"))
    return width, height


def machine(device) -> str:
    """The GPU (on CUDA), the architecture, the cores this process may use, torch's version."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = f"{platform.machine()}, {cores} cores, torch {torch.__version__}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {host}"
    return f"{host}, {torch.get_num_threads()} torch threads"


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


def save_detector(folder: Path, backbone: str, method: str | None = None) -> Path:
    """A detector with random weights (speed does not depend on them), saved to `folder`;
    `method` ("patches" or "center_crop") picks its preprocessing, None the default."""
    import torch

    from aidetect.config import DGS_PREPROCESS, UNIVFD_PREPROCESS
    from aidetect.model import Detector

    torch.manual_seed(0)
    if method is None:
        detector = Detector(backbone=backbone, pretrained=None)
    else:
        config = DGS_PREPROCESS if method == "patches" else UNIVFD_PREPROCESS
        detector = Detector(backbone=backbone, pretrained=None, preprocess=config.to_dict())
    detector.save_pretrained(folder)
    return folder


def scan_subprocess(folder: Path, weights: Path, *, device: str, batch_size: int,
                    workers: int | None, extra: tuple[str, ...] = ()) -> dict:
    """Run the real command (`python -m aidetect scan DIR --format jsonl`); time each result
    line as it arrives."""
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
