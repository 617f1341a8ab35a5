"""The loss of one training step of each stage, and the precision the steps run in.

Mixed precision (`--precision`). The frozen tower and LoRA run under autocast (bf16 on GPUs
from Ampere on and on CPUs with bf16 units, fp16 with loss scaling on older GPUs; fp32 on other
CPUs unless asked), while what needs fp32 stays fp32: the trainable parameters (LoRA factors,
heads) and so the optimiser state, the heads, the BCEs and DGS-Net's gradient surgery
(`aidetect.surgery` runs with autocast off on fp32 copies of the features).

Memory. The teacher's pass runs first, under `inference_mode`: nothing of it is kept but its
(B, D) features, and its temporaries are gone before the student's activations are held for
backward. The student's frozen layers keep less for backward than autograd would
(`aidetect.frozen_layers`): under autocast no low-precision copy of their weights, and
QuickGELU (OpenAI CLIP's) its input but not its sigmoid. `--checkpointing` keeps only each
block's input and recomputes the rest in backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aidetect.cpu import CpuFeatures
from aidetect.errors import UsageError
from aidetect.precision import choose_precision as scan_precision

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """What autocast runs the forward passes in; None is plain fp32."""

    name: str  # "fp32", "bf16" or "fp16": what the model card and metrics.jsonl say
    dtype: torch.dtype | None
    device_type: str  # "cpu" or "cuda"

    @property
    def scales_loss(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.dtype == torch.float16

    def describe(self) -> str:
        """As the model card and the run's log say it."""
        if self.dtype is None:
            return "fp32"
        scaled = ", loss scaling" if self.scales_loss else ""
        return (f"{self.name} autocast{scaled} (LoRA, heads, optimiser state and the DGS-Net "
                "loss in fp32)")

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16; for the others a disabled one (its `step` is the optimiser's)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_loss)


def choose_precision(device: torch.device, precision: str = "auto", *,
                     cpu: CpuFeatures | None = None) -> Precision:
    """`--precision` -> a `Precision`.

    auto: what `scan` picks on the device (`aidetect.precision.choose_precision`; `cpu` fakes
    the CPU's units in tests): bf16 on CUDA GPUs of compute capability 8 (Ampere) and later,
    fp16 with a loss scaler on older ones (their bf16 is emulated, and slow), bf16 on CPUs that
    multiply it natively (a ViT-B-16 stage-2 step ran 2.1x faster than fp32 there, in 0.7x the
    memory), fp32 on other CPUs; and fp32 on Apple GPUs, where training was never run. Forced
    bf16 or fp16 on a CPU without those units works, slowly.
    """
    name = precision.strip().lower()
    if name not in PRECISIONS:
        raise UsageError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "fp32" if device.type == "mps" else scan_precision(device, "auto", cpu=cpu)
    return Precision(name=name, dtype=_DTYPES[name], device_type=device.type)


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def precompute_captions(texts: Sequence[str], *, backbone: str, pretrained: str | None,
                        quick_gelu: bool | None, device: torch.device, seed: int):
    """Caption features for stage 2, each distinct caption encoded once; the CLIP is released.

    Seeded in a forked RNG: a random text tower (tests) is the same in every run and on every
    rank, and encoding draws nothing from the stream that LoRA dropout uses.
    """
    from aidetect.captions import encode_captions

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = encode_captions(texts, backbone=backbone, pretrained=pretrained,
                                   device=device, quick_gelu=quick_gelu)
    return features


def stage1_loss(detector, images: torch.Tensor, labels: torch.Tensor,
                precision: Precision | None = None) -> torch.Tensor:
    """The linear probe's BCE on frozen features; the head and the BCE in fp32."""
    with torch.no_grad(), (precision.autocast() if precision else _no_autocast()):
        features = detector.encode_image(images)  # (B, D), frozen tower
    return bce(detector.head(features.float()).squeeze(-1), labels)


def stage2_loss(detector, teacher, images: torch.Tensor, labels: torch.Tensor,
                text: torch.Tensor, *, text_head: nn.Module, align_weight: float,
                precision: Precision | None = None):
    """One DGS forward pass: teacher (LoRA off, nothing kept), student (LoRA on, graph), loss.

    Args:
        detector: the student, with LoRA, in train mode.
        teacher: `Teacher(detector, probe_head)`: the same encoder with LoRA switched off.
        images: (B, 3, S, S); labels: (B,), 1 = AI-generated.
        text: (B, D) caption features, precomputed by the frozen text tower.
        precision: the autocast of the two encoder passes (None: fp32).
    Returns:
        The `DGSLoss` (computed in fp32); backpropagate its `.total`.
    """
    from aidetect.surgery import dgs_loss

    autocast = precision.autocast if precision else _no_autocast
    with torch.inference_mode(), autocast():
        features = teacher.features(images)  # (B, D), constant
    features = features.clone()  # an inference tensor cannot meet autograd; (B, D) is cheap
    with autocast():
        student = detector.encode_image(images)  # (B, D), in the graph
    return dgs_loss(
        student=student,
        teacher=features,
        text=text,
        labels=labels,
        student_head=detector.head,
        teacher_head=teacher.head,
        text_head=text_head,
        align_weight=align_weight,
    )


def _no_autocast() -> AbstractContextManager:
    from contextlib import nullcontext

    return nullcontext()


def set_checkpointing(detector, enabled: bool) -> None:
    """Activation checkpointing of the image tower's blocks (open_clip's own switch): each
    block keeps its input and recomputes the rest in backward, with the same dropout masks
    (torch.utils.checkpoint restores the RNG state for the recomputation)."""
    detector.visual.set_grad_checkpointing(enabled)
