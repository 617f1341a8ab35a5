"""Options shared by several commands, declared once as `Annotated` aliases."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

WeightsOption = Annotated[
    str,
    typer.Option(
        "--weights",
        "-w",
        help="Detector: a preset name, a detector folder, a .safetensors file, or a Hub "
        "repository (hf://owner/name[@revision]).",
        show_default=True,
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA, else an Apple GPU, else the CPU), cpu, cuda, "
                 "cuda:N or mps."),
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass on a GPU "
                      "(on the CPU the model takes 4 at a time, 8 for a bf16 ViT-B).")
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", "-j", min=0, show_default="half the cores, at most 4",
                 help="Processes decoding images (0: in the main one)."),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or log lines on stderr.")
]
OutputOption = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="Write the report to this file (atomically) instead of stdout."
    ),
]
CacheOption = Annotated[
    str | None,
    typer.Option("--cache", show_default="$AIDETECT_CACHE, else $XDG_CACHE_HOME/aidetect, else "
                 "~/.cache/aidetect",
                 help="The score cache folder: unchanged files are not scored again."),
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the score cache.")
]


TrustAnchorsOption = Annotated[
    str | None,
    typer.Option("--trust-anchors", metavar="PEM", show_default="none: no signer trusted",
                 help="Root certificates (PEM) whose C2PA signers are trusted; only a trusted "
                 "manifest can declare a camera capture."),
]


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    int8 = "int8"


PrecisionOption = Annotated[
    Precision,
    typer.Option("--precision", help="auto: bf16 on CUDA from Ampere on and on CPUs with bf16 "
                 "units, fp16 on older GPUs and Apple GPUs, fp32 elsewhere. int8: CPU only, "
                 "never chosen by auto. eval and scan on one device score alike."),
]
