"""Imports every command module so that its commands register on the app."""
from aidetect.cli import (
    train,  # noqa: F401
    weights,  # noqa: F401
)
