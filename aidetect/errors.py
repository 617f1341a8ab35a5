"""The one error type users see, and the exit codes it carries.

The engine raises `AidetectError` with a message fit for a user; the CLI turns it into
`aidetect: error: ...` on stderr and exits with `exit_code`.
"""

from __future__ import annotations

# Exit codes, documented in the README and in `aidetect scan --help`.
EXIT_OK = 0
EXIT_AI_FOUND = 1  # `--fail-on-ai` was given and at least one image is judged AI-generated
EXIT_USAGE = 2  # bad option, missing path, unavailable device
EXIT_INCOMPLETE = 3  # some files could not be scored, or nothing was found
EXIT_WEIGHTS = 4  # the weights cannot be obtained or loaded
EXIT_INTERNAL = 70  # a bug: an exception aidetect did not expect (sysexits' EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


def first_line(error: BaseException) -> str:
    """A library exception's message cut to one line (of at most 240 characters)."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 240 else line[:237] + "..."


class AidetectError(Exception):
    """An error whose message is meant for the user, with the exit code it maps to."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(AidetectError):
    """Bad options or input paths (exit code 2)."""

    exit_code = EXIT_USAGE


class WeightsError(AidetectError):
    """Weights that cannot be obtained or loaded (exit code 4)."""

    exit_code = EXIT_WEIGHTS


class ImageError(AidetectError):
    """One image that cannot be decoded or scored; a scan records it and goes on."""

    exit_code = EXIT_INCOMPLETE
