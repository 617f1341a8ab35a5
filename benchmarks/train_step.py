"""Stage-2 (DGS) step time and peak memory: aidetect's trainer against the published layout.

Both variants run the same model (random weights), the same LoRA, batch, loss
(`aidetect.surgery.dgs_loss`) and optimiser (Adam over LoRA + image head + text head):

- aidetect: one image tower. The teacher is the student's encoder with LoRA switched off
  (`aidetect.model.Teacher`), its pass under no_grad; caption features are computed once per
  distinct caption before training, by the text tower alone, which is then released
  (`aidetect.steps.precompute_captions`, before the image tower is built, as `aidetect train`
  does). The step is `aidetect.steps.stage2_loss`, the trainer's own.
- baseline, as the published code does it: the student is a whole CLIP (image + text tower)
  with LoRA, the teacher a second whole frozen CLIP, and the captions are tokenised and encoded
  by the text tower at every step.

Each variant runs in its own subprocess. CPU peak memory is the process's peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which counts everything torch allocates;
tracemalloc would miss it), reported whole and above the footprint after imports. CUDA peak
memory is `torch.cuda.max_memory_allocated()` over model build and steps.

    python benchmarks/train_step.py                      # CPU, ViT-B-16, batch 4
    python benchmarks/train_step.py --device cuda        # ViT-L-14-quickgelu, batch 32
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


def run_variant(variant: str, backbone: str, batch: int, steps: int, device_name: str) -> dict:
    import torch
    from torch import nn

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

    if variant == "aidetect":
        from aidetect.lora import lora_parameters
        from aidetect.model import Detector, Teacher
        from aidetect.steps import precompute_captions, stage2_loss

        features = precompute_captions(CAPTIONS, backbone=backbone, pretrained=None,
                                       quick_gelu=None, device=device, seed=0)
        detector = Detector(backbone=backbone, pretrained=None).to(device)
        probe_head = copy.deepcopy(detector.head)
        teacher = Teacher(detector, probe_head)
        detector.add_lora(lora)
        text_head = nn.Linear(features.features.shape[1], 1).to(device)
        params = [*lora_parameters(detector.visual), *detector.head.parameters(),
                  *text_head.parameters()]
        detector.train()

        def loss_fn():
            text = features.lookup(captions)
            return stage2_loss(detector, teacher, images, labels, text, text_head=text_head,
                               align_weight=0.2)
    else:
        import open_clip

        from aidetect.lora import add_lora, lora_parameters
        from aidetect.model import create_clip

        student = create_clip(backbone, None).to(device)
        teacher = copy.deepcopy(student).requires_grad_(False).eval()  # the second CLIP
        add_lora(student.visual, lora)
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
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "variant": variant,
        "step_s": sorted(times)[len(times) // 2],
        "fastest_step_s": min(times),  # least disturbed by other load on a shared machine
        "peak_rss_mib": peak_rss / 1024,
        "peak_rss_above_imports_mib": (peak_rss - after_imports) / 1024,
        "trainable": sum(p.numel() for p in params),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default=None,
                        help="default: ViT-B-16 on CPU, ViT-L-14-quickgelu on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 CPU, 32 CUDA")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args()
    backbone = args.backbone or ("ViT-B-16" if args.device == "cpu" else "ViT-L-14-quickgelu")
    batch = args.batch_size or (4 if args.device == "cpu" else 32)
    if args.variant:
        print(json.dumps(run_variant(args.variant, backbone, batch, args.steps, args.device)))
        return

    import torch

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    print(f"stage-2 step: {backbone} (random weights), batch {batch}, {args.steps} timed steps, "
          f"device {args.device}")
    load_before = _load_average()
    results = {}
    for variant in ("baseline", "aidetect"):
        command = [sys.executable, __file__, "--variant", variant, "--device", args.device,
                   "--backbone", backbone, "--batch-size", str(batch), "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{variant} failed:\n{done.stderr}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    base, ours = results["baseline"], results["aidetect"]
    rows = [("median step time (s)", "step_s", "{:.3f}"),
            ("fastest step time (s)", "fastest_step_s", "{:.3f}"),
            ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
            ("peak RSS above imports (MiB)", "peak_rss_above_imports_mib", "{:.0f}")]
    if args.device == "cuda":
        rows.append(("peak CUDA allocated (MiB)", "peak_cuda_mib", "{:.0f}"))
    print(f"{'':32} {'baseline':>10} {'aidetect':>10} {'ratio':>7}")
    for label, key, fmt in rows:
        print(f"{label:32} {fmt.format(base[key]):>10} {fmt.format(ours[key]):>10} "
              f"{ours[key] / base[key]:>7.2f}")
    print(f"trainable parameters: {ours['trainable']} (both)")
    print(f"load average before/after: {load_before} / {_load_average()}")
    print("targets: memory ratio <= 0.6, step time ratio <= 0.8")


if __name__ == "__main__":
    main()
