"""aidetect: tell whether images were made by a generative model (DGS-Net, arXiv 2511.13108).

The public API is resolved lazily so that `import aidetect` (and `aidetect --help`) does not
import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Detector", "Teacher", "__version__"]

if TYPE_CHECKING:
    from aidetect.model import Detector, Teacher


def __getattr__(name: str) -> Any:
    if name in ("Detector", "Teacher"):
        from aidetect import model

        return getattr(model, name)
    raise AttributeError(f"module 'aidetect' has no attribute {name!r}")
