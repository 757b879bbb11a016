"""`POST /v1/check/stream`: an answer checked while it is generated (issue 23).

The request body is NDJSON (`Content-Type: application/x-ndjson`), sent as the answer is
generated: one JSON object a line, each `{"text": "the next chunk"}`; the first line may also set
`"policies"` (a name or a list) and `"every"` (tokens between checks, default 16). The server reads
the lines as they arrive and, every `every` tokens, checks the answer's newest complete sentences
(guard.check.stream.AnswerStream) through the service's batcher, like any `/v1/check` input. At
the first flagged check it stops reading and answers at once, so a chat service can stop the
answer there; otherwise it answers when the body ends, after a last check of what came since the
last one. The answer is one JSON object:

    {"id", "policies", "flagged", "stopped": true when it answered before the body ended,
     "characters": characters of answer read, "checks": checks run,
     "result": {"flagged", "verdicts": {policy: verdict naming its "window" in the answer}}}

A line that is not a JSON object with a string "text" is a 400; the answer may be as long as a
document (GUARD_MAX_DOCUMENT_CHARS, else 413); each line must come within the body timeout.
"""

from __future__ import annotations

import asyncio
import json
import time

from guard.check.stream import EVERY_TOKENS, AnswerStream
from guard.limits import LIMITS
from guard.serve.inputs import RequestItem
from guard.serve.limits import ApiError, LimitError, bad_request, check_body_size
from guard.serve.service import Service

NDJSON_TYPES = {"application/x-ndjson", "application/jsonl", "application/json-lines", "application/json"}


async def check_stream(request, service: Service, api_key: str | None) -> dict:
    """The route's answer (see the module docstring) for an authorised request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in NDJSON_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body must be NDJSON sent as Content-Type: application/x-ndjson (not {content_type or 'none'!r})",
        )
    lines = _lines(request, service)
    first = await _next(lines, service)
    if first is None:
        raise bad_request("the body holds no line: send one JSON object a line, each with a 'text'", "text")
    policies = service.resolve_policies(first.get("policies"), "policies")
    every = first.get("every", EVERY_TOKENS)
    if not isinstance(every, int) or isinstance(every, bool) or not 1 <= every <= 4096:
        raise bad_request("'every' must be a whole number of tokens from 1 to 4096", "every")
    stream = AnswerStream(service.guards.select(policies), every=every)
    last: tuple[RequestItem, object] | None = None
    line, stopped = first, False
    while line is not None:
        chunk = line.get("text")
        if not isinstance(chunk, str):
            raise bad_request("each line needs a 'text' string: the next chunk of the answer", "text")
        if len(stream.text) + len(chunk) > LIMITS.max_document_chars:
            raise LimitError("max_document_chars", f"the answer is over {LIMITS.max_document_chars:,} characters")
        if stream.add(chunk) and stream.ready():
            last = await _check(service, stream, policies, stream.tail(), request)
            if stream.flagged:
                stopped = True
                break
        line = await _next(lines, service)
    if not stopped and stream.closing():
        last = await _check(service, stream, policies, stream.tail(complete=False), request)
    if last is not None:
        state = request.state
        await service.record(
            state.server_request_id,
            "check/stream",
            [last[0]],
            [last[1]],
            api_key,
            client_request_id=state.client_request_id,
            deadline=state.started + service.config.limits.timeout_s,
        )
    result = {name: verdict.to_dict() for name, verdict in (stream.result or {}).items()}
    return {
        "id": f"chk-{request.state.request_id}",
        "policies": list(policies),
        "flagged": stream.flagged,
        "stopped": stopped,
        "characters": len(stream.text),
        "checks": stream.checks,
        "result": {"flagged": stream.flagged, "verdicts": result},
    }


async def _check(service: Service, stream: AnswerStream, policies, span, request):
    """Check the window at `span` through the batcher, and record it in the stream."""
    item = RequestItem("text", stream.text[span[0] : span[1]])
    started = time.monotonic()
    (outcome,) = await service.check([item], policies, deadline=started + service.config.limits.timeout_s)
    stream.take(outcome.verdicts, span)
    return item, outcome


async def _lines(request, service: Service):
    """The body's JSON objects, one a line, as they arrive."""
    pending = b""
    async for data in request.stream():
        pending += data
        check_body_size(len(pending), service.config.limits)  # one line at most a whole body
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            if raw.strip():
                yield _parse(raw)
    if pending.strip():
        yield _parse(pending)


async def _next(lines, service: Service):
    """The next line, or None at the body's end; a 408 when none comes within the body timeout."""
    timeout = service.config.body_timeout_s
    try:
        return await asyncio.wait_for(anext(lines), timeout=timeout)
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"no line of the answer came within {timeout:g} s (the body timeout)",
            headers={"Connection": "close"},
        ) from None


def _parse(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise bad_request(f"a line of the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(value, dict):
        raise bad_request("each line of the body must be a JSON object", code="invalid_json")
    return value
