"""What one request may ask of the server, and the 4xx errors that say which limit it passed.

Every refusal is an `ApiError` with an HTTP status, a stable `code` (the limit's name for limits)
and a one-line message; the app turns it into an OpenAI-style `{"error": {...}}` body. Keeping
the numbers and the checks here, in one place, lets them move to the library's own input limits
later without touching the routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.limits import LIMITS

MiB = 1024 * 1024
# /v1/check's default for one document: the library's GUARD_MAX_DOCUMENT_CHARS, at most a million
# characters (about 4,000 windows: minutes of CPU, so a request needs a long --timeout anyway)
DOCUMENT_CHARS = min(1_000_000, LIMITS.max_document_chars)
JSON_BYTES_PER_CHAR = 6  # a character escaped in JSON ("\u00e9"); raw UTF-8 takes at most 4


@dataclass(frozen=True)
class ServiceLimits:
    max_body_bytes: int = 8 * MiB  # the whole request body, base64 images included
    max_items: int = 64  # inputs in one request
    max_chars: int = 20_000  # characters of text in one input (/v1/check: longer ones are documents)
    max_document_chars: int = DOCUMENT_CHARS  # characters of one document (/v1/check, window by window)
    max_tokens: int = 2048  # tokens of text in one input (the policy prompt around it not counted)
    max_image_bytes: int = 5 * MiB  # one image, decoded from base64
    max_image_pixels: int = 4096 * 4096  # one image, width x height
    max_images: int = 8  # images in one input
    timeout_s: float = 30.0  # from arrival to verdicts; then 504

    @property
    def document_body_bytes(self) -> int:
        """The body limit of /v1/check, which takes documents: room for one at its longest, escaped."""
        return self.max_body_bytes + JSON_BYTES_PER_CHAR * self.max_document_chars


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and the error body to send."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.kind = kind
        self.headers = headers or {}

    def body(self, request_id: str | None = None) -> dict:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        if request_id:
            error["request_id"] = request_id
        return {"error": error}


class LimitError(ApiError):
    """A request over one of the `ServiceLimits`; `code` is the limit's name (max_chars, ...)."""

    def __init__(self, limit: str, message: str, *, param: str | None = None, status: int = 413):
        super().__init__(status, limit, message, param=param)
        self.limit = limit


def bad_request(message: str, param: str | None = None, code: str = "invalid_input") -> ApiError:
    return ApiError(400, code, message, param=param)


def check_text(text: str, limits: ServiceLimits, param: str) -> None:
    if len(text) > limits.max_chars:
        raise LimitError(
            "max_chars", f"{param} has {len(text):,} characters; the limit is {limits.max_chars:,}", param=param
        )


def check_tokens(count: int, limits: ServiceLimits, param: str) -> None:
    if count > limits.max_tokens:
        raise LimitError("max_tokens", f"{param} has {count:,} tokens; the limit is {limits.max_tokens:,}", param=param)


def check_item_count(count: int, limits: ServiceLimits) -> None:
    if count > limits.max_items:
        raise LimitError(
            "max_items", f"the request has {count:,} inputs; the limit is {limits.max_items:,}", param="input"
        )
    if count == 0:
        raise bad_request("input is empty: nothing to check", "input")


def check_body_size(size: int, limits: ServiceLimits, most: int | None = None) -> None:
    """Refuse a body over `most` bytes (default: max_body_bytes; /v1/check's is larger, for documents)."""
    most = limits.max_body_bytes if most is None else most
    if size > most:
        raise LimitError("max_body_bytes", f"the request body has more than {most:,} bytes (the limit)")
