"""The precision a detector scores in, on every device: one choice for `scan` and `eval`.

The image tower's weights are converted to the chosen type (not autocast: on CPUs autocast
converts the weights again at every call and runs slower than fp32; on GPUs converted weights
run ~1.4x faster than autocast). The input is cast to the tower's type, the features are cast
back to fp32, and the head and the sigmoid run in fp32, so the score's last steps lose nothing.

`auto` picks, per device:
- CUDA: bf16 from Ampere on (compute capability 8); fp16 before, where bf16 is only emulated.
- CPU: bf16 where the processor multiplies bf16 natively (AMX-BF16, AVX512-BF16, Arm BF16);
  fp32 elsewhere. int8 is never picked by `auto`: its score gap is larger, its scores depend
  on the other images of the batch, and on a CPU with bf16 units it is slower than bf16 (see
  the README and `benchmarks/scan_precision.py`).
- MPS (Apple GPUs): fp16, the half type every Apple GPU and macOS version supports (bf16 needs
  macOS 14 and is not native on every Apple GPU).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from aidetect.cpu import CpuFeatures, cpu_features
from aidetect.errors import UsageError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# Images per forward pass on the CPU, whatever --batch-size (`cpu_group_size`).
CPU_GROUP = 4
CPU_GROUP_BF16_NARROW = 8  # bf16 towers up to BF16_NARROW_WIDTH wide (ViT-B)
BF16_NARROW_WIDTH = 768


def choose_precision(device: torch.device | str, requested: str = "auto", *,
                     cpu: CpuFeatures | None = None,
                     cuda_capability: tuple[int, int] | None = None) -> str:
    """The concrete precision ("fp32", "bf16", "fp16" or "int8") for `requested` on `device`.

    Args:
        device: where the model runs (a device name such as "cpu" also does; only a CUDA
            device without `cuda_capability` imports torch).
        requested: one of PRECISIONS.
        cpu: the CPU's features (default: this machine's); tests pass fakes.
        cuda_capability: the GPU's compute capability (default: asked from torch).

    Raises:
        UsageError: an unknown precision, or one the device cannot run.
    """
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested}: use one of {', '.join(PRECISIONS)}")
    kind = device.split(":")[0] if isinstance(device, str) else device.type
    if requested == "int8" and kind != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU only, not on {kind}")
    if requested == "fp16" and kind == "cpu":
        raise UsageError("--precision fp16 is for GPUs; on the CPU use bf16, int8 or fp32")
    if requested != "auto":
        return requested
    if kind == "cuda":
        if cuda_capability is None:
            import torch

            cuda_capability = torch.cuda.get_device_capability(device)
        major, _ = cuda_capability
        # `is_bf16_supported` also says yes to the slow emulated bf16 of older GPUs.
        return "bf16" if major >= 8 else "fp16"
    if kind == "mps":
        return "fp16"
    return "bf16" if (cpu or cpu_features()).bf16 else "fp32"


def prepare_for_inference(detector, precision: str):
    """Convert `detector` in place for scoring at `precision` (from `choose_precision`).

    bf16/fp16: the image tower's weights in that type, the head kept in fp32. int8: dynamic
    quantization of the tower's Linear layers (int8 weights, activations quantized with one scale
    per batch, so an image's score depends slightly on its batch); the attention's fused q/k/v
    projection stays fp32. Merge LoRA before calling this.
    """
    if precision == "int8":
        detector.visual = _quantize_int8(detector.visual)
    elif precision in ("bf16", "fp16"):
        import torch

        detector.visual.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}")
    detector.head.float()
    return detector


def _quantize_int8(tower):
    """The tower with its Linear layers dynamically quantized to int8 (`torch.ao`).

    torch deprecates `torch.ao.quantization` for torchao's `quantize_`, but on this project's
    CPU (Xeon, torch 2.14.1) torchao 0.18's `Int8DynamicActivationInt8WeightConfig` was never
    faster than `torch.ao` and up to 1.6x slower than fp32, where `torch.ao`'s FBGEMM kernels ran
    1.3-1.8x faster than fp32 (ViT-B-16). So the deprecated call stays, its warnings silenced
    here only, until torchao's CPU kernels catch up (they quantize activations per token: no
    batch dependence, half the gap); a torch without it gets a usage error, not a crash.
    """
    import torch

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise UsageError(f"--precision int8: torch {torch.__version__} no longer has dynamic "
                         "quantization (torch.ao.quantization): use bf16 or fp32") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantize_per)",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
        return quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)


def cpu_group_size(detector) -> int:
    """How many images the CPU model is given at a time: always the same for a detector, so
    that its scores do not depend on --batch-size (see `aidetect.scan.Scanner._forward`).

    4, except 8 for a bf16 tower up to 768 wide: oneDNN's bf16 kernels run a ViT-B-16 1.39x
    faster on 8 images than on 4 (35.4 against 25.5 images/s on this project's AMX CPU), where
    fp32 (8.0 against 8.2), int8 (10.0 against 10.8) and a bf16 ViT-L-14 (5.7 against 5.6)
    gain nothing from 8 and would make a scan of one image wait for eight.
    """
    import torch

    width = getattr(getattr(detector.visual, "transformer", None), "width", None)
    if detector.tower_dtype == torch.bfloat16 and width is not None \
            and width <= BF16_NARROW_WIDTH:
        return CPU_GROUP_BF16_NARROW
    return CPU_GROUP


def forward_on_cpu(model, images):
    """`model(images)` in fp32, the model always given `cpu_group_size(model)` images (see
    `aidetect.scan.Scanner._forward`): what `scan` and `eval` run on the CPU."""
    import torch

    size = cpu_group_size(model)
    return torch.cat([model(group)[:count].float()
                      for group, count in _micro_batches(images, size)])


def _micro_batches(images, size: int):
    """(group of exactly `size` images, how many of them are real) over `images` in order; the
    last group is padded with copies of its last image."""
    for start in range(0, images.shape[0], size):
        group = images[start : start + size]
        count = group.shape[0]
        if count < size:
            import torch

            group = torch.cat([group, group[-1:].expand(size - count, *group.shape[1:])])
        yield group, count
