"""Building open_clip image towers: a whole CLIP from a pretrained tag, or the image tower alone
from open_clip's architecture config (dgs-net.md §2). QuickGELU follows the tag or the config.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def has_schema(backbone: str) -> bool:
    """True for open_clip names that carry their own weights location (hf-hub:, local-dir:)."""
    return backbone.startswith(("hf-hub:", "local-dir:"))


def tag_uses_quick_gelu(backbone: str, pretrained: str | None) -> bool:
    """Whether an open_clip pretrained tag was trained with QuickGELU (all OpenAI CLIPs were)."""
    import open_clip

    if not pretrained or has_schema(backbone):
        return False
    tag_cfg = open_clip.get_pretrained_cfg(backbone.replace("/", "-"), pretrained) or {}
    return bool(tag_cfg.get("quick_gelu", False))


def create_clip(
    backbone: str, pretrained: str | None, *, quick_gelu: bool | None = None
) -> nn.Module:
    """A whole open_clip model; weights from `pretrained`, or random when it is None.

    A tag that was asked for must load: open_clip would otherwise fall back to random weights
    with a log line (hence `require_pretrained`). QuickGELU follows the tag unless forced.
    """
    import open_clip

    if quick_gelu is None:
        quick_gelu = tag_uses_quick_gelu(backbone, pretrained)
    with warnings.catch_warnings(), _quiet_random_init():
        # A QuickGELU mismatch cannot happen here (we follow the tag), so the warning is noise.
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        return open_clip.create_model(
            backbone,
            pretrained=None if has_schema(backbone) else pretrained,
            load_weights=pretrained is not None,
            require_pretrained=pretrained is not None,
            force_quick_gelu=quick_gelu,
            # Follows `with torch.device("meta")`, which skips random init before a full load.
            device=torch.get_default_device(),
        )


class _DropRandomInitNotice(logging.Filter):
    # open_clip's notices that a model has random weights. Wanted here: pretrained=None asks
    # for them, and a tag that was asked for raises instead (require_pretrained).
    NOTICES = ("Model initialized randomly", "no CLIP weights found")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    # open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger
    # whenever pretrained is None. Here that is intended (a saved detector's weights load next),
    # and a user would read it as a failure.
    notice_filter = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice_filter)
    try:
        yield
    finally:
        root.removeFilter(notice_filter)


def resolve_model_cfg(backbone: str) -> dict[str, Any] | None:
    """open_clip's architecture config for `backbone` (built-in, `local-dir:`, or `hf-hub:`).

    A saved detector embeds it, so that the folder rebuilds its image tower offline on any
    machine, whatever open_clip has registered there (dgs-net.md, issue 3).
    """
    import open_clip

    name = backbone if has_schema(backbone) else backbone.replace("/", "-")
    model_cfg = open_clip.get_model_config(name)
    return copy.deepcopy(model_cfg) if model_cfg is not None else None


def build_visual(model_cfg: dict[str, Any], *, quick_gelu: bool | None = None) -> nn.Module:
    """An open_clip image tower built from an architecture config alone: no weights, no text tower.

    The same call open_clip's `CLIP.__init__` makes for its `visual`, so the state-dict keys are
    those of `create_clip(...).visual`.
    """
    from open_clip.model import _build_vision_tower

    if "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError("model_cfg needs 'embed_dim' and 'vision_cfg' (open_clip's layout)")
    vision_cfg = dict(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # the weights come from the state dict
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    visual = _build_vision_tower(int(model_cfg["embed_dim"]), vision_cfg, quick_gelu, None)
    return visual.to(torch.get_default_device())


def uses_quick_gelu(module: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in module.modules())
