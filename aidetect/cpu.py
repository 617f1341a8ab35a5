"""This CPU as aidetect needs to know it, read without torch (the score cache and the OpenMP
settings need it before torch loads): its matrix units, which decide the precision
(`aidetect.precision`), and its physical cores, which decide the split between the model's
threads and the decoding processes (`aidetect.devices`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")  # Linux's CPU topology
# Up to this many physical cores the model takes them all and a decoding process shares them
# (`aidetect.devices.default_threads`); from one more on, each has cores of its own.
SHARED_CORES = 2


@dataclass(frozen=True)
class CpuFeatures:
    """The matrix units of this CPU that decide its precision (flags as Linux names them)."""

    amx_bf16: bool = False
    avx512_bf16: bool = False
    arm_bf16: bool = False  # Armv8.6 BF16 (Apple M2 and later, Graviton 3 and later)
    amx_int8: bool = False
    avx512_vnni: bool = False

    @property
    def bf16(self) -> bool:
        """Whether bf16 matrix products run natively (not emulated through fp32)."""
        return self.amx_bf16 or self.avx512_bf16 or self.arm_bf16

    def describe(self) -> str:
        """The bf16 units by name, e.g. "AMX-BF16, AVX512-BF16", or "no bf16 units"."""
        names = [name for name, present in (("AMX-BF16", self.amx_bf16),
                                            ("AVX512-BF16", self.avx512_bf16),
                                            ("Arm BF16", self.arm_bf16)) if present]
        return ", ".join(names) or "no bf16 units"


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This CPU's features: /proc/cpuinfo on Linux, sysctl on macOS; none known elsewhere."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    flags.update(value.split())
                    break
    except OSError:
        pass
    if platform.system() == "Darwin" and sysctl("hw.optional.arm.FEAT_BF16") == "1":
        flags.add("bf16")
    return CpuFeatures(
        amx_bf16="amx_bf16" in flags,
        avx512_bf16="avx512_bf16" in flags,
        arm_bf16=platform.machine().lower() in ("arm64", "aarch64") and "bf16" in flags,
        amx_int8="amx_int8" in flags,
        avx512_vnni="avx512_vnni" in flags,
    )


def sysctl(name: str) -> str:
    """A macOS sysctl value, or "" where there is none."""
    try:
        run = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout.strip()


def allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """The physical cores this process may run on, each hyper-threaded pair counted once.

    Linux: the CPUs of the affinity mask grouped by their thread siblings (sysfs); macOS:
    `sysctl hw.physicalcpu`; elsewhere the logical count.
    """
    allowed = allowed_cpus()
    topology = SYSFS_CPU
    if topology.is_dir():
        cores = set()
        for cpu in allowed:
            try:
                siblings = (topology / f"cpu{cpu}/topology/thread_siblings_list").read_text()
            except OSError:
                return len(allowed)
            cores.add(siblings.strip())
        return max(1, len(cores))
    if platform.system() == "Darwin":
        count = sysctl("hw.physicalcpu")
        if count.isdigit():
            return max(1, int(count))
    return max(1, len(allowed))
