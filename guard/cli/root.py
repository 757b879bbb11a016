"""The Typer app every command registers on, and what all commands share: the root callback
(--version), the one error handler (`friendly`: one line on stderr, exit 2) and `quiet_transformers`.

Exit codes: 0 allowed, 1 flagged, 2 usage or input error (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Annotated

import click
import typer

from guard.errors import GuardError, first_line

app = typer.Typer(
    help="Few-shot content moderation with Sparse Attention Vectors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Rich markup would read "[env GUARD_DB, default ./guard.db]" in help texts as a style tag
    # and drop it; help is shown as written.
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from guard import __version__

        typer.echo(f"guard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show guard's version and exit"),
    ] = None,
):
    """Few-shot content moderation with Sparse Attention Vectors."""


def fail(message: str) -> None:
    """A usage error: one line on stderr, exit 2."""
    typer.echo(f"guard: error: {message}", err=True)
    raise typer.Exit(2)


def friendly(command):
    """Every failure is one line on stderr and exit 2 (1 means "flagged", so a crash must never
    exit 1): GuardError says what is wrong; anything else is a bug, reported as one line too, with
    the traceback only when GUARD_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except GuardError as exc:
            fail(first_line(exc))
        except KeyboardInterrupt:
            typer.echo("guard: interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # the reader went away (`guard ... | head`): stop quietly, as a shell reports SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail
            raise typer.Exit(141) from None
        except MemoryError:
            fail("out of memory")
        except Exception as exc:
            if os.environ.get("GUARD_DEBUG") == "1":
                traceback.print_exc()
            fail(f"internal error ({type(exc).__name__}: {first_line(exc)}); GUARD_DEBUG=1 shows the traceback")

    return wrapper


def command(name: str):
    """Register a command on the app, wrapped in `friendly`."""

    def register(function):
        return app.command(name)(friendly(function))

    return register


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
