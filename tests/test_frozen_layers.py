"""The student's lean frozen layers: the same forward and input gradients as the plain
layers, keeping less for backward; `add_lora` sets them and `merge_lora` takes them out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from aidetect.config import LoraConfig
from aidetect.frozen_layers import FrozenLinear, LeanQuickGELU, frozen_linear, plain_mlp
from aidetect.lora import add_lora, lora_parameters, merge_lora


def _frozen_pair(autocast: bool):
    """frozen_linear and F.linear on the same frozen layer: (outputs, input gradients, what
    frozen_linear saved for backward)."""
    generator = torch.Generator().manual_seed(5)
    weight = nn.Parameter(torch.randn(12, 8, generator=generator), requires_grad=False)
    bias = nn.Parameter(torch.randn(12, generator=generator), requires_grad=False)
    inputs = torch.randn(3, 4, 8, generator=generator)
    outs, grads, saved = [], [], {frozen_linear: [], F.linear: []}
    for linear in (frozen_linear, F.linear):
        x = inputs.clone().requires_grad_(True)
        kept = saved[linear]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                torch.autograd.graph.saved_tensors_hooks(lambda t, k=kept: k.append(t) or t,
                                                         lambda t: t):
            out = linear(x, weight, bias)
        (grad,) = torch.autograd.grad((out.float() ** 2).sum(), [x])
        outs.append(out)
        grads.append(grad)
    return outs, grads, saved[frozen_linear], weight


def test_frozen_linear_is_f_linear_in_fp32_and_under_autocast():
    for autocast in (False, True):
        (out, ref_out), (grad, ref_grad), _, _ = _frozen_pair(autocast)
        assert out.dtype == ref_out.dtype and grad.dtype == ref_grad.dtype == torch.float32
        assert torch.equal(out, ref_out)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)


def test_frozen_linear_keeps_no_low_precision_copy_of_its_weight():
    """Under autocast F.linear keeps a bf16 copy of the weight until backward; this keeps the
    fp32 parameter itself."""
    _, _, kept, weight = _frozen_pair(autocast=True)
    assert [t.dtype for t in kept] == [torch.float32]
    assert kept[0].data_ptr() == weight.data_ptr()


def _quick_gelu_pair(dtype: torch.dtype):
    """LeanQuickGELU and open_clip's QuickGELU on the same input: (outputs, input gradients,
    the bytes each kept for backward)."""
    inputs = torch.randn(4, 9, 32, generator=torch.Generator().manual_seed(3)) * 3
    upstream = torch.randn(4, 9, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    outs, grads, kept = [], [], []
    for module in (LeanQuickGELU(), QuickGELU()):
        x = inputs.to(dtype).requires_grad_(True)
        storages = {}  # a tensor kept by two nodes counts once

        def keep(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            out = module(x)
        out.backward(upstream)
        outs.append(out)
        grads.append(x.grad)
        kept.append(sum(storages.values()))
    return outs, grads, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_quick_gelu_is_quick_gelu_and_keeps_half(dtype):
    (out, ref_out), (grad, ref_grad), (kept, ref_kept) = _quick_gelu_pair(dtype)
    assert out.dtype == ref_out.dtype == grad.dtype == dtype
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)  # autograd's terms, in order
    assert kept == ref_kept // 2 == 4 * 9 * 32 * out.element_size()  # x, not the sigmoid too


def test_lean_quick_gelu_without_a_gradient_is_quick_gelu():
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert torch.equal(LeanQuickGELU()(x), QuickGELU()(x))
    assert not LeanQuickGELU()(x).requires_grad


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_add_lora_makes_the_mlp_lean_and_merge_makes_it_plain(make_detector, quick_gelu):
    detector = make_detector(quick_gelu=quick_gelu)
    keys = set(detector.state_dict())
    block = detector.visual.transformer.resblocks[0]
    activation = type(block.mlp.gelu)
    assert (activation is QuickGELU) == quick_gelu
    add_lora(detector.visual, LoraConfig(rank=2))
    assert {type(m) for m in block.mlp if isinstance(m, nn.Linear)} == {FrozenLinear}
    assert type(block.mlp.gelu) is (LeanQuickGELU if quick_gelu else activation)
    assert detector.quick_gelu == quick_gelu
    merge_lora(detector.visual)
    assert {type(m) for m in block.mlp if isinstance(m, nn.Linear)} == {nn.Linear}
    assert type(block.mlp.gelu) is activation
    assert set(detector.state_dict()) == keys  # the same parameters under the same names


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_stage2_step_on_lean_layers_has_the_plain_layers_gradients(make_detector,
                                                                     checkpointing):
    """A whole DGS step under bf16 autocast, through LoRA, the lean MLP of a QuickGELU tower
    and (recomputed) checkpointed blocks: the trainable gradients of the plain layers."""
    import copy

    from aidetect.model import Teacher
    from aidetect.steps import choose_precision, set_checkpointing, stage2_loss

    precision = choose_precision(torch.device("cpu"), "bf16")
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(4, 3, 224, 224, generator=generator)
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    gradients = []
    for lean in (True, False):
        detector = make_detector(seed=1, quick_gelu=True)
        teacher = Teacher(detector, copy.deepcopy(detector.head))
        detector.add_lora(LoraConfig(rank=2))
        factors = torch.Generator().manual_seed(8)
        with torch.no_grad():  # B = 0 at the start would leave A without a gradient
            for param in lora_parameters(detector.visual)[1::2]:  # the B factors
                param.copy_(torch.randn(param.shape, generator=factors))
        if not lean:
            for block in detector.visual.transformer.resblocks:
                plain_mlp(block)
        assert uses_lean_layers(detector) == lean
        set_checkpointing(detector, checkpointing)
        detector.train()
        torch.manual_seed(0)  # the same dropout masks
        text_head = nn.Linear(detector.head.in_features, 1)
        text = torch.randn(4, detector.head.in_features, generator=torch.Generator())
        loss = stage2_loss(detector, teacher, images, labels, text, text_head=text_head,
                           align_weight=0.2, precision=precision)
        loss.total.backward()
        gradients.append([p.grad for p in lora_parameters(detector.visual)])
    for lean_grad, plain_grad in zip(*gradients, strict=True):
        assert lean_grad.abs().sum() > 0
        assert torch.equal(lean_grad, plain_grad)


def uses_lean_layers(detector) -> bool:
    return any(isinstance(m, (LeanQuickGELU, FrozenLinear)) for m in detector.visual.modules())
