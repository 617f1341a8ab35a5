"""Stage-2 (DGS) step time and peak memory: aidetect's trainer against the published layout.

Every variant runs the same model (random weights), the same LoRA, batch, loss
(`aidetect.surgery.dgs_loss`) and optimiser (Adam over LoRA + image head + text head):

- aidetect (at `--precision auto`: bf16 autocast on CUDA from Ampere on and on CPUs with bf16
  units, fp32 on other CPUs), aidetect fp32 and aidetect with `--checkpointing`: one image
  tower. The teacher is the student's encoder with LoRA switched off (`aidetect.model.Teacher`),
  its pass first, under inference_mode; caption features are computed once per distinct caption
  before training, by the text tower alone, which is then released
  (`aidetect.steps.precompute_captions`, before the image tower is built, as `aidetect train`
  does). The step is `aidetect.steps.stage2_loss` with the trainer's precision and loss scaler.
- baseline, as the published code does it: the student is a whole CLIP (image + text tower)
  with LoRA (aidetect's, on q/k/v; the MLPs keep autograd's own layers, without
  `aidetect.frozen_layers`), the teacher a second whole frozen CLIP, and the captions are
  tokenised and encoded by the text tower at every step.

Each variant runs in its own subprocess. CPU peak memory is the process's peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which counts everything torch allocates;
tracemalloc would miss it), reported whole and above the footprint after imports. CUDA peak
memory is `torch.cuda.max_memory_allocated()` over model build and steps. Ratios are against
the baseline (fp32, as published) measured in the same run.

`--track-memory` (CPU) also counts the peak of live tensor bytes from the profiler's
allocation events: what `torch.cuda.max_memory_allocated` counts on a GPU, so a CPU can predict
the CUDA column. Against a GPU: with `--backbone ViT-L-14-quickgelu --batch-size 32 --steps 1
--track-memory` this project's CPU counts 15,977 MiB for the baseline, where an H200 measured
16,046 MiB (`--device cuda`, torch 2.11).

`--decode` also measures the data pipeline: images/s that one DataLoader worker decodes and
augments (the training dataset, 512x512 JPEGs), and how many workers the measured step rate
needs, against what `aidetect train` starts on this machine.

    python benchmarks/train_step.py                      # CPU, ViT-B-16, batch 8
    python benchmarks/train_step.py --device cuda        # ViT-L-14-quickgelu, batch 32
    python benchmarks/train_step.py --backbone ViT-L-14-quickgelu --batch-size 32 --steps 1 \
        --track-memory                                   # the CUDA memory, counted on a CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time

CAPTIONS = [f"a photo of a {c}" for c in ("car", "cat", "chair", "horse")]


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _load_average() -> str:
    """The 1-minute load average: other work on the machine inflates step times."""
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[0]
    except OSError:
        return "n/a"


VARIANTS = {  # name: (precision, activation checkpointing)
    "aidetect fp32": ("fp32", False),
    "aidetect": ("auto", False),
    "aidetect --checkpointing": ("auto", True),
    "aidetect bf16": ("bf16", False),  # on CPU: what autocast does to activation memory
}
DEFAULT_VARIANTS = ("baseline", "aidetect fp32", "aidetect", "aidetect --checkpointing")


def peak_allocated(profiler, device_type: str) -> int:
    """The peak of live tensor bytes on `device_type` over a profiled run (allocations minus
    frees, in time order): on a CPU, what `torch.cuda.max_memory_allocated` counts on a GPU."""
    events = [e for e in profiler.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).split(".")[-1].lower()
              == device_type]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def run_variant(variant: str, backbone: str, batch: int, steps: int, device_name: str,
                track_memory: bool = False) -> dict:
    import torch
    from torch import nn

    if track_memory:  # every allocation from the models' build on, as the profiler saw it
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            result = run_variant(variant, backbone, batch, steps, device_name)
        result["peak_tensor_mib"] = peak_allocated(profiler, device_name) / 2**20
        return result

    from aidetect.config import LoraConfig
    from aidetect.surgery import dgs_loss

    device = torch.device(device_name)
    torch.manual_seed(0)
    after_imports = _rss_kib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = (torch.arange(batch, device=device) % 2).float()
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    lora = LoraConfig()

    scaler = None
    precision_name = "fp32"
    if variant in VARIANTS:
        from aidetect.lora import lora_parameters
        from aidetect.model import Detector, Teacher
        from aidetect.steps import (
            choose_precision,
            precompute_captions,
            set_checkpointing,
            stage2_loss,
        )

        precision = choose_precision(device, VARIANTS[variant][0])
        precision_name, scaler = precision.name, precision.grad_scaler()
        features = precompute_captions(CAPTIONS, backbone=backbone, pretrained=None,
                                       quick_gelu=None, device=device, seed=0)
        detector = Detector(backbone=backbone, pretrained=None).to(device)
        probe_head = copy.deepcopy(detector.head)
        teacher = Teacher(detector, probe_head)
        detector.add_lora(lora)
        set_checkpointing(detector, VARIANTS[variant][1])
        text_head = nn.Linear(features.features.shape[1], 1).to(device)
        params = [*lora_parameters(detector.visual), *detector.head.parameters(),
                  *text_head.parameters()]
        detector.train()

        def loss_fn():
            text = features.lookup(captions)
            return stage2_loss(detector, teacher, images, labels, text, text_head=text_head,
                               align_weight=0.2, precision=precision)
    else:
        import open_clip

        from aidetect.frozen_layers import plain_mlp
        from aidetect.lora import add_lora, lora_parameters
        from aidetect.towers import create_clip

        student = create_clip(backbone, None).to(device)
        teacher = copy.deepcopy(student).requires_grad_(False).eval()  # the second CLIP
        add_lora(student.visual, lora)
        for block in student.visual.transformer.resblocks:
            plain_mlp(block)  # the published MLP: autograd's own linear layers and QuickGELU
        student.transformer.requires_grad_(False)
        tokenizer = open_clip.get_tokenizer(backbone)
        dim = student.visual.output_dim
        image_head, text_head = nn.Linear(dim, 1).to(device), nn.Linear(dim, 1).to(device)
        probe_head = nn.Linear(dim, 1).to(device).requires_grad_(False)
        params = [*lora_parameters(student.visual), *image_head.parameters(),
                  *text_head.parameters()]
        student.train()

        def loss_fn():
            with torch.no_grad():  # the frozen text tower, every step
                text = student.encode_text(tokenizer(captions).to(device))
            return dgs_loss(
                student=student.encode_image(images),
                teacher=teacher.encode_image(images),
                text=text.float(),
                labels=labels,
                student_head=image_head,
                teacher_head=probe_head,
                text_head=text_head,
                align_weight=0.2,
            )

    optimizer = torch.optim.Adam(params, lr=1e-4)
    times = []
    for step in range(steps + 1):  # the first step warms up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = loss_fn()
        if scaler is None:
            loss.total.backward()
            optimizer.step()
        else:  # as the trainer steps (a disabled scaler is the optimiser's own step)
            scaler.scale(loss.total).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        del loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "variant": variant,
        "precision": precision_name,
        "step_s": sorted(times)[len(times) // 2],
        "fastest_step_s": min(times),  # least disturbed by other load on a shared machine
        "peak_rss_mib": peak_rss / 1024,
        "peak_rss_above_imports_mib": (peak_rss - after_imports) / 1024,
        "trainable": sum(p.numel() for p in params),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def measure_decode(images: int = 48, size: int = 512) -> float:
    """Images/s one process decodes and augments for training (the work of one worker)."""
    import tempfile
    from pathlib import Path

    from scan_common import make_images

    from aidetect.config import DGS_PREPROCESS, TrainConfig
    from aidetect.dataset import Augment, ImageDataset

    cfg = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", images, size, size)  # photo-like JPEGs
        dataset = ImageDataset(paths, [i % 2 for i in range(images)], preprocess=DGS_PREPROCESS,
                               train=True, augment=Augment(cfg.blur_prob, cfg.blur_sigma,
                                                           cfg.jpeg_prob, cfg.jpeg_quality))
        dataset[0]  # warm up
        start = time.perf_counter()
        for index in range(images):
            dataset[index]
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default=None,
                        help="default: ViT-B-16 on CPU, ViT-L-14-quickgelu on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 CPU, 32 CUDA")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated, baseline first (default: all but "
                        "'aidetect bf16', which shows autocast's memory on CPU)")
    parser.add_argument("--decode", action="store_true",
                        help="also measure decoding images/s per worker against the step rate")
    parser.add_argument("--track-memory", action="store_true",
                        help="also the peak of live tensor memory, from the profiler's "
                        "allocation events: on a CPU, what the CUDA run's peak allocated "
                        "would be (step times are then the profiler's, not to be compared)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args()
    if args.track_memory and args.device != "cpu":
        sys.exit("--track-memory counts on the CPU; on CUDA the peak CUDA column measures it")
    backbone = args.backbone or ("ViT-B-16" if args.device == "cpu" else "ViT-L-14-quickgelu")
    batch = args.batch_size or (8 if args.device == "cpu" else 32)
    if args.variant:
        print(json.dumps(run_variant(args.variant, backbone, batch, args.steps, args.device,
                                     args.track_memory)))
        return

    import torch

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print(f"stage-2 step: {backbone} (random weights), batch {batch}, {args.steps} timed steps, "
          f"device {args.device}")
    load_before = _load_average()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if variants[0] != "baseline" or any(v not in VARIANTS for v in variants[1:]):
        sys.exit(f"--variants: baseline first, then any of {', '.join(VARIANTS)}")
    results = []
    for variant in variants:
        command = [sys.executable, __file__, "--variant", variant, "--device", args.device,
                   "--backbone", backbone, "--batch-size", str(batch), "--steps", str(args.steps),
                   *(["--track-memory"] if args.track_memory else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = results[0]
    columns = [("median step s", "step_s", "{:.3f}"), ("fastest s", "fastest_step_s", "{:.3f}"),
               ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
               ("RSS above imports", "peak_rss_above_imports_mib", "{:.0f}")]
    if args.device == "cuda":
        columns.append(("peak CUDA MiB", "peak_cuda_mib", "{:.0f}"))
    if args.track_memory:
        columns.append(("peak tensors MiB", "peak_tensor_mib", "{:.0f}"))
    print(f"{'variant':26} {'precision':>9}" + "".join(f" {name:>17} {'ratio':>5}"
                                                    for name, _, _ in columns))
    for result in results:
        cells = "".join(f" {fmt.format(result[key]):>17} {result[key] / base[key]:>5.2f}"
                        for _, key, fmt in columns)
        print(f"{result['variant']:26} {result['precision']:>9}{cells}")
    print(f"trainable parameters: {base['trainable']} (all)")
    print(f"load average before/after: {load_before} / {_load_average()}")
    if args.device == "cuda":
        print("targets (aidetect / baseline): stage-2 step time <= 0.35, peak CUDA memory <= 0.5")
    else:
        print("target (aidetect / baseline): whole-process peak RSS <= 0.6")
    if args.decode:
        from aidetect.devices import train_workers

        per_worker = measure_decode()
        fastest = min(r["step_s"] for r in results[1:]) if len(results) > 1 else base["step_s"]
        needed = batch / fastest
        workers = train_workers(torch.device(args.device))
        print(f"decoding (512x512 JPEG, training augmentation): {per_worker:.1f} images/s per "
              f"worker; the fastest variant takes {needed:.1f} images/s, so "
              f"{needed / per_worker:.1f} workers; `aidetect train` starts {workers} here")


if __name__ == "__main__":
    main()
