"""LoRA on q, k, v of every image-tower block: init, scaling, switch-off, merge, dropout."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from aidetect.config import LoraConfig
from aidetect.lora import LoRAAttention, lora_modules, lora_parameters


def _randomise_lora(detector, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(detector.visual):
            for n in "qkv":
                getattr(layer, f"lora_{n}_B").copy_(
                    torch.randn(getattr(layer, f"lora_{n}_B").shape, generator=g) * 0.5
                )


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(9))


def test_lora_wraps_qkv_of_every_block_and_freezes_the_base(make_detector):
    detector = make_detector(lora_rank=6)
    blocks = detector.visual.transformer.resblocks
    assert all(isinstance(block.attn, LoRAAttention) for block in blocks)
    assert len(lora_modules(detector)) == len(blocks) == 2
    trainable = {name for name, p in detector.visual.named_parameters() if p.requires_grad}
    assert trainable == {
        f"transformer.resblocks.{i}.attn.lora_{n}_{ab}"
        for i in range(2) for n in "qkv" for ab in "AB"
    }
    # Base weights keep open_clip's key names, so base checkpoints still load.
    keys = set(detector.state_dict())
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "visual.transformer.resblocks.0.attn.out_proj.weight" in keys


def test_init_scaling_and_zero_start(make_detector):
    config = LoraConfig(rank=6, alpha=6.0, dropout=0.8)
    assert math.isclose(config.scaling, 6 / math.sqrt(6))  # alpha / sqrt(r), not alpha / r
    base = make_detector(seed=1)
    adapted = make_detector(seed=1, lora_rank=6)
    layer = lora_modules(adapted)[0]
    width = layer.embed_dim
    assert layer.lora_q_A.shape == (6, width) and layer.lora_q_B.shape == (width, 6)
    assert all(torch.count_nonzero(getattr(layer, f"lora_{n}_B")) == 0 for n in "qkv")
    bound = 1 / math.sqrt(width)  # kaiming_uniform(a=sqrt 5) on fan_in = width
    assert layer.lora_q_A.abs().max() <= bound and layer.lora_q_A.abs().max() > 0.5 * bound
    assert not torch.equal(layer.lora_q_A, layer.lora_k_A)  # independent draws
    with torch.no_grad():
        adapted.train()  # B = 0: even with dropout active the update is exactly zero
        torch.testing.assert_close(adapted(_images()), base(_images()))


def test_delta_is_scaling_times_b_at_a(make_detector):
    detector = make_detector(lora_rank=4, lora_alpha=8.0)
    _randomise_lora(detector)
    layer = lora_modules(detector)[0]
    scaling = 8.0 / 2.0
    expected_q = scaling * layer.lora_q_B @ layer.lora_q_A
    torch.testing.assert_close(layer.delta_weight()[: layer.embed_dim], expected_q)
    # The adapted attention equals a plain attention with W + delta (eval: no dropout).
    plain = layer.merged().eval()
    x = torch.randn(2, 5, layer.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x, x, x)[0], plain(x, x, x, need_weights=False)[0],
                                   rtol=1e-5, atol=1e-5)


def test_merge_equals_unmerged_in_eval(make_detector):
    detector = make_detector(lora_rank=6)
    _randomise_lora(detector)
    with torch.no_grad():
        before = detector(_images())
        detector.merge_lora()
        after = detector(_images())
    assert not detector.has_lora
    blocks = detector.visual.transformer.resblocks
    assert all(isinstance(block.attn, nn.MultiheadAttention) for block in blocks)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in detector.visual.parameters())


def test_switch_off_gives_the_base_model(make_detector):
    base = make_detector(seed=2)
    adapted = make_detector(seed=2, lora_rank=6)
    _randomise_lora(adapted)
    with torch.no_grad():
        assert not torch.allclose(adapted(_images()), base(_images()))
        with adapted.lora_disabled():
            torch.testing.assert_close(adapted(_images()), base(_images()))
        assert not torch.allclose(adapted(_images()), base(_images()))  # back on afterwards


def test_dropout_acts_on_the_lora_branch_in_training_only(make_detector):
    base = make_detector(seed=3)
    adapted = make_detector(seed=3, lora_rank=6, lora_dropout=0.8)
    _randomise_lora(adapted)
    with torch.no_grad():
        adapted.eval()
        torch.testing.assert_close(adapted(_images()), adapted(_images()))
        adapted.train()
        torch.manual_seed(0)
        first = adapted(_images())
        second = adapted(_images())
        assert not torch.allclose(first, second)  # a fresh dropout mask each call
        with adapted.lora_disabled():  # base path has no dropout
            base.train()
            torch.testing.assert_close(adapted(_images()), base(_images()))


def test_only_lora_parameters_get_gradients(make_detector):
    detector = make_detector(lora_rank=6).train()
    detector.head.requires_grad_(False)
    detector(_images()).sum().backward()
    params = lora_parameters(detector)
    assert len(params) == 2 * 3 * 2
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in detector.visual.named_parameters() if "lora_" not in n)


def _reference_attention(layer: LoRAAttention, x: torch.Tensor) -> torch.Tensor:
    """The adapted attention by plain autograd through `F.dropout`, for comparison."""
    p = layer.dropout.p
    updates = [
        F.linear(F.linear(F.dropout(x, p, layer.training), getattr(layer, f"lora_{n}_A")),
                 getattr(layer, f"lora_{n}_B"))
        for n in "qkv"
    ]
    qkv = F.linear(x, layer.in_proj_weight, layer.in_proj_bias) + layer.scaling * torch.cat(
        updates, dim=-1)
    batch, tokens, width = x.shape
    heads = layer.num_heads
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
    return layer.out_proj(out)


def test_lora_backward_equals_autograd_through_dropout(make_detector):
    detector = make_detector(lora_rank=6, lora_dropout=0.8)
    _randomise_lora(detector)
    layer = lora_modules(detector)[0].train()
    params = lora_parameters(layer)
    inputs = torch.randn(2, 5, layer.embed_dim, generator=torch.Generator().manual_seed(4))
    results = []
    for forward in (lambda x: layer(x, x, x)[0], lambda x: _reference_attention(layer, x)):
        x = inputs.clone().requires_grad_(True)
        torch.manual_seed(0)  # the same dropout masks for both
        out = forward(x)
        grads = torch.autograd.grad((out * out).sum(), [x, *params])
        results.append((out, grads))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.equal(out, ref_out)  # same masks, same forward values
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref)  # the branches are summed in another order


def test_lora_keeps_one_copy_of_its_input_and_bool_masks_for_backward(make_detector):
    layer = lora_modules(make_detector(lora_rank=6, lora_dropout=0.8))[0].train()
    x = torch.randn(2, 5, layer.embed_dim, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x, x, x)
    like_x = {t.untyped_storage().data_ptr(): t.dtype for t in saved if t.shape == x.shape}
    # Plain autograd through three dropouts keeps six float tensors the size of x (on CPU).
    assert Counter(like_x.values()) == Counter({torch.bool: 3, torch.float32: 1})


def test_under_bf16_autocast_lora_runs_in_bf16_and_its_gradients_are_fp32(make_detector):
    # Mixed-precision training: the factors (trainable) stay fp32 and get fp32 gradients, the
    # branch computes in autocast's dtype like the frozen projection next to it, and the
    # result stays close to the same step in fp32 (without dropout: bf16 draws its masks
    # from the same stream, but not the same masks).
    detector = make_detector(lora_rank=6, lora_dropout=0.0)
    _randomise_lora(detector)
    layer = lora_modules(detector)[0].train()
    params = lora_parameters(layer)
    inputs = torch.randn(2, 5, layer.embed_dim, generator=torch.Generator().manual_seed(4))
    results = []
    for autocast in (False, True):
        x = inputs.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(x, x, x)[0]
        grads = torch.autograd.grad((out.float() ** 2).sum(), [x, *params])
        results.append((out, grads))
    (ref_out, ref_grads), (out, grads) = results
    assert out.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in params)
    assert all(g.dtype == torch.float32 for g in grads)  # x's and the factors'
    torch.testing.assert_close(out.float(), ref_out, rtol=5e-2, atol=5e-2)
    for grad, ref in zip(grads, ref_grads, strict=True):
        scale = ref.abs().max()
        assert (grad - ref).abs().max() <= 5e-2 * scale  # bf16 keeps 8 bits of mantissa
