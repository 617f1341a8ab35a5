"""The command line: a thin layer that parses, calls the engine and prints."""

from aidetect.cli.app import app, main

__all__ = ["app", "main"]
