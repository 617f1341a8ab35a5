"""LoRA on the q, k and v projections of every image-tower attention block (dgs-net.md §2).

open_clip 3.3's blocks call `nn.MultiheadAttention` positionally:
`attn(q_x, k_x, v_x, need_weights=False, attn_mask=mask)`. `LoRAAttention` replaces it with the
same call signature and the same parameter names (`in_proj_weight`, `in_proj_bias`, `out_proj`),
so state-dict keys of the base weights do not change, and adds the low-rank factors. Dropout acts
on the LoRA branch's input activations (not on the weights), in training only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from aidetect.config import LoraConfig
from aidetect.frozen_layers import compute_dtype, frozen_linear, lean_mlp, plain_mlp

_QKV = ("q", "k", "v")


def _dropout_scale(p: float) -> float:
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)  # as `native_dropout`: p = 1 drops everything


class _LoRAUpdate(torch.autograd.Function):
    """scaling * [B_n A_n dropout_n(x) for n in q, k, v], concatenated: (B, N, D) -> (B, N, 3D).

    Each projection has its own dropout mask, as three separate LoRA layers would. Plain
    autograd would keep, per block, three dropped copies of x and (on CPU) three float masks;
    this keeps x once and three bool masks, and recomputes the dropped inputs in backward.
    Forward values and masks are those of `F.dropout` (`native_dropout` is its CUDA kernel and
    draws the same Bernoulli mask as its CPU path); gradients differ from plain autograd only
    in the order in which the three branches are summed.
    """

    @staticmethod
    def forward(ctx, x, p: float, scaling: float, *factors):  # factors: A_q, B_q, A_k, ...
        # Under autocast, compute (and keep x) in autocast's dtype, as its F.linear would; the
        # gradients go back in the dtypes of x and of the (fp32) factors.
        device, dtype = x.device.type, compute_dtype(x)
        ctx.dtypes = (x.dtype, factors[0].dtype)
        x, factors = x.to(dtype), [f.to(dtype) for f in factors]
        masks, hidden, parts = [], [], []
        with torch.autocast(device, enabled=False):
            for a, b in zip(factors[0::2], factors[1::2], strict=True):
                dropped = x
                if p > 0.0:
                    dropped, mask = torch.native_dropout(x, p, True)
                    masks.append(mask)  # bool, a quarter of a float mask
                hidden.append(F.linear(dropped, a))  # (B, N, r)
                parts.append(F.linear(hidden[-1], b))  # (B, N, D)
        ctx.p, ctx.scaling = p, scaling
        ctx.save_for_backward(x, *factors, *hidden, *masks)
        return torch.cat(parts, dim=-1).mul_(scaling)

    @staticmethod
    def backward(ctx, grad):
        x, *saved = ctx.saved_tensors
        factors, hidden, masks = saved[:6], saved[6:9], saved[9:]
        width, scale = x.shape[-1], _dropout_scale(ctx.p)
        flat_x = x.reshape(-1, width)  # (BN, D)
        grad = (grad.to(x.dtype) * ctx.scaling).reshape(-1, 3 * width)  # (BN, 3D)
        grad_x, grad_factors = None, []
        for i, (a, b) in enumerate(zip(factors[0::2], factors[1::2], strict=True)):
            g = grad[:, i * width : (i + 1) * width]  # (BN, D)
            h = hidden[i].reshape(-1, a.shape[0])  # (BN, r)
            # mask * scale is exactly 0 or scale, so x * it equals dropout's x * mask * scale.
            noise = masks[i].reshape(-1, width).to(x.dtype).mul_(scale) if masks else None
            dropped = flat_x * noise if masks else flat_x
            grad_h = g @ b  # (BN, r)
            grad_factors += [grad_h.t() @ dropped, g.t() @ h]  # dA: (r, D), dB: (D, r)
            if ctx.needs_input_grad[0]:
                part = grad_h @ a  # (BN, D)
                if masks:
                    part = part.mul_(noise)
                grad_x = part if grad_x is None else grad_x.add_(part)
        x_dtype, factor_dtype = ctx.dtypes
        if grad_x is not None:
            grad_x = grad_x.view(x.shape).to(x_dtype)
        return grad_x, None, None, *(g.to(factor_dtype) for g in grad_factors)


class LoRAAttention(nn.Module):
    """Multi-head self-attention whose q, k, v projections carry a LoRA update."""

    def __init__(self, attn: nn.MultiheadAttention, *, config: LoraConfig) -> None:
        super().__init__()
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            raise ValueError("LoRA needs a fused q/k/v projection with a bias (open_clip's ViT)")
        dim = attn.embed_dim
        self.embed_dim = dim
        self.num_heads = attn.num_heads
        self.batch_first = attn.batch_first
        self.in_proj_weight = attn.in_proj_weight  # (3D, D), rows ordered q, k, v
        self.in_proj_bias = attn.in_proj_bias  # (3D,)
        self.out_proj = attn.out_proj
        self.rank = config.rank
        self.scaling = config.scaling
        self.enabled = True
        self.dropout = nn.Dropout(config.dropout)
        weight = self.in_proj_weight
        for name in _QKV:
            factory = {"dtype": weight.dtype, "device": weight.device}
            a = nn.Parameter(torch.empty(config.rank, dim, **factory))
            # A: kaiming-uniform (a = sqrt 5), B: zeros, so the update starts at exactly zero.
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b = nn.Parameter(torch.zeros(dim, config.rank, **factory))
            self.register_parameter(f"lora_{name}_A", a)  # (r, D)
            self.register_parameter(f"lora_{name}_B", b)  # (D, r)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A for q, k and v, stacked like `in_proj_weight`: (3D, D)."""
        return self.scaling * torch.cat(
            [getattr(self, f"lora_{n}_B") @ getattr(self, f"lora_{n}_A") for n in _QKV]
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("LoRAAttention does not return attention weights")
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LoRAAttention supports self-attention only (the CLIP image tower)")
        x = query if self.batch_first else query.transpose(0, 1)  # (B, N, D)
        qkv = frozen_linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        if self.enabled:
            p = self.dropout.p if self.training else 0.0
            factors = [getattr(self, f"lora_{n}_{ab}") for n in _QKV for ab in "AB"]
            qkv = qkv + _LoRAUpdate.apply(x, p, self.scaling, *factors)
        batch, tokens, _ = x.shape
        heads = self.num_heads
        qkv = qkv.view(batch, tokens, 3, heads, self.embed_dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D/H)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, D/H)
        out = frozen_linear(out.transpose(1, 2).reshape(batch, tokens, self.embed_dim),
                            self.out_proj.weight, self.out_proj.bias)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def merged(self) -> nn.MultiheadAttention:
        """A plain attention module with the LoRA update folded into its weights."""
        attn = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            batch_first=self.batch_first,
            device=self.in_proj_weight.device,
            dtype=self.in_proj_weight.dtype,
        )
        with torch.no_grad():
            attn.in_proj_weight.copy_(self.in_proj_weight + self.delta_weight())
            attn.in_proj_bias.copy_(self.in_proj_bias)
        attn.out_proj = self.out_proj
        attn.train(self.training)
        return attn


def _attention_parents(tower: nn.Module) -> Iterator[nn.Module]:
    """The residual blocks of the image tower whose `attn` LoRA adapts."""
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError("LoRA needs an open_clip VisionTransformer (transformer.resblocks)")
    yield from blocks


def add_lora(tower: nn.Module, config: LoraConfig) -> int:
    """Wrap the attention of every block of `tower` with LoRA; returns the number of blocks.

    Base weights are frozen; only the LoRA factors require gradients afterwards.
    """
    tower.requires_grad_(False)
    count = 0
    for block in _attention_parents(tower):
        if isinstance(block.attn, LoRAAttention):
            raise ValueError("this image tower already has LoRA; merge it first")
        block.attn = LoRAAttention(block.attn, config=config)
        lean_mlp(block)  # same parameters and keys; a leaner backward
        count += 1
    for param in lora_parameters(tower):
        param.requires_grad_(True)
    return count


def lora_modules(module: nn.Module) -> list[LoRAAttention]:
    return [m for m in module.modules() if isinstance(m, LoRAAttention)]


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [
        getattr(m, f"lora_{n}_{ab}") for m in lora_modules(module) for n in _QKV for ab in "AB"
    ]


@contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """Run `module` as its base model: the teacher pass of DGS-Net shares the student's weights."""
    layers = lora_modules(module)
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer, state in zip(layers, previous, strict=True):
            layer.enabled = state


def merge_lora(tower: nn.Module) -> int:
    """Fold every LoRA update of `tower` into its q/k/v weights; returns the blocks merged."""
    count = 0
    for block in _attention_parents(tower):
        if isinstance(block.attn, LoRAAttention):
            block.attn = block.attn.merged()
            count += 1
        plain_mlp(block)
    return count
