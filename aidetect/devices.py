"""Choosing the torch device and the CPU's share of work: never a silent fallback.

`auto` picks CUDA, then an Apple GPU (MPS), then the CPU; asking for one that is absent fails
with a usage error. On the CPU the model and the decoding processes share the physical cores
(hyper-threads add little to matrix products and slow them when oversubscribed): the model
gets the cores the default decoders leave, so the two never ask for more than there are.
"""

from __future__ import annotations

import os

import torch

from aidetect import cpu
from aidetect.errors import UsageError

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"


def mps_available() -> bool:
    """Whether an Apple GPU can run torch here (macOS 12.3+ on Apple silicon, MPS build)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' -> a usable torch.device, never a fallback."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use {DEVICES_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps":
        if not mps_available():
            raise UsageError(f"--device {name}: no Apple GPU (MPS) is available here "
                             "(use --device cpu or auto)")
        if device.index not in (None, 0):
            raise UsageError(f"--device {name}: a Mac has one Apple GPU: use --device mps")
        device = torch.device("mps")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}: use {DEVICES_HELP}")
    return device


def default_workers(device: torch.device | None = None) -> int:
    """Decoding processes by default.

    For a GPU: half the logical CPUs, at most 4, enough to keep it fed. For the CPU: a quarter
    of the physical cores (at least 1; none on a single core, where a process would only add
    copies): the model needs most of them. Decoding and preprocessing a 1024x768 JPEG cost
    ~50 ms of one core; ViT-B-16 in bf16 ~90 core-ms an image, ViT-L-14 ~400 (fp32: ~4x).
    """
    if device is not None and device.type == "cpu":
        cores = cpu.physical_cores()
        return 0 if cores == 1 else max(1, cores // 4)
    return max(1, min(4, len(cpu.allowed_cpus()) // 2))


def default_device_workers() -> int:
    """Decoding processes when the device decodes JPEGs and preprocesses: the workers only read
    files and headers (and decode the other formats), so they take every core but the main
    process's, up to 16."""
    return max(1, min(16, len(cpu.allowed_cpus()) - 1))


def train_workers(device: torch.device) -> int:
    """Decoding processes per training rank. On a GPU the model is fast and the cores are there
    to feed it: all of this rank's share of the cores but one (for the training process), up to
    16. Elsewhere, decoding and the model share the cores (`default_workers`)."""
    if device.type != "cuda":
        return default_workers(device)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, len(cpu.allowed_cpus()) // max(1, ranks_here) - 1))


def default_threads() -> int:
    """The model's CPU threads by default: the physical cores the default decoders leave.

    From 3 cores on, never more: a decoder sharing a core with one of the model's threads
    stalls the model's parallel steps. On 2 cores the model takes both, and the decoder
    overlaps it: halving the model costs more than the stalls (on this project's idle 2-core
    machine, 1 decoder + 2 threads scanned 1.2-1.6x faster than 1 + 1; under a load of 14
    from other jobs, 1 + 1 was 2.3x faster). The count does not depend on `--workers`, so
    neither do the scores (bf16 kernels vary with the thread count).
    """
    cores = cpu.physical_cores()
    if cores <= cpu.SHARED_CORES:
        return cores
    return cores - default_workers(torch.device("cpu"))
