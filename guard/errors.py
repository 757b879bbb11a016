"""User-facing errors: each carries a one-line message that the CLI prints without a traceback."""


class GuardError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str = "", *args):
        # one line, always: a user's value with a newline in it (a YAML key, a label) is shown escaped
        if isinstance(message, str):
            message = message.strip().replace("\r", "\\r").replace("\n", "\\n")
        super().__init__(message, *args)


class PolicyError(GuardError):
    """A policy file (or a file it points to) is invalid; the message starts with 'file:line:'."""


class ModelError(GuardError):
    """A model reference cannot be resolved or loaded."""


class StoreError(GuardError):
    """The database is missing, not a guard database, or lacks the requested policy."""


class InputError(GuardError):
    """One input to check cannot be used (empty, too long, not UTF-8, too large an image)."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none): what a
    one-line error shows of a library's multi-line message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def need_extra(module: str, what: str, extra: str, error: type[GuardError] = GuardError) -> None:
    """Make sure `module`, an optional dependency, is installed (found, not imported: the check is
    cheap, so it can run before any work); if it is not, raise `error` saying in one line which
    extra installs it (`what` names the feature that needs it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        found = False
    if not found:
        raise error(f"{what} needs the '{extra}' extra: pip install 'guard-sav[{extra}]'")
