"""Imports every command module so that its commands register on the app."""
from aidetect.cli import (
    cache,  # noqa: F401
    eval,  # noqa: F401
    inspect,  # noqa: F401
    scan,  # noqa: F401
    train,  # noqa: F401
    weights,  # noqa: F401
)
