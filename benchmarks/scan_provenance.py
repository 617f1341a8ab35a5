"""What reading provenance costs `aidetect scan`, in one run.

Provenance (aidetect.provenance: C2PA, XMP, EXIF, generator parameters) is read for every file
a scan scores. This prints:
- the real command (`python -m aidetect scan DIR --format jsonl`) with provenance and with
  `--no-provenance`, interleaved (with, without, with, without), the best total of each (the
  least disturbed by other load on the machine) and their ratio (target <= 1.05);
- `read_provenance` alone, in milliseconds per image, and as a share of the scan's
  steady-state time per image (target <= 5%).

The detector has random weights (speed does not depend on them); the images are JPEGs of
smooth noise with EXIF and an XMP packet as a camera or an editor writes them
(scan_common.make_images), so provenance has something to parse.

    python benchmarks/scan_provenance.py                       # CPU, ViT-B-16, 96 images
    python benchmarks/scan_provenance.py --images 48 --batch-size 8
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
)


def provenance_ms(paths: list[Path]) -> float:
    """Milliseconds per image of `read_provenance` alone (after one warm-up read)."""
    from aidetect.provenance import read_provenance

    read_provenance(paths[0])
    start = time.perf_counter()
    for path in paths:
        read_provenance(path)
    return 1000 * (time.perf_counter() - start) / len(paths)


def provenance_cost(args, folder: Path, weights: Path, paths: list[Path]) -> None:
    """The scan with and without provenance, interleaved; the best total of each, and
    provenance's cost per image alone."""
    totals: dict[str, list[float]] = {"with": [], "without": []}
    steady = []
    for mode in ("with", "without", "with", "without"):
        run = scan_subprocess(folder, weights, device=args.device, batch_size=args.batch_size,
                              workers=args.workers,
                              extra=("--no-provenance",) if mode == "without" else ())
        totals[mode].append(run["total_s"])
        steady.append(run["steady_images_per_s"])
    with_s, without_s = min(totals["with"]), min(totals["without"])
    print(f"scan time with provenance {with_s:.1f} s, --no-provenance {without_s:.1f} s "
          f"(best of 2 each, interleaved): ratio {with_s / without_s:.3f}  (target <= 1.05)")
    alone_ms = provenance_ms(paths)
    share = alone_ms * max(steady) / 1000
    print(f"provenance alone: {alone_ms:.2f} ms per image = {100 * share:.1f}% of "
          "the scan's steady-state time per image  (target <= 5%)")


def main() -> None:
    parser = scan_arguments(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preprocess", default="patches", choices=("patches", "center_crop"))
    args = parser.parse_args()

    import torch

    width, height = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        paths = make_images(folder, args.images, width, height)
        weights = save_detector(Path(tmp) / "detector", args.backbone, args.preprocess)
        print(f"machine: {machine(torch.device(args.device))}")
        print(f"model: {args.backbone} (random weights, {args.preprocess}), {args.images} JPEGs "
              f"{args.size}, batch {args.batch_size}")
        provenance_cost(args, folder, weights, paths)


if __name__ == "__main__":
    main()
