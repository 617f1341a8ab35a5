"""Choosing the torch device: `auto` picks CUDA when present; asking for an absent one fails."""

from __future__ import annotations

import os

import torch

from aidetect.errors import UsageError


def default_workers() -> int:
    """Decoding processes: enough to keep the model fed, leaving it most of the cores."""
    return max(1, min(4, _cores() // 2))


def default_device_workers() -> int:
    """Decoding processes when the device decodes JPEGs and preprocesses: the workers only read
    files and headers (and decode the other formats), so they take every core but the main
    process's, up to 16."""
    return max(1, min(16, _cores() - 1))


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def train_workers(device: torch.device) -> int:
    """Decoding processes per rank. On a GPU the model is fast and the cores are there to feed
    it: all of this rank's share of the cores but one (for the training process), up to 16. On
    CPU, decoding and the model share the cores (`devices.default_workers`)."""
    if device.type != "cuda":
        return default_workers()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, (cores or 1) // max(1, ranks_here) - 1))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a usable torch.device, never a silent fallback."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device
