"""The student's frozen layers with a leaner backward than autograd's own.

In stage 2 only LoRA's factors learn, but the image tower's input gradient still flows back
through every frozen layer, and autograd keeps for that more than the gradient needs. Two
layers of each block's MLP (and the attention's projections, `aidetect.lora`) keep less here,
with the same forward and the same gradient formulas:

- `frozen_linear`: a frozen weight's layer under autocast keeps no bf16 copy of the weight.
- `LeanQuickGELU`: QuickGELU, x * sigmoid(1.702 x) (OpenAI CLIP's activation, so the paper's
  ViT-L/14), keeps x and not the sigmoid too.

`lean_mlp` sets them in a block (what `add_lora` does) and `plain_mlp` undoes it (`merge_lora`):
the parameters and state-dict keys stay the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

QUICK_GELU_SLOPE = 1.702


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would compute a linear layer in on `x`'s device (else `x`'s own)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _FrozenLinear(torch.autograd.Function):
    """`F.linear` for a frozen weight, keeping nothing but the weight itself for backward.

    Under autocast `F.linear` casts the fp32 weight to bf16 (or fp16) and keeps that copy until
    backward, for the input's gradient: 160 MiB for a ViT-B-16 tower in bf16 (its q/k/v, output
    and MLP weights; about 580 MiB for a ViT-L-14), alive through the whole student pass. This
    keeps the fp32 parameter (no copy) and casts it again in backward: the same products in
    the same dtypes, one more cast per layer and step. In fp32 it is `F.linear` unchanged.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        device, dtype = x.device.type, compute_dtype(x)
        ctx.dtypes = (x.dtype, dtype)
        ctx.save_for_backward(weight)
        with torch.autocast(device, enabled=False):
            return F.linear(x.to(dtype), weight.to(dtype),
                            None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        x_dtype, dtype = ctx.dtypes
        return (grad.to(dtype) @ weight.to(dtype)).to(x_dtype), None, None


def frozen_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through `_FrozenLinear` where only `x` needs a gradient."""
    if weight.requires_grad or (bias is not None and bias.requires_grad) \
            or not (torch.is_grad_enabled() and x.requires_grad):
        return F.linear(x, weight, bias)
    return _FrozenLinear.apply(x, weight, bias)


class FrozenLinear(nn.Linear):
    """An `nn.Linear` whose forward is `frozen_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(x, self.weight, self.bias)


class _QuickGELU(torch.autograd.Function):
    """x * sigmoid(1.702 x), keeping only x for backward.

    open_clip's `QuickGELU` leaves autograd two (B, N, 4D) tensors per block, x and the
    sigmoid: 1.4 GiB of a ViT-L-14 student's bf16 activations at batch 32. This keeps x and
    computes the sigmoid again in backward; the forward is the same operations, and the
    gradient autograd's, term for term: grad * s + sigmoid_backward(grad * x, s) * 1.702.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(QUICK_GELU_SLOPE * x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(QUICK_GELU_SLOPE * x)
        # In place where a temporary is its own last use: one (B, N, 4D) tensor fewer alive.
        term = torch.ops.aten.sigmoid_backward(grad * x, s).mul_(QUICK_GELU_SLOPE)
        return term.add_(grad * s)  # + commutes exactly: autograd's sum, bit for bit


class LeanQuickGELU(QuickGELU):
    """open_clip's `QuickGELU`, through `_QuickGELU` where its input needs a gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuickGELU.apply(x)
        return super().forward(x)


_LEAN = {nn.Linear: FrozenLinear, QuickGELU: LeanQuickGELU}


def lean_mlp(block: nn.Module) -> None:
    """Give a residual block's MLP the lean layers (in place; no parameter changes)."""
    _swap_mlp(block, _LEAN)


def plain_mlp(block: nn.Module) -> None:
    """Give a residual block's MLP back its plain layers."""
    _swap_mlp(block, {lean: plain for plain, lean in _LEAN.items()})


def _swap_mlp(block: nn.Module, classes: dict[type, type]) -> None:
    mlp = getattr(block, "mlp", None)
    for layer in [] if mlp is None else mlp.modules():
        if type(layer) in classes:  # exact types: a subclass of nn.Linear is someone else's
            layer.__class__ = classes[type(layer)]
