"""OpenMP's spin (aidetect/openmp.py): shortened for CPU scans, set before torch loads, never
over the user's own settings; `scan` and `eval` set it before they import torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import aidetect.openmp
from aidetect.cli.app import main
from aidetect.openmp import USER_SETTINGS

PROBE = ("{prelude}import os, aidetect.openmp as o; "
         "print(o.shorten_spin(), os.environ.get('GOMP_SPINCOUNT'))")


def probe(prelude: str = "", **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS} | env
    return subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], env=environ,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_short_spin_unless_the_user_chose_or_torch_is_loaded() -> None:
    assert probe() == f"True {aidetect.openmp.SPIN_COUNT}"
    assert probe(GOMP_SPINCOUNT="5") == "False 5"  # the user's choice stays
    assert probe(OMP_WAIT_POLICY="ACTIVE") == "False None"  # and is not contradicted
    assert probe("import torch; ") == "False None"  # too late: OpenMP has read its settings


def test_only_where_decoders_share_the_cores() -> None:
    """From 3 physical cores on, decoders and model threads have their own: default spin."""
    fake = "import aidetect.cpu as c; c.physical_cores = lambda: {}; "
    assert probe(fake.format(2)) == f"True {aidetect.openmp.SPIN_COUNT}"
    assert probe(fake.format(1)) == f"True {aidetect.openmp.SPIN_COUNT}"
    assert probe(fake.format(3)) == "False None"
    assert probe(fake.format(8)) == "False None"


@pytest.mark.parametrize("command", ["scan", "eval"])
def test_scan_and_eval_ask_for_it(command, monkeypatch, capsys, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(aidetect.openmp, "shorten_spin", lambda: calls.append(command))
    args = ([command, str(tmp_path / "absent")] if command == "scan"
            else [command, "--data", str(tmp_path / "absent"), "-w", str(tmp_path / "none")])
    with pytest.raises(SystemExit):
        main(args)
    capsys.readouterr()
    assert calls == [command]
