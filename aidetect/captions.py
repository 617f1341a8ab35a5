"""Caption features from CLIP's frozen text tower, each distinct caption encoded once (§3).

Stage 2 of DGS-Net needs the text feature of every training image's caption. The text tower is
frozen, so the features are computed once up front and the tower is released: it need not stay
in memory while the image tower trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aidetect.model import create_clip


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
    clip = create_clip(backbone, pretrained, quick_gelu=quick_gelu).to(device).eval()
    tokenizer = open_clip.get_tokenizer(backbone)
    chunks = [
        clip.encode_text(tokenizer(list(distinct[i : i + batch_size])).to(device))
        for i in range(0, len(distinct), batch_size)
    ]
    del clip  # the text tower is not needed again
    features = torch.cat(chunks).float() if chunks else torch.empty(0, 0)
    return CaptionFeatures(
        captions=distinct, features=features, index={c: i for i, c in enumerate(distinct)}
    )
