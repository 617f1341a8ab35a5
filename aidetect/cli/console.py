"""The stderr console for progress and logs (stdout is kept for machine-readable output), and
the notice of a download that every command loading weights can pass to `load_detector`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

err_console = Console(stderr=True, highlight=False)


def print_warnings(warnings: list[str], *, quiet: bool = False) -> int:
    """Each warning on its own line of stderr (none with --quiet); returns how many there were,
    so that a caller can print later ones only (`warnings[shown:]`)."""
    for warning in warnings if not quiet else ():
        err_console.print(f"warning: {warning}", soft_wrap=True, markup=False, style="yellow")
    return len(warnings)


def download_notice(*, quiet: bool) -> Callable[[Any], None]:
    """The `on_download` of a command: one line on stderr saying what is fetched and how big,
    then huggingface_hub's own progress bars on a terminal (none when piped or --quiet)."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if quiet or not err_console.is_terminal:
        disable_progress_bars()
    else:
        enable_progress_bars()

    def notice(download) -> None:
        if not quiet:
            err_console.print(download.describe(), soft_wrap=True, markup=False)

    return notice
