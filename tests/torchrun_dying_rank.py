"""`aidetect` for torchrun, with rank 1 dying (exit 9) after it has scored a few files: how the
tests make a process of a distributed scan die mid-scan."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's aidetect

from aidetect import scan  # noqa: E402

if os.environ.get("RANK") == "1":
    _results = scan.Scanner._results

    def _dying_results(self, batch, host):
        yield from _results(self, batch, host)
        if self.timings.images >= 4:
            os._exit(9)

    scan.Scanner._results = _dying_results

from aidetect.cli.app import main  # noqa: E402

main(sys.argv[1:])
