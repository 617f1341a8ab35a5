"""The stderr console for progress and logs; stdout is kept for machine-readable output."""

from __future__ import annotations

from rich.console import Console

err_console = Console(stderr=True, highlight=False)
