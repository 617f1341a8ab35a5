"""Importing published checkpoints as detectors: the authors' DGS-Net model, UnivFD heads.

Checkpoints are read by `aidetect.safe_pickle` (pickle opcodes inspected first, then
`torch.load(weights_only=True)`, never anything weaker). `convert_dgs_net` follows dgs-net.md
section 6: the architecture is read from tensor shapes (as OpenAI's `build_model` does;
QuickGELU), each q/k/v weight becomes
W_eff = stored W + alpha / sqrt(r) * B @ A (what the authors' test script evaluates), the split
projections are fused into open_clip's `in_proj_*` (rows q, k, v), `attn.proj` becomes
`attn.out_proj` and `img_fc` the head. `convert_univfd` turns a UnivFD `fc_weights.pth` into a
head-only detector folder on the `univfd` preset's backbone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aidetect.errors import UsageError, WeightsError, first_line
from aidetect.safe_pickle import load_checkpoint

_STUDENT = "clip_model."
_FROZEN = "clip_model_frozen.clip_model_frozen."
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_QKV = ("q", "k", "v")
AUTHORS_LORA_ALPHA = 6.0  # the published model: r = 6, alpha = 6, scaling = 6 / sqrt(6)
FORMATS = ("auto", "dgs-net", "univfd")
# The tensors the architecture is read from, with their number of dimensions.
_ARCHITECTURE_TENSORS = {"conv1.weight": 4, "positional_embedding": 2, "proj": 2,
                         "transformer.resblocks.0.mlp.c_fc.weight": 2}


@dataclass
class ConversionReport:
    """What a conversion did, for the log: the architecture found and the LoRA check."""

    source: str
    out: str
    format: str  # "dgs-net" or "univfd"
    backbone: str
    embed_dim: int
    vision: dict[str, Any] = field(default_factory=dict)  # image_size, layers, width, ...
    lora_rank: int = 0
    lora_scaling: float = 0.0
    max_abs_delta: float | None = None  # largest |scaling * B @ A| entry
    stored_vs_frozen: float | None = None  # max |stored W - frozen W| over q, k, v
    stored_vs_frozen_plus_delta: float | None = None  # max |stored W - (frozen W + delta)|
    delta_in_stored: str = "unknown"  # "no", "yes", "unknown" (no frozen copy) or "unclear"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading ---------------------------------------------------------------------------------
def detect_format(state: dict[str, Any], source: str) -> str:
    """'dgs-net' (the authors' checkpoint) or 'univfd' (a linear head), from the keys."""
    if any(k.startswith(_STUDENT + "visual.") for k in state):
        return "dgs-net"
    if set(_strip_fc(state)) == {"weight", "bias"}:
        return "univfd"
    raise WeightsError(
        f"{source}: neither the DGS-Net checkpoint layout (clip_model.visual.*) nor a UnivFD "
        f"head (weight, bias); e.g. it has {sorted(state)[:3]}"
    )


def _strip_fc(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("fc."): v for k, v in state.items()}


# --- DGS-Net ---------------------------------------------------------------------------------
def read_architecture(visual: dict[str, Any], source: str) -> dict[str, Any]:
    """open_clip's `vision_cfg` and `embed_dim` from the tensor shapes (as CLIP's build_model)."""
    shapes = {}
    for key, dims in _ARCHITECTURE_TENSORS.items():
        if key not in visual:
            raise WeightsError(f"{source}: the image tower lacks {key}")
        shape = tuple(visual[key].shape)
        if len(shape) != dims or 0 in shape:
            raise WeightsError(f"{source}: {key} has shape {shape}; a CLIP image tower's has "
                               f"{dims} non-zero dimensions")
        shapes[key] = shape
    width, _, patch, _ = shapes["conv1.weight"]  # (width, 3, patch, patch)
    tokens = shapes["positional_embedding"][0]  # grid * grid + 1 (the CLS token)
    embed_dim = shapes["proj"][1]  # (width, embed_dim)
    hidden = shapes["transformer.resblocks.0.mlp.c_fc.weight"][0]
    grid = round((tokens - 1) ** 0.5)
    if tokens < 2 or grid * grid + 1 != tokens:
        raise WeightsError(f"{source}: {tokens} position embeddings is not a square grid + 1")
    layers = len({int(m.group(1)) for k in visual if (m := _BLOCK.match(k))})
    if width % 64:
        raise WeightsError(f"{source}: width {width} is not a multiple of 64 (OpenAI CLIP heads)")
    vision_cfg = {"image_size": grid * patch, "layers": layers, "width": width,
                  "patch_size": patch, "head_width": 64, "mlp_ratio": hidden / width}
    return {"embed_dim": int(embed_dim), "quick_gelu": True, "vision_cfg": vision_cfg}


def _text_cfg(state: dict[str, Any]) -> dict[str, Any] | None:
    """The text tower's shape, for the record (a detector does not build it)."""
    try:
        vocab, _ = state[_STUDENT + "token_embedding.weight"].shape
        context = state[_STUDENT + "positional_embedding"].shape[0]
        width = state[_STUDENT + "ln_final.weight"].shape[0]
    except KeyError:
        return None
    prefix = _STUDENT + "transformer."
    layers = len({int(m.group(1)) for k in state
                  if k.startswith(prefix) and (m := _BLOCK.match(k[len(_STUDENT):]))})
    return {"context_length": int(context), "vocab_size": int(vocab), "width": int(width),
            "heads": int(width) // 64, "layers": layers}


def builtin_name(model_cfg: dict[str, Any]) -> str | None:
    """The open_clip QuickGELU model name whose image tower has this shape, if any."""
    import open_clip

    keys = ("image_size", "layers", "width", "patch_size")
    ours = model_cfg["vision_cfg"]
    for name in open_clip.list_models():
        if not name.endswith("-quickgelu"):
            continue
        cfg = open_clip.get_model_config(name) or {}
        theirs = cfg.get("vision_cfg", {})
        if (cfg.get("embed_dim") == model_cfg["embed_dim"]
                and all(theirs.get(k) == ours[k] for k in keys)
                and theirs.get("head_width", 64) == 64 and theirs.get("mlp_ratio", 4.0) == 4.0
                and ours["mlp_ratio"] == 4.0 and "timm_model_name" not in theirs):
            return name
    return None


def effective_state(state: dict[str, Any], *, lora_alpha: float, report: ConversionReport,
                    source: str) -> dict[str, Any]:
    """The detector's state dict (open_clip names) from the authors' tensors."""
    import torch

    prefix = _STUDENT + "visual."
    visual = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Any] = {}
    diffs_plain, diffs_merged, deltas = [], [], []
    for key, value in visual.items():
        match = _BLOCK.match(key)
        rest = key[match.end():] if match else ""
        if rest.startswith("attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            continue  # gathered below, per block
        if rest.startswith("attn.proj."):
            out[f"visual.{match.group(0)}attn.out_proj.{rest.rsplit('.', 1)[1]}"] = value
        else:
            out[f"visual.{key}"] = value
    blocks = sorted({int(m.group(1)) for k in visual if (m := _BLOCK.match(k))})
    for i in blocks:
        base = f"transformer.resblocks.{i}.attn."
        weights, biases = [], []
        for name in _QKV:
            proj = base + f"{name}_proj."
            try:
                w, b = visual[proj + "weight"], visual[proj + "bias"]  # (D, D), (D,)
            except KeyError as error:
                raise WeightsError(f"{source}: block {i} lacks {prefix}{error.args[0]}") from None
            a, bb = visual.get(proj + "w_lora_A"), visual.get(proj + "w_lora_B")  # (r, D), (D, r)
            delta = torch.zeros_like(w)
            if a is not None and bb is not None:
                rank = a.shape[0]
                report.lora_rank = rank
                report.lora_scaling = lora_alpha / rank**0.5  # alpha / sqrt(r), as CLIP-LoRA
                delta = report.lora_scaling * (bb @ a)  # (D, D)
            elif (a is None) != (bb is None):
                raise WeightsError(f"{source}: block {i} {name}_proj has only one LoRA factor")
            deltas.append(delta.abs().max().item())
            frozen = _frozen_weight(state, i, name, w.shape[0])
            if frozen is not None:
                diffs_plain.append((w - frozen).abs().max().item())
                diffs_merged.append((w - (frozen + delta)).abs().max().item())
            weights.append(w + delta)
            biases.append(b)
        out[f"visual.{base}in_proj_weight"] = torch.cat(weights)  # (3D, D), rows q, k, v
        out[f"visual.{base}in_proj_bias"] = torch.cat(biases)  # (3D,)
    try:
        out["head.weight"] = state["img_fc.weight"].float()
        out["head.bias"] = state["img_fc.bias"].float()
    except KeyError:
        raise WeightsError(f"{source}: no image head (img_fc.weight, img_fc.bias)") from None
    report.max_abs_delta = max(deltas) if deltas else 0.0
    _judge_delta(report, diffs_plain, diffs_merged)
    return out


def _frozen_weight(state: dict[str, Any], block: int, name: str, dim: int):
    """The teacher's (unmodified CLIP's) q, k or v weight of `block`, or None if absent."""
    base = f"{_FROZEN}visual.transformer.resblocks.{block}.attn."
    if base + f"{name}_proj.weight" in state:
        return state[base + f"{name}_proj.weight"].float()
    fused = state.get(base + "in_proj_weight")
    if fused is None:
        return None
    row = _QKV.index(name) * dim
    return fused[row:row + dim].float()  # in_proj rows are ordered q, k, v


def _judge_delta(report: ConversionReport, plain: list[float], merged: list[float]) -> None:
    if not plain:
        report.delta_in_stored = "unknown"
        report.notes.append("no frozen copy (clip_model_frozen.*) in the checkpoint: cannot tell "
                            "whether the stored q/k/v weights already held the LoRA update")
        return
    report.stored_vs_frozen, report.stored_vs_frozen_plus_delta = max(plain), max(merged)
    tolerance = 1e-3 * max(report.max_abs_delta or 0.0, 1e-12)
    if report.stored_vs_frozen <= tolerance and report.stored_vs_frozen < max(merged):
        report.delta_in_stored = "no"
        report.notes.append("stored q/k/v weights equal the frozen CLIP's: the LoRA update was "
                            "not merged; added once, as the authors' test script does")
    elif report.stored_vs_frozen_plus_delta <= tolerance:
        report.delta_in_stored = "yes"
        report.notes.append("stored q/k/v weights already hold the LoRA update; the authors' "
                            "test script adds it again, and so does this conversion (faithful "
                            "to their published scores)")
    else:
        report.delta_in_stored = "unclear"
        report.notes.append("stored q/k/v weights differ from the frozen CLIP's both with and "
                            "without the LoRA update; converted as stored W + update")


def convert_dgs_net(source: str | Path, out: str | Path, *, lora_alpha: float = AUTHORS_LORA_ALPHA,
                    single_file: bool = False, state: dict[str, Any] | None = None
                    ) -> ConversionReport:
    """The authors' DGS-Net checkpoint -> a detector folder (or one .safetensors file).

    Args:
        source: the checkpoint (`model_epoch_step2.pth`).
        out: the detector folder to write, or a `.safetensors` path with `single_file`.
        lora_alpha: LoRA alpha of the checkpoint (scaling = alpha / sqrt(rank)).
        single_file: write one `.safetensors` file whose metadata holds the config.
        state: the checkpoint's tensors, when already loaded.
    """
    import torch

    from aidetect.config import DGS_PREPROCESS
    from aidetect.detector_files import load_state
    from aidetect.model import Detector

    source = str(source)
    state = load_checkpoint(source) if state is None else state
    prefix = _STUDENT + "visual."
    visual = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not visual:
        raise WeightsError(f"{source}: no clip_model.visual.* tensors (not the DGS-Net layout)")
    model_cfg = read_architecture(visual, source)
    text_cfg = _text_cfg(state)
    if text_cfg:
        model_cfg["text_cfg"] = text_cfg
    name = builtin_name(model_cfg)
    vision = model_cfg["vision_cfg"]
    report = ConversionReport(
        source=source, out=str(out), format="dgs-net", embed_dim=model_cfg["embed_dim"],
        backbone=name or f"dgs-net-vit-w{vision['width']}-l{vision['layers']}-p"
                         f"{vision['patch_size']}",
        vision={**vision, "heads": vision["width"] // 64},
    )
    detector_state = effective_state(state, lora_alpha=lora_alpha, report=report, source=source)
    with torch.device("meta"):  # every tensor comes from the checkpoint
        detector = Detector(
            backbone=report.backbone, pretrained=None, model_cfg=model_cfg, quick_gelu=True,
            preprocess=DGS_PREPROCESS.to_dict(),
            base_pretrained="openai" if name else None,  # the authors fine-tuned OpenAI CLIP
        )
    load_state(detector, detector_state, source=source, strict=True, assign=True)
    detector.eval()
    licences = dgs_net_licences(detector)
    _write_detector(detector, out, single_file=single_file, card=_dgs_card(report, licences),
                    licences=licences)
    return report


def dgs_net_licences(detector: Any) -> list[Any]:
    """What a converted DGS-Net checkpoint is built from: OpenAI CLIP (when its shape is one of
    OpenAI's) and the authors' weights, whose licence dgs-net.md does not state."""
    from aidetect.licences import DGS_NET_AUTHORS, clip_licence

    base = clip_licence(detector.backbone, detector.base_pretrained)
    return [base, DGS_NET_AUTHORS] if base else [DGS_NET_AUTHORS]


def _write_detector(detector: Any, out: str | Path, *, single_file: bool, card: str,
                    licences: list[Any]) -> None:
    from aidetect.loading import save_single_file

    if single_file:
        save_single_file(detector, out)
        return
    detector.save_pretrained(out, licences=licences, model_card_kwargs={"card_text": card})


def _dgs_card(report: ConversionReport, licences: list[Any]) -> str:
    from aidetect.card import licence_section

    notes = "\n".join(f"- {note}" for note in report.notes)
    licence = "\n".join(licence_section(licences))
    return f"""---
library_name: aidetect
tags: [ai-generated-image-detection, dgs-net, clip]
---
# DGS-Net (authors' checkpoint, converted)

Converted by `aidetect convert` from `{Path(report.source).name}`, the checkpoint published with
Yan et al., "DGS-Net: Distillation-Guided Gradient Surgery for CLIP Fine-Tuning in AI-Generated
Image Detection", arXiv 2511.13108.

- Backbone: {report.backbone} (OpenAI CLIP layout, QuickGELU), image tower only.
- LoRA rank {report.lora_rank}, scaling {report.lora_scaling:.4f}, merged into q/k/v.
- Preprocessing: DGS-Net patch selection (49 patches of 32 px, fixed tile order), ImageNet stats.
- Threshold 0.5 on the sigmoid.

Conversion log:
{notes}

{licence}"""


# --- UnivFD ----------------------------------------------------------------------------------
def convert_univfd(source: str | Path, out: str | Path, *, preset: str = "univfd",
                   state: dict[str, Any] | None = None) -> ConversionReport:
    """A UnivFD head (`fc_weights.pth`: weight (1, D), bias (1,)) -> a head-only detector folder.

    The folder names the preset's backbone and pretrained tag in its config.json and holds only
    the head in model.safetensors; loading it builds the backbone through open_clip (downloaded
    once into the Hugging Face cache), as the preset does.
    """
    import open_clip
    from safetensors.torch import save

    from aidetect import __version__
    from aidetect.atomic import atomic_write_bytes, atomic_write_text
    from aidetect.config import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
    from aidetect.licences import LICENSES_KEY, copy_licence_files, preset_licences
    from aidetect.presets import get_preset

    source = str(source)
    head = _strip_fc(load_checkpoint(source) if state is None else state)
    if set(head) != {"weight", "bias"}:
        raise WeightsError(f"{source}: a UnivFD head holds weight and bias (optionally fc.), "
                           f"not {', '.join(sorted(head))}")
    spec = get_preset(preset)
    embed_dim = (open_clip.get_model_config(spec.backbone) or {}).get("embed_dim")
    weight, bias = head["weight"].float(), head["bias"].float()
    if tuple(weight.shape) != (1, embed_dim) or tuple(bias.shape) != (1,):
        raise WeightsError(f"{source}: head shapes {tuple(weight.shape)} and {tuple(bias.shape)} "
                           f"do not fit {spec.backbone} (expected (1, {embed_dim}) and (1,))")
    config = {
        "aidetect_version": __version__,
        "format_version": FORMAT_VERSION,
        "backbone": spec.backbone,
        "pretrained": spec.pretrained,  # the image tower comes from open_clip's tag
        "base_pretrained": spec.pretrained,
        "quick_gelu": True,
        "lora_rank": 0,
        "lora_alpha": 6.0,
        "lora_dropout": 0.8,
        "preprocess": dict(spec.preprocess),
        "threshold": spec.threshold,
        LICENSES_KEY: [licence.to_dict() for licence in preset_licences(spec)],
    }
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    tensors = {"head.weight": weight.contiguous(), "head.bias": bias.contiguous()}
    atomic_write_bytes(target / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(target / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(target / "README.md", _univfd_card(spec, source))
    copy_licence_files(preset_licences(spec), spec.license_path.parent, target)
    return ConversionReport(source=source, out=str(out), format="univfd", backbone=spec.backbone,
                            embed_dim=int(embed_dim),
                            notes=[f"head only; the image tower is {spec.backbone} "
                                   f"'{spec.pretrained}', fetched by open_clip when loaded"])


def _univfd_card(spec: Any, source: str) -> str:
    from aidetect.card import licence_section
    from aidetect.licences import preset_licences

    licence = "\n".join(licence_section(preset_licences(spec)))
    return f"""---
library_name: aidetect
license: mit
tags: [ai-generated-image-detection, univfd, clip]
---
# UnivFD head (converted)

Converted by `aidetect convert --format univfd` from `{Path(source).name}`. A linear probe on
frozen {spec.backbone} '{spec.pretrained}' image features; this folder holds only the head, and
the image tower is fetched by open_clip into the Hugging Face cache when the folder is loaded.

Preprocessing: centre crop 224 px, CLIP mean and std. Threshold {spec.threshold}.

{licence}"""


def convert_checkpoint(source: str | Path, out: str | Path, *, format: str = "auto",
                       single_file: bool = False, lora_alpha: float = AUTHORS_LORA_ALPHA
                       ) -> ConversionReport:
    """Convert `source` by `format` ('auto' reads the layout from the keys).

    `out` must not exist yet, or be an empty folder: a conversion never overwrites files it did
    not create (a `UsageError` says so before the checkpoint is read).
    """
    if format not in FORMATS:
        raise UsageError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    refuse_existing_out(Path(out), single_file=single_file)
    state = load_checkpoint(source)
    kind = detect_format(state, str(source)) if format == "auto" else format
    try:
        if kind == "univfd":
            if single_file:
                raise UsageError("--single-file is for full detectors; a UnivFD head is written "
                                 "as a head-only folder")
            return convert_univfd(source, out, state=state)
        return convert_dgs_net(source, out, lora_alpha=lora_alpha, single_file=single_file,
                               state=state)
    except RuntimeError as error:  # torch's error for tensors whose shapes do not fit together
        raise WeightsError(f"{source}: tensor shapes that do not fit together "
                           f"({first_line(error)})") from None


def refuse_existing_out(out: Path, *, single_file: bool) -> None:
    """A `UsageError` when `out` holds something this run did not create: an existing file, or
    a folder that is not empty."""
    if single_file and out.exists():
        raise UsageError(f"--out {out}: already exists; aidetect convert does not overwrite "
                         "files (remove it or choose another name)")
    if out.is_file() or out.is_symlink() and not out.is_dir():
        raise UsageError(f"--out {out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out}: a folder that is not empty; aidetect convert writes only "
                         "into a new or empty folder (remove it or choose another)")
