"""Checking a saved detector config (`config.json`, or a single file's metadata) field by field.

A config is user-editable JSON: `"threshold": null` or `"lora_rank": "6"` would otherwise reach
`Detector(...)` and fail deep inside it with a `TypeError`. Each field present is checked for
its type and range up front, and a wrong one is a one-line `WeightsError` naming the file and
the field. Absent fields take `Detector`'s defaults.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from aidetect.errors import WeightsError

Check = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _three_numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)


def _image_size(value: Any) -> bool:
    return _positive_int(value) or (isinstance(value, list) and len(value) == 2
                                    and all(_positive_int(v) for v in value))


# field: (check, what the value must be), for the message
DETECTOR_FIELDS: dict[str, tuple[Check, str]] = {
    "aidetect_version": (lambda v: isinstance(v, str), "a string"),
    "format_version": (_positive_int, "a positive integer"),
    "backbone": (_text, "a non-empty string (an open_clip model name)"),
    "pretrained": (_optional(_text), "a string or null"),
    "base_pretrained": (_optional(_text), "a string or null"),
    "quick_gelu": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "lora_rank": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lora_alpha": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "threshold": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "preprocess": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "model_cfg": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}
PREPROCESS_FIELDS: dict[str, tuple[Check, str]] = {
    "method": (lambda v: v in ("patches", "center_crop"), '"patches" or "center_crop"'),
    "size": (_positive_int, "a positive integer"),
    "patch_size": (_positive_int, "a positive integer"),
    "n_low": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "n_high": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "mean": (_three_numbers, "a list of 3 numbers"),
    "std": (lambda v: _three_numbers(v) and all(x > 0 for x in v), "a list of 3 numbers > 0"),
}
# open_clip's architecture config: the fields `build_visual` reads (others are passed through).
MODEL_CFG_FIELDS: dict[str, tuple[Check, str]] = {
    "embed_dim": (_positive_int, "a positive integer"),
    "quick_gelu": (lambda v: isinstance(v, bool), "true or false"),
    "vision_cfg": (lambda v: isinstance(v, dict), "an object"),
}
VISION_CFG_FIELDS: dict[str, tuple[Check, str]] = {
    "image_size": (_image_size, "a positive integer or a list of 2"),
    "layers": (_positive_int, "a positive integer"),
    "width": (_positive_int, "a positive integer"),
    "patch_size": (_positive_int, "a positive integer"),
    "head_width": (_positive_int, "a positive integer"),
    "mlp_ratio": (lambda v: _is_number(v) and v > 0, "a number > 0"),
}


def check_saved_config(config: Any, source: str, *, architecture: bool = True) -> None:
    """Raise a `WeightsError` naming `source` and the field when `config` has a wrong value.

    Checks the type and range of every known field that is present, the preprocessing (that
    its patches tile its size) and the fields of an embedded open_clip architecture.
    """
    if not isinstance(config, dict):
        raise WeightsError(f"{source}: not an aidetect detector config (not a JSON object)")
    _check_fields(config, DETECTOR_FIELDS, source, "")
    if isinstance(config.get("preprocess"), dict):
        _check_preprocess(config["preprocess"], source)
    if isinstance(config.get("model_cfg"), dict):
        model_cfg = config["model_cfg"]
        _check_fields(model_cfg, MODEL_CFG_FIELDS, source, "model_cfg.")
        for key in ("embed_dim", "vision_cfg"):
            if key not in model_cfg:
                raise WeightsError(f"{source}: field 'model_cfg' lacks '{key}'")
        if architecture:  # imports open_clip
            _check_vision_cfg(model_cfg["vision_cfg"], source)


def _check_vision_cfg(vision_cfg: dict[str, Any], source: str) -> None:
    """The fields open_clip's `CLIPVisionCfg` takes, their types, and whole attention heads."""
    from dataclasses import fields

    from open_clip.model import CLIPVisionCfg

    known = {f.name: f.default for f in fields(CLIPVisionCfg)}
    unknown = sorted(set(vision_cfg) - set(known))
    if unknown:
        raise WeightsError(f"{source}: field 'model_cfg.vision_cfg' has unknown keys: "
                           f"{', '.join(unknown)}")
    _check_fields(vision_cfg, VISION_CFG_FIELDS, source, "model_cfg.vision_cfg.")
    width = vision_cfg.get("width", known["width"])
    head_width = vision_cfg.get("head_width", known["head_width"])
    if "timm_model_name" not in vision_cfg and width % head_width:
        raise WeightsError(f"{source}: field 'model_cfg.vision_cfg.head_width' must divide "
                           f"the width ({width}), not {head_width}")


def _check_preprocess(preprocess: dict[str, Any], source: str) -> None:
    from aidetect.config import PreprocessConfig

    unknown = sorted(set(preprocess) - set(PREPROCESS_FIELDS))
    if unknown:
        raise WeightsError(f"{source}: field 'preprocess' has unknown keys: {', '.join(unknown)}")
    _check_fields(preprocess, PREPROCESS_FIELDS, source, "preprocess.")
    try:
        PreprocessConfig.from_dict(preprocess)
    except ValueError as error:  # e.g. patches that do not tile the size
        raise WeightsError(f"{source}: field 'preprocess': {error}") from None


def _check_fields(values: dict[str, Any], fields: dict[str, tuple[Check, str]], source: str,
                  prefix: str) -> None:
    for key, (check, expected) in fields.items():
        if key in values and not check(values[key]):
            raise WeightsError(f"{source}: field '{prefix}{key}' must be {expected}, not "
                               f"{_shown(values[key])}")


def _shown(value: Any) -> str:
    """The JSON of a value, cut short: what the user would see in the file."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
