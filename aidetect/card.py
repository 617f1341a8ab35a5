"""The model card (README.md) of a trained detector folder.

It states what a user of the weights needs to judge them: the data, the recipe, the validation
metrics, the aidetect version, the decision threshold with the false-positive rate it was
chosen for, and the licence and citation of what the detector was built from
(`aidetect.licences`). The threshold section sits between markers so that `eval --calibrate`
can rewrite it in place, in this card or in any other README.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aidetect import __version__
from aidetect.atomic import atomic_write_text
from aidetect.licences import DGS_NET_CITATION, Licence, clip_licence

if TYPE_CHECKING:
    from aidetect.config import TrainConfig

CARD_NAME = "README.md"
_START, _END = "<!-- aidetect:threshold -->", "<!-- /aidetect:threshold -->"
_SECTION = re.compile(re.escape(_START) + r".*?" + re.escape(_END), re.DOTALL)


@dataclass
class CardInfo:
    """Everything the card reports about a training run."""

    kind: str  # "train" (stage 1 + stage 2) or "finetune"
    backbone: str
    base_pretrained: str | None
    data: str
    data_summary: str  # e.g. "120 real and 120 AI-generated images in 4 classes"
    captions: str  # where the captions came from
    recipe: Mapping[str, Any]
    start_from: str | None = None  # finetune: the detector it started from (and its sha256)
    skipped: int = 0  # unreadable training images
    validation: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one row per validation
    threshold: float = 0.5
    # What the detector was built from; empty: the base weights' licence (`clip_licence`).
    licences: list[Licence] = field(default_factory=list)

    def built_from(self) -> list[Licence]:
        if self.licences:
            return list(self.licences)
        base = clip_licence(self.backbone, self.base_pretrained)
        return [base] if base else []


def training_recipe(cfg: TrainConfig, kind: str, *, precision: str, steps: int,
                    processes: int) -> dict[str, Any]:
    """The card's recipe table for a `train` or `finetune` run (`CardInfo.recipe`)."""
    recipe: dict[str, Any] = {}
    if kind == "train":
        recipe["stage 1 (linear probe) epochs"] = cfg.probe_epochs
    recipe.update({
        "stage 2 (DGS) epochs": cfg.epochs,
        "batch size": cfg.batch_size,
        "optimizer": f"Adam, lr {cfg.lr:g}, betas {tuple(cfg.betas)}",
        "LoRA": f"q, k, v of every block; rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, "
                f"dropout {cfg.lora.dropout:g}",
        "alignment weight": cfg.align_weight,
        "augmentation": "random tile order and horizontal flip"
        + (f"; blur p={cfg.blur_prob:g}, sigma {cfg.blur_sigma}" if cfg.blur_prob else "")
        + (f"; JPEG p={cfg.jpeg_prob:g}, quality {cfg.jpeg_quality}" if cfg.jpeg_prob else ""),
        "seed": cfg.seed,
        "precision": precision,
        "steps": steps,
        "processes": processes,
    })
    return recipe


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def threshold_section(
    threshold: float, *, fpr: float | None = None, observed: float | None = None,
    tpr: float | None = None, n_real: int | None = None, data: str | None = None,
) -> str:
    """The replaceable threshold paragraph, markers included."""
    if fpr is None:
        text = (
            f"Decision threshold: **{threshold:.6g}** (the default; not calibrated). An image "
            "is judged AI-generated when its probability is above it. Calibrate it on real "
            "images with `aidetect eval --weights DIR --data BENCH --calibrate 0.01`."
        )
    else:
        seen = f" on {n_real} real images" if n_real is not None else ""
        source = f" of `{data}`" if data else ""
        text = (
            f"Decision threshold: **{threshold:.6g}**, calibrated with `aidetect eval "
            f"--calibrate {fpr:g}` for a false-positive rate of at most {fpr:.1%}{seen}{source}"
        )
        if observed is not None:
            text += f" (observed: {observed:.2%} of real images flagged"
            detected = tpr is not None and tpr == tpr  # NaN when no AI-generated image was seen
            text += f", {tpr:.2%} of AI-generated images detected)" if detected else ")"
        text += ". An image is judged AI-generated when its probability is above it."
    return f"{_START}\n{text}\n{_END}"


# The front matter the Hugging Face Hub reads, and the title: the start of every card.
CARD_HEAD = (
    "---",
    "library_name: aidetect",
    "tags:",
    "- ai-generated-image-detection",
    "- dgs-net",
    "- clip",
    "---",
    "",
    "# AI-generated image detector",
    "",
)


def render_card(info: CardInfo) -> str:
    """The card's Markdown, with a front matter the Hugging Face Hub reads."""
    lines = [
        *CARD_HEAD,
        f"A CLIP-based detector of AI-generated images ({info.backbone}), trained with "
        f"aidetect {__version__} "
        + (
            "by the DGS-Net recipe (linear probe, then LoRA with distillation-guided gradient "
            "surgery; arXiv 2511.13108)."
            if info.kind == "train"
            else f"by fine-tuning `{info.start_from}` with DGS-Net's stage 2 (its frozen self "
            "as the teacher, fresh LoRA on top; arXiv 2511.13108)."
        ),
        "",
        "```",
        "aidetect scan --weights THIS_FOLDER images/",
        "```",
        "",
        "## Data",
        "",
        f"- Training data: `{info.data}`: {info.data_summary}.",
        f"- Captions: {info.captions}.",
    ]
    if info.skipped:
        lines.append(f"- Unreadable training images skipped: {info.skipped}.")
    lines.append(f"- Base weights: `{info.backbone}` / `{info.base_pretrained}`.")
    if info.validation:
        lines.append(f"- Validation data: `{info.validation}`.")
    lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in info.recipe.items()]
    lines += ["", "## Metrics", ""]
    if info.metrics:
        lines += [
            "Validation after each epoch (fractions; threshold 0.5):",
            "",
            "| stage | epoch | acc | AP | real acc | fake acc | real | fake |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in info.metrics:
            lines.append(
                f"| {row['stage']} | {row['epoch'] + 1} | {_fmt(row['acc'])} | "
                f"{_fmt(row['ap'])} | {_fmt(row['r_acc'])} | {_fmt(row['f_acc'])} | "
                f"{row['n_real']} | {row['n_fake']} |"
            )
    else:
        lines.append(
            "No validation set was given; evaluate with `aidetect eval --weights THIS_FOLDER "
            "--data BENCH`."
        )
    lines += ["", "## Threshold", "", threshold_section(info.threshold), ""]
    lines += licence_section(info.built_from(), method_citation=DGS_NET_CITATION)
    return "\n".join(lines)


def licence_section(licences: list[Licence], *, method_citation: str | None = None) -> list[str]:
    """The card's "Licence" and "Citation" sections, as lines."""
    lines = ["## Licence", ""]
    if licences:
        lines.append("This detector was built from:")
        lines.append("")
        for licence in licences:
            line = f"- {licence.subject}: {licence.name}"
            if licence.file:
                line += f"; the notice ships in this folder as `{licence.file}`"
            if licence.url:
                line += f" ({licence.url})"
            lines.append(line + ".")
    else:
        lines.append("Built from random weights: no third-party weights, no licence to carry.")
    citations = [c for c in [method_citation, *(x.citation for x in licences)] if c]
    if citations:
        lines += ["", "## Citation", ""]
        lines += [f"- {citation}" for citation in dict.fromkeys(citations)]
    return [*lines, ""]


def render_detector_card(config: Mapping[str, Any], licences: list[Licence]) -> str:
    """The card of a detector saved from the Python API (`Detector.save_pretrained`): what its
    config says, its threshold section and the licences of what it was built from."""
    preprocess = config.get("preprocess") or {}
    lora = config.get("lora_rank") or 0
    lines = [
        *CARD_HEAD,
        f"A CLIP-based detector of AI-generated images, saved with aidetect "
        f"{config.get('aidetect_version', __version__)}.",
        "",
        "```",
        "aidetect scan --weights THIS_FOLDER images/",
        "```",
        "",
        "## Model",
        "",
        f"- Backbone: `{config.get('backbone')}`, base weights "
        f"`{config.get('base_pretrained')}`.",
        f"- LoRA: rank {lora} on q, k, v of every image block." if lora
        else "- LoRA: none (or merged into the q, k, v weights).",
        f"- Preprocessing: `{preprocess.get('method', 'patches')}`, "
        f"{preprocess.get('size', 224)} px.",
        "",
        "## Threshold",
        "",
        threshold_section(float(config.get("threshold", 0.5))),
        "",
    ]
    lines += licence_section(licences)
    return "\n".join(lines)


def update_threshold(
    folder: str | Path, *, threshold: float, fpr: float, calibration: Any = None,
    data: str | None = None,
) -> None:
    """Rewrite the card's threshold section (add one if the card has none, or make a card)."""
    path = Path(folder) / CARD_NAME
    section = threshold_section(
        threshold,
        fpr=fpr,
        observed=getattr(calibration, "observed_fpr", None),
        tpr=getattr(calibration, "tpr", None),
        n_real=getattr(calibration, "n_real", None),
        data=data,
    )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "# AI-generated image detector\n"
    if _SECTION.search(text):
        text = _SECTION.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Threshold\n\n" + section + "\n"
    atomic_write_text(path, text)
