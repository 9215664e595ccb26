"""The `tensorwire` command: serve | bench | diagnose."""

from ._main import main

__all__ = ["main"]
