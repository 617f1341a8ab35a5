"""The detector: an open_clip image tower, optional LoRA, and a one-logit head (dgs-net.md §2).

`Detector` is an `nn.Module` and a `PyTorchModelHubMixin`: `save_pretrained` writes a folder
with `config.json` and `model.safetensors`, `from_pretrained` reads one (local or Hub), strictly
and without printing. `Teacher` is DGS-Net's frozen stage-1 model: the student's own encoder with
LoRA switched off, plus a frozen probe head, so no second copy of CLIP is held.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from aidetect import __version__
from aidetect.atomic import default_file_mode
from aidetect.config import (
    CONFIG_NAME,
    DEFAULT_BACKBONE,
    DEFAULT_PRETRAINED,
    DEFAULT_THRESHOLD,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    LoraConfig,
    PreprocessConfig,
)
from aidetect.detector_files import load_safetensors, load_state
from aidetect.errors import WeightsError
from aidetect.lora import add_lora, lora_disabled, lora_modules, merge_lora
from aidetect.preprocess import build_transform
from aidetect.towers import (
    build_visual,
    create_clip,
    has_schema,
    resolve_model_cfg,
    uses_quick_gelu,
)


class Detector(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="aidetect",
    tags=["ai-generated-image-detection", "dgs-net", "clip"],
    repo_url="https://github.com/aidetect/aidetect",
):
    """CLIP image tower (+ LoRA) and a linear head; one logit per image, > 0 means AI-generated.

    Args:
        backbone: an open_clip model name (built-in, `hf-hub:owner/name` or `local-dir:PATH`).
        pretrained: an open_clip pretrained tag (built-in names), any non-empty value to load the
            weights stored with a `hf-hub:`/`local-dir:` name, or None for random weights.
        lora_rank: 0 for no LoRA; otherwise LoRA of this rank on q, k, v of every block.
        lora_alpha: LoRA alpha (scaling = alpha / sqrt(rank)).
        lora_dropout: dropout on the LoRA branch's input, in training only.
        quick_gelu: force QuickGELU on or off; None follows the pretrained tag.
        preprocess: a `PreprocessConfig` as a dict; None means DGS-Net's patch selection.
        threshold: the probability above which an image is judged AI-generated.
        base_pretrained: where the image tower's weights came from originally (provenance, and
            the text tower to use for captions); defaults to `pretrained`.
        format_version: the saved-detector layout version.
        model_cfg: open_clip's architecture config (`embed_dim`, `vision_cfg`, `quick_gelu`);
            when given, the image tower is built from it alone (`pretrained` must be None) and
            `backbone` is only a label. Saved detectors embed it, so they load offline anywhere.
    """

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        lora_rank: int = 0,
        lora_alpha: float = 6.0,
        lora_dropout: float = 0.8,
        quick_gelu: bool | None = None,
        preprocess: dict[str, Any] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        base_pretrained: str | None = None,
        format_version: int = FORMAT_VERSION,
        model_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if format_version > FORMAT_VERSION:
            raise WeightsError(
                f"this detector was saved by a newer aidetect (format {format_version}; this "
                f"aidetect {__version__} reads up to {FORMAT_VERSION}): upgrade aidetect"
            )
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if model_cfg is not None:
            if pretrained is not None:
                raise ValueError("model_cfg builds an image tower without weights: pass "
                                 "pretrained=None and load a state dict")
            self.visual = build_visual(model_cfg, quick_gelu=quick_gelu)
            model_cfg = copy.deepcopy(model_cfg)
        elif pretrained is None and not has_schema(backbone) and (
            registered := resolve_model_cfg(backbone)
        ) is not None:
            # Random weights: the image tower alone, never the text tower it would drop. The
            # same weights as open_clip's whole CLIP under the same seed (its visual is built,
            # and initialised, first).
            self.visual = build_visual(registered, quick_gelu=quick_gelu)
            model_cfg = registered
        else:
            clip = create_clip(backbone, pretrained, quick_gelu=quick_gelu)
            self.visual = clip.visual  # the text tower is dropped: a detector scans images only
            del clip
            model_cfg = resolve_model_cfg(backbone)
        self.backbone = backbone
        self.base_pretrained = base_pretrained if base_pretrained is not None else pretrained
        self.quick_gelu = uses_quick_gelu(self.visual)
        if model_cfg is not None:
            model_cfg["quick_gelu"] = self.quick_gelu  # what was built, whatever the name said
        self.model_cfg = model_cfg
        self.embed_dim = int(self.visual.output_dim)
        self.preprocess_config = (
            PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
        )
        self.threshold = float(threshold)
        self.lora_config = LoraConfig(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
        self.head = nn.Linear(self.embed_dim, 1)
        if lora_rank > 0:
            add_lora(self.visual, self.lora_config)  # freezes the base weights

    # --- inference ---------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, D) projected CLS features, not normalised."""
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B,) logits; sigmoid > threshold = AI-generated.

        The images are cast to the tower's type (bf16/fp16 after `aidetect.precision`
        converted it) and the features back to the head's (fp32), so the head never rounds.
        """
        features = self.encode_image(images.to(self.tower_dtype))  # (B, D)
        return self.head(features.to(self.head.weight.dtype)).squeeze(-1)

    @property
    def tower_dtype(self) -> torch.dtype:
        """The floating type of the image tower's weights (its first parameter's)."""
        return next(self.visual.parameters()).dtype

    def transform(self, *, train: bool = False):
        """This detector's preprocessing: PIL RGB image -> (3, S, S) tensor."""
        return build_transform(self.preprocess_config, train=train)

    # --- LoRA --------------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        return bool(lora_modules(self.visual))

    def add_lora(self, config: LoraConfig | None = None) -> None:
        """Add fresh LoRA (zero update) on top of the current image-tower weights."""
        self.lora_config = config or LoraConfig()
        add_lora(self.visual, self.lora_config)

    def merge_lora(self) -> None:
        """Fold LoRA into the q/k/v weights: same outputs, plain attention, faster inference."""
        merge_lora(self.visual)
        self.visual.requires_grad_(False)

    @contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """The base model (LoRA off): DGS-Net's teacher pass."""
        with lora_disabled(self.visual):
            yield

    # --- saving and loading ------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this detector from its saved state dict."""
        lora = self.lora_config if self.has_lora else LoraConfig(rank=0)
        return {
            "aidetect_version": __version__,
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "pretrained": None,  # weights come from model.safetensors, never from a download
            "base_pretrained": self.base_pretrained,
            "quick_gelu": self.quick_gelu,
            "lora_rank": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "preprocess": self.preprocess_config.to_dict(),
            "threshold": self.threshold,
            # The architecture itself, so that loading needs neither the backbone's registry
            # entry nor its files (`hf-hub:` / `local-dir:` names): see `build_visual`.
            "model_cfg": self.model_cfg,
        }

    def save_pretrained(self, save_directory: str | Path, *, licences: list | None = None,
                        **kwargs: Any) -> str | None:
        """Write `config.json`, `model.safetensors` and aidetect's model card, each atomically.

        Args:
            save_directory: the detector folder.
            licences: what the weights were built from (`aidetect.licences.Licence`s), recorded
                in the config and named in the card; by default the base weights' licence.
            **kwargs: the mixin's; `model_card_kwargs={"card_text": ...}` writes that card.
        """
        from aidetect.licences import LICENSES_KEY, clip_licence

        if licences is None:
            base = clip_licence(self.backbone, self.base_pretrained)
            licences = [base] if base else []
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            if kwargs.get("config") is None:  # push_to_hub passes config=None explicitly
                kwargs["config"] = {**self.config,
                                    LICENSES_KEY: [licence.to_dict() for licence in licences]}
            kwargs["model_card_kwargs"] = {"licences": licences,
                                           **(kwargs.get("model_card_kwargs") or {})}
            result = super().save_pretrained(staging, **kwargs)
            mode = default_file_mode()  # the library writes some files private (0600)
            for item in staging.iterdir():
                item.chmod(mode)
                os.replace(item, target / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result

    def generate_model_card(self, *args: Any, **kwargs: Any) -> _VerbatimCard:
        """aidetect's card (`aidetect.card.render_detector_card`), not the mixin's generic one;
        or `card_text` kept byte for byte (`ModelCard` would re-serialise it with a metadata
        block)."""
        from aidetect.card import render_detector_card
        from aidetect.licences import clip_licence

        card_text = kwargs.get("card_text")
        if card_text is not None:
            return _VerbatimCard(card_text)
        licences = kwargs.get("licences")
        if licences is None:
            base = clip_licence(self.backbone, self.base_pretrained)
            licences = [base] if base else []
        return _VerbatimCard(render_detector_card(self.config, licences))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> Detector:
        # Replaces the mixin's loader, which prints to stdout, loads non-strictly by default and
        # falls back to pickles: a detector loads from safetensors only, every key accounted for.
        from huggingface_hub import hf_hub_download

        from aidetect.saved_config import check_saved_config

        check_saved_config(model_kwargs, f"{model_id}: {CONFIG_NAME}")
        model_kwargs.pop("aidetect_version", None)
        model_kwargs["pretrained"] = None  # the state dict holds every weight
        if os.path.isdir(model_id):
            weights_file = os.path.join(model_id, WEIGHTS_NAME)
            if not os.path.isfile(weights_file):
                raise WeightsError(f"{model_id}: no {WEIGHTS_NAME} in this detector folder")
        else:
            weights_file = hf_hub_download(
                repo_id=model_id,
                filename=WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        state = load_safetensors(weights_file, device=str(map_location))
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            model = cls(**model_kwargs)
        load_state(model, state, source=weights_file, strict=strict, assign=True)
        return model.to(map_location).eval()


class _VerbatimCard:
    """What the mixin needs of a model card (`save`), writing the given text unchanged."""

    def __init__(self, text: str) -> None:
        self.text = text

    def save(self, path: str | Path) -> None:
        from aidetect.atomic import atomic_write_text

        atomic_write_text(path, self.text)


class Teacher(nn.Module):
    """DGS-Net's frozen stage-1 model, sharing the student's encoder (LoRA off).

    The student is held by reference outside the module tree, so its weights are neither copied
    nor registered twice; only the probe head belongs to the teacher, frozen.
    """

    def __init__(self, student: Detector, probe_head: nn.Linear) -> None:
        super().__init__()
        self._student = (student,)  # a tuple keeps nn.Module from registering it
        self.head = probe_head.requires_grad_(False)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D): the base encoder's features, no graph."""
        student = self._student[0]
        with student.lora_disabled():
            return student.encode_image(images)
