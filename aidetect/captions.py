"""Caption features from CLIP's frozen text tower, each distinct caption encoded once (§3).

Stage 2 of DGS-Net needs the text feature of every training image's caption. The text tower is
frozen, so the features are computed once up front and the tower is released: it need not stay
in memory while the image tower trains. Only the text tower is ever moved to the device, and with
random weights only the text tower is built at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from aidetect.towers import create_clip, resolve_model_cfg


@dataclass(frozen=True)
class CaptionFeatures:
    """Text features of distinct captions: `features[index[caption]]` is a (D,) tensor."""

    captions: tuple[str, ...]
    features: torch.Tensor  # (U, D), U distinct captions
    index: dict[str, int]

    def lookup(self, captions: Sequence[str]) -> torch.Tensor:
        """(B,) captions -> (B, D) features."""
        rows = torch.tensor([self.index[c] for c in captions], device=self.features.device)
        return self.features[rows]


class _ClipText(nn.Module):
    """A whole open_clip model reduced to `encode_text`: its image tower is dropped."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        clip.visual = None  # released before anything moves to the device
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def build_text_tower(
    backbone: str, pretrained: str | None, *, quick_gelu: bool | None = None
) -> nn.Module:
    """The frozen text encoder of `backbone`: (U, L) tokens -> (U, D), as CLIP's `encode_text`.

    A pretrained tag (or a `hf-hub:`/`local-dir:` checkpoint) loads through `create_clip`, i.e.
    open_clip's own loading with `require_pretrained`, and its image tower is dropped at once.
    Random weights build open_clip's text tower alone, the way `CLIP.__init__` builds it, so
    the image tower never takes memory.
    """
    if pretrained is None:
        try:
            model_cfg = resolve_model_cfg(backbone)
        except OSError:  # a missing local-dir or Hub config: create_clip words the error
            model_cfg = None
        text_cfg = (model_cfg or {}).get("text_cfg")
        # A Hugging Face text tower loads its own weights even for a "random" CLIP, and a class
        # token changes the pooling: both keep open_clip's whole-model path.
        if text_cfg and not text_cfg.get("hf_model_name") and not text_cfg.get("embed_cls"):
            from open_clip.model import _build_text_tower

            quick = bool(quick_gelu) or bool(model_cfg.get("quick_gelu", False))  # as create_model
            return _build_text_tower(int(model_cfg["embed_dim"]), text_cfg, quick, None).eval()
    return _ClipText(create_clip(backbone, pretrained, quick_gelu=quick_gelu)).eval()


@torch.no_grad()
def encode_captions(
    captions: Sequence[str],
    *,
    backbone: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    quick_gelu: bool | None = None,
) -> CaptionFeatures:
    """Encode each distinct caption once with the frozen text tower of `backbone`.

    Tokenised with CLIP's tokenizer, truncated to its context length (77).
    """
    import open_clip

    distinct = tuple(dict.fromkeys(captions))  # first-seen order, deterministic
    tower = build_text_tower(backbone, pretrained, quick_gelu=quick_gelu).to(device)
    tokenizer = open_clip.get_tokenizer(backbone)
    chunks = [
        tower(tokenizer(list(distinct[i : i + batch_size])).to(device))
        for i in range(0, len(distinct), batch_size)
    ]
    del tower  # the text tower is not needed again
    features = torch.cat(chunks).float() if chunks else torch.empty(0, 0)
    return CaptionFeatures(
        captions=distinct, features=features, index={c: i for i, c in enumerate(distinct)}
    )
