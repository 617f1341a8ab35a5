"""`aidetect cache info` and `aidetect cache clear`: the score cache (aidetect.cache)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aidetect.cli.app import app
from aidetect.cli.console import print_warnings
from aidetect.cli.options import CacheOption

cache_app = typer.Typer(
    help="The score cache: scores kept by file content, so that a rescan skips unchanged files.",
    short_help="The score cache: list or clear the scores kept.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


@cache_app.command(
    "info",
    epilog="Examples:\n\n"
    "  aidetect cache info\n\n"
    "  aidetect cache info --json",
)
def info_command(
    cache: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Where the score cache is, how many scores it holds, and its size cap."""
    from aidetect.cache import ScoreCache

    with ScoreCache.open(cache) as store:
        print_warnings(store.warnings)
        store.warnings.clear()
        facts = store.info()
    if as_json:
        typer.echo(json.dumps(facts.__dict__, indent=2))
        return
    typer.echo(f"score cache: {facts.path}\n"
               f"scores:      {facts.scores:,} (at most {facts.max_entries:,}; the least "
               "recently used go first)\n"
               f"file hashes: {facts.files:,}\n"
               f"models:      {facts.keys:,} (weights, preprocessing, device kind and "
               "precision)\n"
               f"on disk:     {facts.bytes_on_disk / 2**20:.1f} MiB\n"
               f"last used:   {_date(facts.newest_use)} (oldest score: "
               f"{_date(facts.oldest_use)})")


@cache_app.command(
    "clear",
    epilog="Examples:\n\n"
    "  aidetect cache clear\n\n"
    "  aidetect cache clear --cache /data/aidetect-cache",
)
def clear_command(cache: CacheOption = None) -> None:
    """Delete every cached score and file hash (the next scan scores every file again)."""
    from aidetect.cache import ScoreCache
    from aidetect.errors import UsageError

    with ScoreCache.open(cache) as store:
        print_warnings(store.warnings)
        store.warnings.clear()
        if not store.writable:
            raise UsageError(f"{store.path}: cannot clear a score cache that cannot be written")
        removed = store.clear()
        print_warnings(store.warnings)
        store.warnings.clear()
    typer.echo(f"cleared {removed:,} scores from {store.path}")


def _date(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
