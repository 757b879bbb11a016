"""Input limits: what one input to check may be, refused cheaply before any model runs.

Every way in (the CLI, the library, the HTTP server, scans) validates inputs with these
functions, so a hostile input costs a length test, not a forward pass: a 1 MB line is refused
in microseconds instead of running the model for minutes over gigabytes of activations. Limits
can be raised through the environment (`GUARD_MAX_TEXT_CHARS`, ...) where an operator needs it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from guard.errors import InputError

_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone surrogate: what UTF-8 (and tokenizers) cannot take


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else default


@dataclass(frozen=True)
class Limits:
    max_text_chars: int = 32_768  # characters of one input's text (every prompt field together)
    max_text_tokens: int = 8_192  # tokens of one rendered model input
    max_image_bytes: int = 50 * 1024 * 1024  # size of one image file
    max_image_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold (9,459 x 9,459)
    max_line_bytes: int = 4 * 32_768  # bytes read of one stdin line before it is refused (UTF-8: <= 4 per char)
    # characters of one document: a text over max_text_chars is checked window by window
    # (guard.check.documents), each window within max_text_chars, the whole within this
    max_document_chars: int = 4_000_000

    @classmethod
    def from_env(cls) -> Limits:
        base = cls()
        return cls(
            max_text_chars=_env_int("GUARD_MAX_TEXT_CHARS", base.max_text_chars),
            max_text_tokens=_env_int("GUARD_MAX_TEXT_TOKENS", base.max_text_tokens),
            max_image_bytes=_env_int("GUARD_MAX_IMAGE_BYTES", base.max_image_bytes),
            max_image_pixels=_env_int("GUARD_MAX_IMAGE_PIXELS", base.max_image_pixels),
            max_line_bytes=4 * _env_int("GUARD_MAX_TEXT_CHARS", base.max_text_chars),
            max_document_chars=_env_int("GUARD_MAX_DOCUMENT_CHARS", base.max_document_chars),
        )

    @property
    def max_document_bytes(self) -> int:
        """Bytes read of one document (a file, a scan record) before it is refused (UTF-8: <= 4 per char)."""
        return 4 * max(self.max_document_chars, self.max_text_chars)


LIMITS = Limits.from_env()


def check_text(text, what: str = "text", limits: Limits = LIMITS, allow_empty: bool = False) -> str:
    """`text` as a str, or InputError: not a string, empty (only whitespace), over the length
    limit, holding NUL characters (no real text has them; they truncate C-level tokenizers), or
    not valid Unicode (a lone surrogate, as JSON's "\\ud800" makes: tokenizers refuse it)."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, not {type(text).__name__}")
    if len(text) > limits.max_text_chars:
        raise InputError(f"{what} is too long: {len(text):,} characters (guard checks up to {limits.max_text_chars:,})")
    if not allow_empty and (not text or text.isspace()):  # not text.strip(): no copy of a document
        raise InputError(f"empty {what}: nothing to check")
    if "\0" in text:
        raise InputError(f"{what} contains a NUL character")
    if not text.isascii():  # searched in place: encoding a document to find out would copy it
        surrogate = _SURROGATE.search(text)
        if surrogate:
            raise InputError(
                f"{what} is not valid Unicode (a lone surrogate U+{ord(surrogate.group()):04X} "
                f"at character {surrogate.start()})"
            )
    return text


def check_fields(fields: dict, limits: Limits = LIMITS) -> dict:
    """Validate every prompt field of one input (their total length counts against the limit)."""
    total = 0
    for name, value in fields.items():
        if name == "images":
            continue
        check_text(
            value, f"field '{name}'" if name != "text" else "text", limits, allow_empty=bool(fields.get("images"))
        )
        total += len(value)
    if total > limits.max_text_chars:
        raise InputError(
            f"input is too long: {total:,} characters in all (guard checks up to {limits.max_text_chars:,})"
        )
    return fields


def is_document(fields: dict, limits: Limits = LIMITS) -> bool:
    """Whether an input's {text} is longer than one check reads: it is then a document, checked
    window by window (guard.check.documents) within `max_document_chars`."""
    text = fields.get("text")
    return isinstance(text, str) and len(text) > limits.max_text_chars


def check_document_fields(fields: dict, limits: Limits = LIMITS) -> dict:
    """Validate one input whose {text} may be a document: the text up to `max_document_chars`
    (refused above it), the other fields as `check_fields` checks them."""
    if not is_document(fields, limits):
        return check_fields(fields, limits)
    text = fields["text"]
    if len(text) > limits.max_document_chars:
        raise InputError(
            f"text is too long: {len(text):,} characters (guard checks documents of up to "
            f"{limits.max_document_chars:,}, GUARD_MAX_DOCUMENT_CHARS)"
        )
    check_text(text, "text", replace(limits, max_text_chars=limits.max_document_chars))
    check_fields({k: v for k, v in fields.items() if k != "text"}, limits)
    return fields


def check_tokens(count: int, limits: Limits = LIMITS) -> None:
    if count > limits.max_text_tokens:
        raise InputError(f"input is too long: {count:,} tokens (guard checks up to {limits.max_text_tokens:,})")


def line_too_long(limits: Limits = LIMITS) -> str:
    """The one-line reason a line over `max_line_bytes` is refused (its characters are not
    counted: the line is thrown away unread, and no more than `max_line_bytes` bytes can hold
    `max_text_chars` characters of UTF-8)."""
    return (
        f"text is too long: over {limits.max_line_bytes:,} bytes on one line"
        f" (guard checks up to {limits.max_text_chars:,} characters)"
    )


def decode_line(raw: bytes, limits: Limits = LIMITS) -> str:
    """One line of input bytes as text (line ending removed), or InputError: not UTF-8, too long."""
    raw = raw.rstrip(b"\r\n")
    if len(raw) > limits.max_line_bytes:
        raise InputError(line_too_long(limits))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return check_text(text, "line", limits, allow_empty=True)


def read_lines(stream: BinaryIO, limits: Limits = LIMITS) -> Iterator[tuple[int, str | InputError]]:
    """(line number, text or the InputError that refuses it) for each line of a byte stream.

    Memory stays bounded whatever the input: a line longer than the limit is read in chunks and
    thrown away up to its newline, so a gigabyte without a newline costs one error, not a
    gigabyte. Blank lines are yielded as "" for the caller to decide on.
    """
    number = 0
    while True:
        raw = stream.readline(limits.max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > limits.max_line_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
                raw = stream.readline(1 << 20)
            yield number, InputError(line_too_long(limits))
            continue
        try:
            yield number, decode_line(raw, limits)
        except InputError as exc:
            yield number, exc


def read_regular_file(path, max_bytes: int, error=InputError, name: str | None = None, kind: str = "a file") -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or `error("name: why")`.

    Devices, FIFOs and sockets are refused from `stat` before opening (a symlink to /dev/zero
    would read forever, a FIFO would block forever); the file is opened non-blocking and checked
    again on the open descriptor, so swapping it after the first look does not get around that.
    """
    name = name or str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except OSError as exc:
        raise error(f"{name}: cannot read ({exc.strerror or exc})") from None
    _require_regular(info, name, max_bytes, error, kind)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{name}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        _require_regular(os.fstat(fd), name, max_bytes, error, kind)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read
        raise error(f"{name}: is larger than {max_bytes:,} bytes")
    return data


def require_regular_file(path, name: str, max_bytes: int | None = None, error=InputError) -> None:
    """Refuse a path that is missing or not a regular file (device, FIFO, socket, folder)."""
    try:
        info = os.stat(path)
    except OSError:
        raise error(f"{name}: no such file") from None
    _require_regular(info, name, max_bytes, error)


def _require_regular(info: os.stat_result, name: str, max_bytes: int | None, error, kind: str = "a file") -> None:
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{name}: is a directory, not {kind}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{name}: is not a regular file (a device, FIFO or socket); guard reads regular files only")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"{name}: is {info.st_size:,} bytes, more than guard reads ({max_bytes:,})")
