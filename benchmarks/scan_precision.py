"""The CPU scan end to end at each precision, in one run.

The scan runs through the Scanner with its default decoding processes and threads, as
`aidetect scan` runs it, once per precision (--precisions: fp32, auto, int8 by default), on the
same images. For each it prints images/s, the ratio to fp32, and its largest score and logit
difference from fp32, also at a trained detector's scale (see `precision_gaps`); then what
`auto` chose, and how far `auto`'s logits move when the batch size is halved. The machine is
named with its CPU model and the features that decide `auto` (AMX-BF16, AVX512-BF16, ...).

The detector has random weights (speed does not depend on them); the images are JPEGs of smooth
noise with some texture, so they compress like photos (scan_common.make_images).

`--repeats N` scans N times per precision, interleaved, and takes the best images/s of each (the
least disturbed by other work on a shared machine; every run is listed, and every run must give
the same scores).

OpenMP's threads spin briefly before they sleep, as `aidetect scan` sets it (`aidetect.openmp`);
`--default-openmp` keeps OpenMP's default spin, to measure what that choice is worth.

    python benchmarks/scan_precision.py --precisions fp32,auto,int8 --images 48 --batch-size 8
    python benchmarks/scan_precision.py --precisions fp32,auto --backbone ViT-L-14-quickgelu \\
        --images 16 --batch-size 4
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

from scan_common import cpu_name, make_images, parse_size, save_detector, scan_arguments

TRAINED_LOGIT = 10.0  # |logit| a trained detector reaches on confident images (score 0.99995)


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


def openmp_settings() -> str:
    """The OpenMP waiting settings in effect, e.g. "GOMP_SPINCOUNT=30000" or "default"."""
    from aidetect.openmp import USER_SETTINGS

    return ", ".join(f"{name}={os.environ[name]}" for name in USER_SETTINGS
                     if name in os.environ) or "default"


def compare_precisions(args) -> None:
    """Scan the same images at each precision on the CPU, in one run, and print the figures."""
    import torch

    from aidetect.cpu import cpu_features, physical_cores
    from aidetect.devices import default_workers

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    width, height = parse_size(args.size)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, weights = Path(tmp) / "images", Path(tmp) / "detector"
        make_images(folder, args.images, width, height)
        save_detector(weights, args.backbone)
        rates: dict[str, list[float]] = {p: [] for p in precisions}
        for _ in range(args.repeats):  # interleaved, so that a slow spell hits every precision
            for precision in precisions:
                run = scan_at_precision(weights, folder, precision=precision,
                                        batch_size=args.batch_size, workers=args.workers,
                                        threads=args.threads)
                if precision in runs and not torch.equal(run["logits"], runs[precision]["logits"]):
                    raise RuntimeError(f"{precision}: another run gave other scores")
                runs.setdefault(precision, run)
                rates[precision].append(run["images_per_s"])
        for precision, run in runs.items():
            run["images_per_s"] = max(rates[precision])  # the least disturbed run
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
          f"--batch-size {args.batch_size} (the CPU model takes groups of 4, 8 for a bf16 "
          f"ViT-B, whatever it is), {workers} decoding worker(s), "
          f"{torch.get_num_threads()} model thread(s), "
          f"OpenMP: {openmp_settings()}")
    reference = runs.get("fp32")
    print(f"{'precision':<16} {'images/s':>9} {'x fp32':>7} {'score gap':>10} "
          f"{'logit gap':>10} {'trained: logit gap':>19} {'score at 0.5':>13}  every run")
    for requested, run in runs.items():
        name = f"{requested} ({run['precision']})" if requested == "auto" else requested
        line = f"{name:<16} {run['images_per_s']:9.2f}"
        if reference is not None:
            gaps = precision_gaps(run["logits"], reference["logits"])
            line += (f" {run['images_per_s'] / reference['images_per_s']:7.2f} "
                     f"{gaps['score']:10.2e} {gaps['logit']:10.2e} "
                     f"{gaps['trained_logit']:19.2e} {gaps['trained_at_threshold']:13.2e}")
        line += "  " + " ".join(f"{rate:.2f}" for rate in rates[requested])
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
    parser = scan_arguments(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: the scan's own")
    parser.add_argument("--precisions", default="fp32,auto,int8",
                        help="comma-separated precisions to compare, e.g. fp32,auto,int8")
    parser.add_argument("--repeats", type=int, default=1,
                        help="scans per precision, interleaved; images/s is the best of them "
                        "(the least disturbed on a shared machine), every run is listed")
    parser.add_argument("--default-openmp", action="store_true",
                        help="leave OpenMP's default spin (aidetect scan shortens it; see "
                        "aidetect/openmp.py)")
    args = parser.parse_args()
    if not args.default_openmp:
        from aidetect.openmp import shorten_spin

        shorten_spin()  # as `aidetect scan` does, before torch is imported
    compare_precisions(args)


if __name__ == "__main__":
    main()
