"""The Typer app: wiring of the command groups, `--version`, and the one error idiom.

Every command raises `AidetectError` for the user; `main()` prints it as one line,
`aidetect: error: ...`, on stderr and exits with its code. `AIDETECT_DEBUG=1` shows the
traceback instead. Commands import the engine inside their bodies so that `--help` never
imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from aidetect import __version__
from aidetect.errors import EXIT_USAGE, AidetectError

EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe

app = typer.Typer(
    name="aidetect",
    help=(
        "Tell whether images were made by a generative model.\n\n"
        "aidetect scores each image with a CLIP-based detector (DGS-Net, arXiv 2511.13108; "
        "UnivFD by default) and reports the probability that it is AI-generated."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"aidetect {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Tell whether images were made by a generative model."""


def _register_commands() -> None:
    # Each command group lives in its own module; importing it registers its commands.
    from aidetect.cli import commands  # noqa: F401


@contextmanager
def interruptions() -> Iterator[None]:
    """Ctrl-C exits 130 with `aidetect: error: interrupted`; a reader of stdout that goes away
    (`aidetect scan ... | head`) exits 141 quietly.

    Inside the command, because Click (depending on its version) would turn either into exit
    1, which `scan --fail-on-ai` uses for "AI found".
    """
    try:
        yield
    except KeyboardInterrupt:
        print_error("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # Point stdout at /dev/null so that the exit-time flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_PIPE) from None


def print_error(message: str) -> None:
    """The one format of a user-facing error: one line on stderr."""
    sys.stderr.write(f"aidetect: error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_commands()
    try:
        app(args=argv, prog_name="aidetect", standalone_mode=True)
    except AidetectError as error:
        if os.environ.get("AIDETECT_DEBUG"):
            raise
        print_error(error.message)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except OSError as error:  # disk full, permission denied while writing a report, ...
        if os.environ.get("AIDETECT_DEBUG"):
            raise
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        print_error(f"{where}{error.strerror or error}")
        sys.exit(EXIT_USAGE)
