"""The command line: parses arguments, calls the library, prints."""

from guard.cli.commands import app, main

__all__ = ["app", "main"]
