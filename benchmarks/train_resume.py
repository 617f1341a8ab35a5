"""How closely a resumed `aidetect train` run follows an uninterrupted one, on this device.

Three runs of the same job (a random-weight backbone, generated JPEGs, `--lora-dropout` as
the paper's): A and B uninterrupted; C killed with SIGKILL once it has taken a few steps past
a checkpoint, then continued with `--resume`. The figures are per-step loss differences from
metrics.jsonl over the steps C ran again after resuming, and the largest difference of the
final weights:

- B against A: the device's own run-to-run noise (0 on the CPU; GPU kernels that use atomics
  are not bit-deterministic);
- C against A: what a resume adds. On the CPU both are 0 (resume is bit-exact); on CUDA the
  README states what this prints, a resumed run matching an uninterrupted one as closely as
  two uninterrupted runs match each other.

    python benchmarks/train_resume.py --device cuda
    python benchmarks/train_resume.py --device cpu --backbone ViT-B-32 --images 24
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_data(root: Path, images: int, side: int) -> Path:
    """root/0_real and root/1_fake, `images` JPEGs each: smooth noise, the fakes smoother."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, cell in (("0_real", 8), ("1_fake", 32)):
        (root / folder).mkdir(parents=True)
        for i in range(images):
            coarse = rng.integers(0, 255, (side // cell + 1, side // cell + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
            image.save(root / folder / f"{i:04d}.jpg", quality=90)
    return root


def train_command(args, data: Path, out: Path, *, resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "aidetect", "train", "--data", str(data), "--out", str(out),
               "--backbone", args.backbone, "--pretrained", "none", "--probe-epochs", "1",
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--save-every", str(args.save_every), "--device", args.device, "--quiet"]
    return command + (["--resume"] if resume else [])


def stage2_losses(out: Path) -> dict[int, float]:
    """global step -> loss of every stage-2 step in the run's metrics.jsonl."""
    losses = {}
    with (out / "train" / "metrics.jsonl").open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("stage") == 2 and "loss" in record:
                losses[record["global_step"]] = record["loss"]
    return losses


def run_killed_then_resumed(args, data: Path, out: Path) -> int:
    """Run C: SIGKILL after `save_every + 2` stage-2 steps, then --resume. The global step it
    resumed from (the last checkpoint's)."""
    process = subprocess.Popen(train_command(args, data, out))
    metrics = out / "train" / "metrics.jsonl"
    while process.poll() is None:
        if metrics.exists() and len(stage2_losses(out)) >= args.save_every + 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        raise SystemExit(f"run C ended (exit {process.returncode}) before it could be killed: "
                         "use more --images or a smaller --save-every")
    import torch

    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True,
                            map_location="cpu")
    resumed_from = int(checkpoint.get("global_step", -1))
    subprocess.run(train_command(args, data, out, resume=True), check=True)
    return resumed_from


def largest_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=192, help="per class")
    parser.add_argument("--side", type=int, default=256, help="the images' side in px")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root / "data", args.images, args.side)
        for name in ("a", "b"):
            subprocess.run(train_command(args, data, root / name), check=True)
        resumed_from = run_killed_then_resumed(args, data, root / "c")
        a, b, c = (stage2_losses(root / name) for name in ("a", "b", "c"))
        again = [step for step in sorted(a) if step > resumed_from]
        noise = max(abs(b[s] - a[s]) for s in again)
        resumed = max(abs(c[s] - a[s]) for s in again)
        import torch

        where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                 else f"cpu ({torch.get_num_threads()} threads)")
        print(f"device: {where}, torch {torch.__version__}; {args.backbone} (random weights), "
              f"{2 * args.images} JPEGs {args.side}px, batch {args.batch_size}")
        print(f"run C killed and resumed from global step {resumed_from}; compared over the "
              f"{len(again)} stage-2 steps after it (losses {min(a[s] for s in again):.4f} to "
              f"{max(a[s] for s in again):.4f})")
        print(f"largest loss difference, B - A (run-to-run): {noise:.3e}; C - A (resumed): "
              f"{resumed:.3e}")
        print(f"largest final-weight difference, B - A: "
              f"{largest_weight_difference(root / 'a', root / 'b'):.3e}; C - A: "
              f"{largest_weight_difference(root / 'a', root / 'c'):.3e}")


if __name__ == "__main__":
    main()
