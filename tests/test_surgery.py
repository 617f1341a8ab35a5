"""dgs_loss against a direct computation of DGS-Net's equations (dgs-net.md section 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aidetect.surgery import HARM_EPS, dgs_loss, harmful_direction, project_off

B, D = 6, 8


def _heads(seed: int):
    torch.manual_seed(seed)
    return nn.Linear(D, 1), nn.Linear(D, 1), nn.Linear(D, 1)


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    weight = torch.randn(D, D, generator=g).requires_grad_(True)  # stands for the LoRA encoder
    teacher = torch.randn(B, D, generator=g)
    text = torch.randn(B, D, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.float32)
    return x, weight, teacher, text, labels


def _bce_input_grad(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor):
    # d mean-BCE(w.x + b, y) / d x = (sigmoid(z) - y) / B * w
    z = features @ head.weight.detach().T + head.bias.detach()  # (B, 1)
    return (torch.sigmoid(z).squeeze(1) - labels)[:, None] / len(labels) * head.weight.detach()


def test_gradients_equal_the_equations():
    student_head, teacher_head, text_head = _heads(0)
    x, weight, teacher, text, labels = _batch(1)
    student = x @ weight  # (B, D), upstream parameter `weight`

    out = dgs_loss(
        student=student, teacher=teacher, text=text, labels=labels,
        student_head=student_head, teacher_head=teacher_head, text_head=text_head,
        align_weight=0.2,
    )
    out.total.backward()

    f = (x @ weight).detach()
    help_dir = _bce_input_grad(teacher_head, teacher, labels).clamp(max=0)
    g_text = _bce_input_grad(text_head, text, labels)
    relu = g_text.clamp(min=0)
    harm = relu / (relu.norm(dim=1, keepdim=True) + HARM_EPS)
    grad_f = _bce_input_grad(student_head, f, labels) + 0.2 * help_dir / B
    grad_f = grad_f - (grad_f * harm).sum(1, keepdim=True) * harm
    torch.testing.assert_close(weight.grad, x.T @ grad_f, rtol=1e-5, atol=1e-6)

    # The heads' own gradients are plain BCE gradients (surgery acts on the features only).
    z = (f @ student_head.weight.detach().T + student_head.bias.detach()).squeeze(1)
    err = (torch.sigmoid(z) - labels) / B
    torch.testing.assert_close(student_head.weight.grad, (err[:, None] * f).sum(0, keepdim=True))
    torch.testing.assert_close(student_head.bias.grad, err.sum().reshape(1))
    zt = (text @ text_head.weight.detach().T + text_head.bias.detach()).squeeze(1)
    err_t = (torch.sigmoid(zt) - labels) / B
    torch.testing.assert_close(text_head.weight.grad, (err_t[:, None] * text).sum(0, keepdim=True))
    assert teacher_head.weight.grad is None and teacher_head.bias.grad is None

    # The loss parts are the equations' values.
    bce = nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(out.image, bce(z, labels))
    torch.testing.assert_close(out.text, bce(zt, labels))
    torch.testing.assert_close(out.align, (f * help_dir).sum(1).mean())
    torch.testing.assert_close(out.total.detach(), out.image + out.text + 0.2 * out.align)


def test_projection_removes_exactly_the_harmful_component():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(B, D, generator=g, requires_grad=True)
    direction = torch.randn(B, D, generator=g)
    harm = harmful_direction(direction)
    upstream = torch.randn(B, D, generator=g)
    project_off(features, harm).backward(upstream)
    # What is left has no component along harm (up to the eps in harm's norm) ...
    along = (features.grad * harm).sum(1)
    assert along.abs().max() < 1e-5
    # ... and everything orthogonal to harm passed through unchanged.
    unit = harm / harm.norm(dim=1, keepdim=True)
    ortho = upstream - (upstream * unit).sum(1, keepdim=True) * unit
    torch.testing.assert_close(features.grad - (features.grad * unit).sum(1, keepdim=True) * unit,
                               ortho, rtol=1e-5, atol=1e-5)
    assert (upstream * harm).sum(1).abs().min() > 1e-3  # the test did have something to remove


def test_harmful_direction_is_positive_part_normalised():
    grad = torch.tensor([[1.0, -2.0, 3.0], [-1.0, -1.0, -1.0]])
    harm = harmful_direction(grad)
    expected_row = torch.tensor([1.0, 0.0, 3.0]) / (10**0.5 + HARM_EPS)
    torch.testing.assert_close(harm[0], expected_row)
    assert torch.equal(harm[1], torch.zeros(3))  # no positive part: nothing to remove


def test_forward_is_identity_and_no_state_survives_between_calls():
    student_head, teacher_head, text_head = _heads(4)
    x, weight, teacher, text, labels = _batch(5)
    kwargs = dict(teacher=teacher, text=text, labels=labels, student_head=student_head,
                  teacher_head=teacher_head, text_head=text_head)
    features = x @ weight
    assert torch.equal(project_off(features, torch.ones(B, D)), features)

    dgs_loss(student=x @ weight, **kwargs).total.backward()
    first = weight.grad.clone()
    weight.grad = None
    # A second, independent call with another batch's text must not be affected by the first.
    dgs_loss(student=x @ weight, **kwargs).total.backward()
    torch.testing.assert_close(weight.grad, first)
    # A plain backward through the same features afterwards is not projected (no hook left).
    weight.grad = None
    (x @ weight).sum().backward()
    torch.testing.assert_close(weight.grad, x.T @ torch.ones(B, D))


@pytest.mark.parametrize("align_weight", [0.0, 1.0])
def test_align_weight_scales_the_alignment_term(align_weight):
    student_head, teacher_head, text_head = _heads(6)
    x, weight, teacher, text, labels = _batch(7)
    out = dgs_loss(student=x @ weight, teacher=teacher, text=text, labels=labels,
                   student_head=student_head, teacher_head=teacher_head, text_head=text_head,
                   align_weight=align_weight)
    torch.testing.assert_close(out.total.detach(), out.image + out.text + align_weight * out.align)


def _loss_and_grads(student_dtype=torch.float32, autocast: bool = False):
    student_head, teacher_head, text_head = _heads(0)
    x, weight, teacher, text, labels = _batch(1)
    student = (x @ weight).to(student_dtype)  # (B, D), as the encoder gives it
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = dgs_loss(
            student=student, teacher=teacher.to(student_dtype), text=text, labels=labels,
            student_head=student_head, teacher_head=teacher_head, text_head=text_head,
        )
    out.total.backward()
    grads = [weight.grad, *(p.grad for h in (student_head, text_head) for p in h.parameters())]
    return out, grads


def test_under_autocast_the_loss_is_computed_in_fp32():
    reference, ref_grads = _loss_and_grads()
    # fp32 features under bf16 autocast: the loss runs with autocast off, so it is the fp32
    # result exactly (tolerance 0).
    out, grads = _loss_and_grads(autocast=True)
    assert out.total.dtype == torch.float32 and out.image.dtype == torch.float32
    assert torch.equal(out.total, reference.total)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
    # bf16 features (what the autocast encoder gives): only their rounding differs, so the
    # loss and the gradients equal the fp32 ones within 1e-2 (bf16: 8 bits of mantissa).
    out, grads = _loss_and_grads(torch.bfloat16, autocast=True)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, reference.total, rtol=1e-2, atol=1e-2)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, ref, rtol=1e-2, atol=1e-2)
