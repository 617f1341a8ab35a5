"""Atomic writes: the whole file or the old one, never a temp file left, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from aidetect.atomic import atomic_open, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "sub" / "report.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "report.json").read_text() == "{}"
    assert _mode(tmp_path / "sub" / "report.json") == 0o644  # not mkstemp's 0600


def test_replacing_keeps_the_targets_mode(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
