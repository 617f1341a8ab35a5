"""Reading a saved detector's files: `config.json` and safetensors weights, with one-line errors
that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aidetect.config import CONFIG_NAME
from aidetect.errors import WeightsError


def load_safetensors(path: str | Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, each in memory of its own.

    Copied out of the memory map: safetensors' offsets leave tensors unaligned, BLAS then takes
    other code paths, and a loaded detector's scores would differ in the last bits from the
    model that was saved.
    """
    from safetensors.torch import load_file

    return {key: value.clone() for key, value in load_file(str(path), device=device).items()}


def load_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool = True,
    assign: bool = False,
) -> None:
    """`load_state_dict` whose mismatch errors name the file and the keys, in one line.

    With `assign` (a model built on the meta device), every tensor must come from `state`.
    """
    result = model.load_state_dict(state, strict=False, assign=assign)
    problems = []
    if strict and result.missing_keys:
        missing = result.missing_keys
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
    if strict and result.unexpected_keys:
        problems.append(
            f"{len(result.unexpected_keys)} unexpected tensors (e.g. {result.unexpected_keys[0]})"
        )
    if not problems and assign:
        unset = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unset:
            problems.append(f"missing {len(unset)} tensors (e.g. {unset[0]})")
    if problems:
        raise WeightsError(f"{source}: weights do not match the detector's config: "
                           + "; ".join(problems))


def read_config(folder: str | Path) -> dict[str, Any]:
    """A saved detector's config.json, with a one-line error when it is missing or broken."""
    path = Path(folder) / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{folder}: not a detector folder (no {CONFIG_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
