"""DGS-Net's loss with gradient surgery (dgs-net.md section 3).

`dgs_loss` returns a `DGSLoss` whose `.total` is backpropagated once. Two pure tensor operations
carry the method: `harmful_direction` (from the text loss) and `project_off` (an autograd
function that removes that direction from every gradient reaching the student features). No hook
is registered, so nothing survives from one call to the next.

Under mixed precision the features arrive in bf16 or fp16; the loss is computed on fp32 copies
with autocast off (the projection divides by a norm, and the heads and BCEs are fp32), and the
gradient flows back to the encoder in the encoder's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HARM_EPS = 1e-6  # the published normalisation's epsilon


@dataclass(frozen=True)
class DGSLoss:
    """The scalar to backpropagate and its parts (detached copies of the parts, for logging)."""

    total: torch.Tensor
    image: torch.Tensor  # L_img: BCE of the image head on the student features
    text: torch.Tensor  # L_text: BCE of the text head on caption features
    align: torch.Tensor  # L_align: mean <f, help>, before its weight


def harmful_direction(text_grad: torch.Tensor) -> torch.Tensor:
    """relu(g_t) / (||relu(g_t)||_2 + eps), row by row: (B, D) -> (B, D)."""
    positive = text_grad.clamp(min=0)
    return positive / (positive.norm(dim=1, keepdim=True) + HARM_EPS)


class _ProjectOff(torch.autograd.Function):
    """Identity forward; backward g <- g - <g, h> h, row by row."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(direction)
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (direction,) = ctx.saved_tensors
        component = (grad * direction).sum(dim=1, keepdim=True)  # (B, 1)
        return grad - component * direction, None


def project_off(features: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """`features` unchanged, but every gradient flowing back through it loses `direction`."""
    return _ProjectOff.apply(features, direction.detach())


def _bce(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(features).squeeze(-1)  # (B,)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _input_grad(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d BCE(head(x), y) / d x at x = features, as a constant; no gradient reaches `head`."""
    x = features.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_bce(head, x, labels), x)
    return grad


def dgs_loss(
    *,
    student: torch.Tensor,
    teacher: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    student_head: nn.Module,
    teacher_head: nn.Module,
    text_head: nn.Module,
    align_weight: float = 0.2,
) -> DGSLoss:
    """DGS-Net's total loss for one batch.

    Args:
        student: image features with LoRA on, in the autograd graph: (B, D).
        teacher: image features of the frozen encoder (LoRA off): (B, D), treated as constant.
        text: caption features from the frozen text tower: (B, D), treated as constant.
        labels: 1 for AI-generated, 0 for real: (B,).
        student_head: the image head (trained).
        teacher_head: the frozen probe head of stage 1 (receives no gradient).
        text_head: the text head (trained by L_text only).
        align_weight: the weight of L_align (0.2 in the paper).
    Features in any float dtype; the loss is fp32, with autocast off.
    """
    with torch.autocast(student.device.type, enabled=False):
        return _dgs_loss_fp32(
            student=student.float(), teacher=teacher.float(), text=text.float(),
            labels=labels.float(), student_head=student_head, teacher_head=teacher_head,
            text_head=text_head, align_weight=align_weight,
        )


def _dgs_loss_fp32(*, student, teacher, text, labels, student_head, teacher_head, text_head,
                   align_weight: float) -> DGSLoss:
    help_dir = _input_grad(teacher_head, teacher, labels).clamp(max=0)  # min(g_T, 0): (B, D)

    text_in = text.detach().requires_grad_(True)
    loss_text = _bce(text_head, text_in, labels)
    (text_grad,) = torch.autograd.grad(loss_text, text_in, retain_graph=True)  # g_t: (B, D)
    harm = harmful_direction(text_grad)

    features = project_off(student, harm)
    loss_image = _bce(student_head, features, labels)
    loss_align = (features * help_dir).sum(dim=1).mean()
    total = loss_image + loss_text + align_weight * loss_align
    return DGSLoss(
        total=total,
        image=loss_image.detach(),
        text=loss_text.detach(),
        align=loss_align.detach(),
    )
