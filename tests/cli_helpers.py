"""What the `aidetect scan` end-to-end tests share: the scan run in process, and what the
`photos` fixture (tests/conftest.py) holds."""

from __future__ import annotations

import pytest

from aidetect.cli.app import main

GOOD = {"a.png", "b.JPG", "c.webp", "d.png", "cmyk.jpg", "gray.tiff", "gray-alpha.png",
        "palette.gif", "anim.gif", "plain.bmp", "deep.png"}
BAD = {"broken.jpg", "loop.png", "empty.png", "truncated.jpg", "text.jpg", "corrupt.png",
       "bomb.png"}
BOMB = ("--max-pixels", "1000000")  # bomb.png has 16 million pixels


def scan(capsys, *args: str) -> tuple[int, str, str]:
    """Run `aidetect scan ARGS` in process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", *args, "--workers", "0"])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
