"""Checking what `guard check` is given, on either engine: a text, a conversation (`--messages`),
image files, and the lines of stdin (one text a line), checked by the compiled policies on their model (torch) or by an ONNX
export; outcomes come in input order, a list at a time, for the caller to print as they come.

The rules, the same from Python as from the command line:
- a usage error (nothing to check, --prompt without images, a text model given images, an engine
  that cannot do what is asked) is a GuardError before anything loads;
- on the torch engine, stdin's first lines that cannot be checked (too long, not UTF-8, empty, a
  NUL) are refused as they are read, before the database and the model: when no other line
  follows, nothing loads; the rest stream through the scanner, a window at a time;
- on the ONNX engine stdin is read whole; a blank or undecodable line is an error in its place.

It sits with the scanner rather than in guard.check because it reads stdin with the scanner's
readers and runs the ONNX engine too, both a layer above guard.check.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guard.errors import GuardError, InputError
from guard.limits import LIMITS, check_document_fields, check_fields, read_regular_file
from guard.onnx.choice import wants_onnx
from guard.scanning.readers import Shard, read_text

if TYPE_CHECKING:
    from guard.check.engine import CheckResult


@dataclass
class Request:
    """What to check: a text, image files (with the text that goes with each), stdin's lines."""

    text: str | None = None
    images: Sequence[str] = ()
    prompt: str | None = None
    stdin: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # other prompt {fields} of the one input (--field)
    messages: str | None = None  # a conversation: a JSON file of messages, or "-" for stdin
    file: str | None = None  # a whole document in a file (guard.check.documents past one check)


@dataclass
class Outcome:
    """One checked input: where it came from ({} for the text, {"image": path}, {"line": n}), its
    name for people (the text, the path), and its result, or why it could not be checked."""

    origin: dict
    name: str
    result: CheckResult | None = None
    error: str | None = None


@dataclass
class Engine:
    """Which engine checks, and how: torch (compiled `policies` from `db` on their model) or,
    with `onnx_dir`, an ONNX export (`engine` says which; None: ONNX when onnx_dir is given)."""

    db: str | None = None
    policies: Sequence[str] | None = None
    engine: str | None = None
    onnx_dir: str | None = None
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 16
    threads: int | None = None
    explain: bool = False
    on_load: Callable[[], None] = field(default=lambda: None)  # called just before a model loads
    warn: Callable[[str], None] = field(default=lambda message: None)  # a note that does not stop the check


def check_lines(request: Request, engine: Engine) -> Iterator[list[Outcome]]:
    """The outcomes of every input, in order: the text, then the images, then stdin's lines."""
    items = given_items(request)
    if wants_onnx(engine.engine, engine.onnx_dir):
        yield from onnx_outcomes(items, request.stdin, engine)
        return
    rest = None
    if request.stdin and not items:
        rest, refused = yield from refuse_leading_lines()
        if rest is None and refused:
            return  # every line refused: nothing loads
    yield from torch_outcomes(items, request, engine, rest)


def given_items(request: Request) -> list[tuple[dict, str, dict]]:
    """(origin, name, fields) of the text and the images; usage errors refused."""
    items = []
    if request.fields and request.file is None:  # one input of named fields ({prompt}, ...), with the text if given
        given = {**request.fields, **({} if request.text is None else {"text": request.text})}
        name = request.text if request.text is not None else " | ".join(f"{k}: {v}" for k, v in request.fields.items())
        items.append(({}, name, check_fields(given)))
    elif request.text is not None:
        items.append(({}, request.text, check_fields({"text": request.text})))
    if request.file is not None:
        document = {**request.fields, "text": read_document(request.file)}
        items.append(({"file": request.file}, request.file, check_document_fields(document)))
    if request.images:
        from guard.models.images import load_image

        fields = {} if request.prompt is None else check_fields({"text": request.prompt})
        items.extend(({"image": path}, path, {**fields, "images": [load_image(path)]}) for path in request.images)
    elif request.prompt is not None:
        raise GuardError(
            "--prompt goes with images: guard check IMAGE... --prompt TEXT (use --text TEXT for a text alone)"
        )
    if request.messages is not None:
        if request.stdin and request.messages == "-":
            raise GuardError("stdin holds either lines ('-') or a conversation (--messages -), not both")
        from guard.policy.conversation import read_conversation

        items.append(({"messages": request.messages}, request.messages, read_conversation(request.messages)))
    if not items and not request.stdin:
        raise GuardError(
            "nothing to check: give --text TEXT, --field NAME=VALUE, --messages FILE, --file PATH, image files, or '-'"
            " to read lines from stdin"
        )
    return items


def read_document(path: str) -> str:
    """The text of a document file (UTF-8, a regular file), checked against guard.limits: one
    check's length or, past it, a document's (`max_document_chars`); else InputError."""
    raw = read_regular_file(path, LIMITS.max_document_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        return check_document_fields({"text": text})["text"]
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def refuse_leading_lines():
    """Read stdin up to its first line that guard.limits lets through, yielding an error outcome
    for each line before it. Returns (the rest of stdin's lines, that line first, or None at the
    end of stdin; the number of lines refused). Imports nothing heavy."""
    lines, refused = read_text(Shard("-", "text")), 0
    for item in lines:
        reason = item.error
        if reason is None:
            try:
                check_fields(item.fields)
            except InputError as exc:
                reason = str(exc)
        if reason is None:
            return itertools.chain([item], lines), refused
        refused += 1
        yield [Outcome({"line": item.id}, "", error=reason)]
    return None, refused


def torch_outcomes(items, request: Request, engine: Engine, rest) -> Iterator[list[Outcome]]:
    """The compiled policies on their model: the given items in one batch, then stdin (`rest`,
    what is left of it, or all of it when None) through the scanner, a window at a time."""
    from guard.check.engine import GuardSet
    from guard.models import set_threads
    from guard.scanning.scanner import WINDOW_BATCHES, check_items, windows
    from guard.store.database import Store

    engine.on_load()
    artifacts = Store.open(engine.db).load_artifacts(engine.policies)
    refuse_images(artifacts, request)  # before the model loads: a usage error should cost nothing
    set_threads(engine.threads)
    guards = GuardSet.with_model(artifacts, device=engine.device, dtype=engine.dtype)
    for warning in guards.warnings:
        engine.warn(warning)
    size, explain = engine.batch_size, engine.explain
    if items:
        results = guards.check_batch(
            [f for _, _, f in items], batch_size=size, progress=len(items) > size or bool(request.file), explain=explain
        )
        yield [Outcome(origin, name, result) for (origin, name, _), result in zip(items, results)]
    if not request.stdin:
        return
    for chunk in windows(read_text(Shard("-", "text")) if rest is None else rest, size * WINDOW_BATCHES):
        outcomes = check_items(guards, chunk, size, explain=explain)
        yield [
            Outcome({"line": item.id}, "", error=outcome)
            if isinstance(outcome, str)
            else Outcome({"line": item.id}, item.fields["text"], outcome)
            for item, outcome in zip(chunk, outcomes)
        ]


def refuse_images(artifacts, request: Request) -> None:
    """Images for a policy that cannot take them, or without the text its prompt needs."""
    from guard.models.architectures import ARCHITECTURES
    from guard.policy import template_fields

    if not request.images:
        return
    for art in artifacts:
        if request.prompt is None and "text" in template_fields(art.prompt):
            raise GuardError(
                f"policy '{art.name}' puts text with each image ({{text}} in its prompt): add --prompt TEXT"
            )
        arch = ARCHITECTURES.get(art.model_info.get("model_type"))
        if arch is not None and not arch.multimodal:  # unknown: let the model say
            raise GuardError(
                f"policy '{art.name}' runs on '{art.model_reference}', which is a text model; it cannot take images"
            )


def onnx_outcomes(items, stdin: bool, engine: Engine) -> Iterator[list[Outcome]]:
    """An ONNX export on onnxruntime: texts only, one exported policy; stdin read whole, a blank or
    undecodable line an error in its place. Results shaped as the torch engine's."""
    if stdin:
        for line in read_text(Shard("-", "text")):
            text = line.fields.get("text", "")
            error = line.error or (None if text.strip() else "empty text: nothing to check")
            items.append(({"line": line.id}, error or text, None if error else {"text": text}))
    if engine.policies and len(engine.policies) > 1:
        raise GuardError("the ONNX engine checks one exported policy at a time")
    if any(fields and "images" in fields for _, _, fields in items):
        raise GuardError("the ONNX engine checks text only; check images with the torch engine")
    engine.on_load()
    from guard.check.engine import CheckResult
    from guard.onnx.engine import open_export

    onnx = open_export(engine.onnx_dir, engine.policies, threads=engine.threads)
    texts = [f for _, _, f in items if f is not None]
    verdicts = iter(onnx.check_batch(texts, batch_size=engine.batch_size, explain=engine.explain))
    yield [
        Outcome(origin, "", error=name)
        if fields is None
        else Outcome(origin, name, CheckResult({onnx.name: next(verdicts)}))
        for origin, name, fields in items
    ]
