"""The Typer app: wiring of the command groups, `--version`, and the one error idiom.

Every command raises `AidetectError` for the user; `main()` prints it as one line,
`aidetect: error: ...`, on stderr and exits with its code. Click's usage errors become the same
one line (exit 2), and any other exception is an internal error (exit 70), never exit 1, which
`--fail-on-ai` uses for "AI found". `AIDETECT_DEBUG=1` shows the traceback instead. Commands
import the engine inside their bodies so that `--help` never imports torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from aidetect import __version__
from aidetect.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    AidetectError,
)

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
    rich_markup_mode=None,
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
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # Point stdout at /dev/null so that the exit-time flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_PIPE) from None


def print_error(message: str) -> None:
    """The one format of a user-facing error: one line on stderr."""
    sys.stderr.write(f"aidetect: error: {message}\n")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and turns every way it can end into one exit
    code and at most one line on stderr."""
    _register_commands()
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # what `no_args_is_help` does in standalone mode: the help, exit 2
        app(args=["--help"], prog_name="aidetect", standalone_mode=False)
        sys.exit(EXIT_USAGE)
    sys.exit(_run(args))


def _run(args: list[str]) -> int:
    """Run the app in Click's non-standalone mode (it raises instead of printing its boxed
    panels and exiting), and map what it raises."""
    try:
        code = app(args=args, prog_name="aidetect", standalone_mode=False)
        return code if isinstance(code, int) else EXIT_OK
    except SystemExit as stop:
        # In non-standalone mode commands end by returning a code, so a SystemExit(1) from
        # inside is Click's handling of a closed stdout pipe (it calls sys.exit(1) even then):
        # a broken pipe, never "AI found".
        if stop.code == 1:
            return EXIT_PIPE
        raise
    except typer.Abort:  # Ctrl-C or end of input while Click was prompting or parsing
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except _click_errors() as error:  # unknown option, bad value, missing argument, ...
        if _debug():
            raise
        message = _one_line(error.format_message() if hasattr(error, "format_message")
                            else str(error))
        context = getattr(error, "ctx", None)  # usage errors know their command
        if context is not None:
            message += f" (see {context.command_path} --help)"
        print_error(message)
        return EXIT_USAGE
    except AidetectError as error:
        if _debug():
            raise
        print_error(error.message)
        return error.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except OSError as error:  # disk full, permission denied while writing a report, ...
        if _debug():
            raise
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        print_error(f"{where}{error.strerror or error}")
        return EXIT_USAGE
    except Exception as error:  # a bug: never let it read as "AI found" (exit 1)
        if _debug():
            raise
        print_error(f"internal error: {type(error).__name__}: {_one_line(str(error))} (set "
                    "AIDETECT_DEBUG=1 for the traceback; please report it)")
        return EXIT_INTERNAL


def _click_errors() -> tuple[type[Exception], ...]:
    """The base class of Click's errors: Typer's own (Typer vendors Click from 0.2x on),
    and Click's, for the Typer versions that use Click itself."""
    kinds: list[type[Exception]] = []
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return tuple(kinds)


def _debug() -> bool:
    return bool(os.environ.get("AIDETECT_DEBUG"))


def _one_line(text: str) -> str:
    """A message on one line, at most 300 characters."""
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."
