"""Defaults in one place: frozen dataclasses carrying the paper's values (dgs-net.md).

The CLI reads its defaults from these; a detector saves its own config as JSON beside its
weights, so that what was trained is what gets scanned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# A saved detector: its files, and the layout version this aidetect reads up to.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
# Pillow's own warning threshold (about 89.5 megapixels): above it a scan refuses an image.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the detector's input tensor (dgs-net.md sections 4 and 7)."""

    # "patches": DGS-Net's spectral-entropy patch selection; "center_crop": UnivFD's.
    method: Literal["patches", "center_crop"] = "patches"
    size: int = 224  # CLIP ViT-L/14 input resolution
    patch_size: int = 32  # 7 x 7 tiles of 32 px fill 224 px
    n_low: int = 24  # lowest-entropy patches kept
    n_high: int = 25  # highest-entropy patches kept (24 + 25 = 49 = 7 x 7)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # DGS-Net normalises with ImageNet stats
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.method not in ("patches", "center_crop"):
            raise ValueError(f"unknown preprocessing method {self.method!r}")
        if self.method == "patches":
            grid, rest = divmod(self.size, self.patch_size)
            if rest or grid * grid != self.n_low + self.n_high:
                raise ValueError(
                    f"{self.n_low} + {self.n_high} patches of {self.patch_size} px "
                    f"do not tile a {self.size} px square"
                )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


DGS_PREPROCESS = PreprocessConfig()
UNIVFD_PREPROCESS = PreprocessConfig(method="center_crop", mean=CLIP_MEAN, std=CLIP_STD)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on q, k, v of every image-tower block (dgs-net.md section 2, after CLIP-LoRA)."""

    rank: int = 6
    alpha: float = 6.0
    dropout: float = 0.8  # on the LoRA branch's input, in training only

    @property
    def scaling(self) -> float:
        # alpha / sqrt(r), not alpha / r: CLIP-LoRA's convention, which DGS-Net keeps.
        return self.alpha / self.rank**0.5


@dataclass(frozen=True)
class TrainConfig:
    """The DGS-Net recipe (dgs-net.md section 3)."""

    probe_epochs: int = 3  # stage 1: linear probe on frozen CLIP
    epochs: int = 1  # stage 2: DGS
    batch_size: int = 32
    lr: float = 1e-4  # Adam, both stages
    betas: tuple[float, float] = (0.9, 0.999)
    align_weight: float = 0.2  # weight of L_align in the total loss
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0
    # Optional augmentations of the published code, off by default.
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)


# The detector at inference: sigmoid(logit) > threshold means AI-generated.
DEFAULT_THRESHOLD = 0.5
# The paper's backbone. The -quickgelu name matters: OpenAI CLIP was trained with QuickGELU.
DEFAULT_BACKBONE = "ViT-L-14-quickgelu"
DEFAULT_PRETRAINED = "openai"
