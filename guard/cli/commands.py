"""The `guard` command: the Typer app with every command registered, one module per command group
(compile, check, scan, list/rollback/inspect, export, eval, serve, audit, review/promote), each a thin layer that
parses, calls the library once and prints.
"""

from guard.cli import audit, check, compile, eval, export, inspect, review, scan, serve  # noqa: F401 - they register
from guard.cli.root import app, friendly

__all__ = ["app", "friendly", "main"]

# The order of `guard --help`.
ORDER = ["compile", "check", "scan", "list", "rollback", "promote", "inspect", "export", "eval", "serve", "audit"]
app.registered_commands.sort(key=lambda info: ORDER.index(info.name))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
