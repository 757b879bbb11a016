"""Request `input` values (OpenAI moderation shapes) into guard inputs, within the limits.

Accepted: a string; a list of strings (one input each); or a list of content parts
`{"type": "text", "text": ...}` / `{"type": "image_url", "image_url": {"url": "data:..."}}`, which
together make ONE input (texts joined by newlines, images in order), as in OpenAI's API.
`/v1/check` also takes `messages`, one conversation (guard.policy.conversation), and a text over
`max_chars` as a document (up to `max_document_chars`), checked window by window
(guard.check.documents); `/v1/moderations` refuses it (413 `max_chars`).

Images come only as base64 `data:` URLs. The server never fetches a URL and never opens a path a
request names: anything else is refused before any work is done.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass, field

from guard.errors import InputError
from guard.limits import check_document_fields, check_fields
from guard.models.images import GuardImage, ImageError, decode_image
from guard.policy.conversation import parse_messages
from guard.serve.limits import LimitError, ServiceLimits, bad_request, check_item_count, check_text

DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


@dataclass
class RequestItem:
    """One input to check: text for the prompt's {text} (None: none given) and decoded images."""

    param: str  # where it was in the request, for error messages: input, input[2]
    text: str | None
    images: list[GuardImage] = field(default_factory=list)
    messages: list[dict] | None = None  # a conversation (`/v1/check`'s `messages`), validated
    document: bool = False  # a text over max_chars (`/v1/check`): checked window by window

    def fields(self) -> dict:
        """What `GuardSet.check_batch` takes for this input."""
        if self.messages is not None:
            return {"messages": self.messages}
        item: dict = {} if self.text is None else {"text": self.text}
        if self.images:
            item["images"] = self.images
        return item

    @property
    def input_types(self) -> list[str]:
        if self.messages is not None:
            return ["text"]
        return (["text"] if self.text is not None else []) + (["image"] if self.images else [])

    @property
    def recorded_text(self) -> str | None:
        """The text an audit row hashes (and keeps with --audit-text): a conversation as its JSON."""
        if self.messages is not None:
            return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)
        return self.text


def parse_input(value, limits: ServiceLimits, documents: bool = False) -> list[RequestItem]:
    """The inputs of one request, in order; raises ApiError (400/413) naming what is wrong.
    `documents`: a text over max_chars is a document (up to max_document_chars), not a 413.

    Each input passes the library's own input checks here (NUL characters, lone surrogates, ...),
    before it joins a batch: a bad input is this request's 400, and never fails a shared batch
    that would then have to be run again one input at a time."""
    if isinstance(value, str):
        items = [_text_item(value, "input", limits, documents)]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        check_item_count(len(value), limits)
        items = [_text_item(v, f"input[{i}]", limits, documents) for i, v in enumerate(value)]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = [_parts_item(value, limits)]
    elif isinstance(value, list) and not value:
        raise bad_request("input is an empty list: nothing to check", "input")
    else:
        raise bad_request(
            "input must be a string, a list of strings, or a list of content parts "
            '({"type": "text", ...} / {"type": "image_url", ...})',
            "input",
        )
    return items


def parse_conversation(value, limits: ServiceLimits) -> list[RequestItem]:
    """`/v1/check`'s `messages`: one conversation (guard.policy.conversation), its turns' text
    within the server's `max_chars` together; raises ApiError (400/413) naming what is wrong."""
    try:
        turns = parse_messages(value)
    except InputError as exc:
        raise bad_request(str(exc), "messages", code="invalid_messages") from None
    check_text("".join(turn.text for turn in turns), limits, "messages")
    return [RequestItem("messages", None, messages=[{"role": t.role, "content": t.text} for t in turns])]


def _text_item(text: str, param: str, limits: ServiceLimits, documents: bool = False) -> RequestItem:
    document = documents and len(text) > limits.max_chars
    if document and len(text) > limits.max_document_chars:
        raise LimitError(
            "max_document_chars",
            f"{param} has {len(text):,} characters; the limit is {limits.max_document_chars:,} (a document)",
            param=param,
        )
    if not document:
        check_text(text, limits, param)
    if not text.strip():
        raise bad_request(f"{param} is empty: nothing to check", param, code="empty_input")
    return _checked(RequestItem(param, text, document=document))


def _checked(item: RequestItem) -> RequestItem:
    """The item, if the library would take it; else a 400 naming it."""
    try:
        check_document_fields(item.fields()) if item.document else check_fields(item.fields())
    except InputError as exc:
        raise bad_request(f"{item.param}: {exc}", item.param, code="invalid_text") from None
    return item


def _parts_item(parts: list[dict], limits: ServiceLimits) -> RequestItem:
    texts: list[str] = []
    images: list[GuardImage] = []
    for i, part in enumerate(parts):
        param = f"input[{i}]"
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f'{param}.text must be a string (a part {{"type": "text", "text": "..."}})', param)
            texts.append(text)
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url  # {"url": ...} as OpenAI, or the string
            if not isinstance(url, str):
                raise bad_request(f'{param}.image_url must be {{"url": "data:image/...;base64,..."}}', param)
            if len(images) >= limits.max_images:
                raise LimitError(
                    "max_images", f"the input has more than {limits.max_images} images (the limit)", param=param
                )
            images.append(decode_data_url(url, f"{param}.image_url", limits))
        else:
            raise bad_request(f"{param}.type must be 'text' or 'image_url', not {kind!r}", param)
    text = "\n".join(texts)
    check_text(text, limits, "input")
    if not text.strip() and not images:
        raise bad_request("input is empty: nothing to check", "input", code="empty_input")
    return _checked(RequestItem("input", text if texts else None, images))


def decode_data_url(url: str, param: str, limits: ServiceLimits) -> GuardImage:
    """A `data:image/...;base64,...` URL decoded into a GuardImage, within the image limits."""
    match = DATA_URL.match(url)
    if not match:
        what = "a URL to fetch" if re.match(r"[a-z][\w+.-]*://", url, re.I) else "not a data: URL"
        raise bad_request(
            f"{param}: images must be base64 data URLs (data:image/png;base64,...); {what} is refused: "
            "the server never fetches URLs or reads files",
            param,
            code="invalid_image_url",
        )
    if not match["b64"]:
        raise bad_request(f"{param}: the data URL must be base64 (data:image/png;base64,...)", param, "invalid_image")
    payload = url[match.end() :]
    # base64 is 4 characters per 3 bytes: refuse an oversized image before decoding it
    if len(payload) * 3 // 4 > limits.max_image_bytes + 2:
        raise _image_too_big(len(payload) * 3 // 4, param, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{param}: the data URL is not valid base64", param, "invalid_image") from None
    if len(data) > limits.max_image_bytes:
        raise _image_too_big(len(data), param, limits)
    _check_pixels(data, param, limits)
    try:
        return decode_image(data, param, max_pixels=limits.max_image_pixels)
    except ImageError as exc:
        raise bad_request(str(exc), param, "invalid_image") from None


def _image_too_big(size: int, param: str, limits: ServiceLimits) -> LimitError:
    return LimitError(
        "max_image_bytes",
        f"{param}: the image has {size:,} bytes; the limit is {limits.max_image_bytes:,}",
        param=param,
    )


def _check_pixels(data: bytes, param: str, limits: ServiceLimits) -> None:
    """Read only the header: refuse too many pixels before anything is decoded."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above any sane limit
        raise LimitError(
            "max_image_pixels",
            f"{param}: the image has too many pixels; the limit is {limits.max_image_pixels:,}",
            param=param,
        ) from None
    except Exception:
        return  # not an image at all: decode_image says so in its own words
    if width * height > limits.max_image_pixels:
        raise LimitError(
            "max_image_pixels",
            f"{param}: the image has {width}x{height} = {width * height:,} pixels; the limit is "
            f"{limits.max_image_pixels:,}",
            param=param,
        )
