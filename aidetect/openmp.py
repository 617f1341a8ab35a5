"""How long OpenMP threads spin before they sleep, chosen before torch loads OpenMP.

On the CPU, `scan` and `eval` run the model's OpenMP threads on the same cores as the decoding
processes. GNU OpenMP (torch's on Linux) lets a thread that reaches a barrier spin 300,000
times before it sleeps, holding a core that a decoder waits for; sleeping at once
(OMP_WAIT_POLICY=PASSIVE) frees the core but wakes the model's threads late for the next
parallel region. A tenth of the default spin keeps both. Measured on this project's 2-core Xeon
(bf16, 1024x768 JPEGs, one decoding process, `benchmarks/scan_precision.py --precisions auto`,
images/s):

| OpenMP | ViT-B-16 (96 images, batch 8) | ViT-L-14 (32 images, batch 4) |
| --- | --- | --- |
| default (spin 300,000) | 17.7-20.1 | 4.93-5.43 |
| OMP_WAIT_POLICY=PASSIVE | 21.1-23.5 | 4.74-4.95 |
| GOMP_SPINCOUNT=30000 | 20.6 | 5.35 |
| GOMP_SPINCOUNT=3000 | 20.7 | 5.45 |

fp32 is the same either way (6.2-7.3 for ViT-B). With no decoder beside it the model alone
runs 6-9% slower with the short spin (ViT-B-16 bf16, 32 images in groups of 8, two runs: 34.2
and 29.9 images/s by default, 32.3 and 27.2 with it), so it is set only where the default
split makes decoders and model threads share cores: on 1 or 2 physical cores. From 3 on each
has its own (`aidetect.devices.default_threads`) and OpenMP keeps its default.

OpenMP reads its settings once, when torch loads it, so `shorten_spin` must run before torch is
imported; a setting of the user's is kept. Other OpenMP runtimes (LLVM's, on macOS) ignore
GOMP_SPINCOUNT: left as they are, unmeasured.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "30000"
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def shorten_spin() -> bool:
    """Set GOMP_SPINCOUNT for this process and its children where decoders share the model's
    cores (`aidetect.cpu.SHARED_CORES`), unless the user set it or OMP_WAIT_POLICY, or
    torch is already loaded (too late to matter). Whether it was set."""
    from aidetect import cpu

    if any(name in os.environ for name in USER_SETTINGS) or "torch" in sys.modules:
        return False
    if cpu.physical_cores() > cpu.SHARED_CORES:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
