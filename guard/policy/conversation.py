"""Conversations (issue 23): an OpenAI-style message list, validated, its judged turns chosen by a
policy's `judge` key, and each judged turn rendered into prompt fields.

A message list is `[{"role": "user"|"assistant"|"system"|"tool", "content": str or parts}]`, the
content a string or a list of `{"type": "text", "text": ...}` parts (joined by newlines; any other
part is refused: conversations are checked as text). Other keys of a message (`name`,
`tool_call_id`, ...) are ignored. A policy judges:

- `last_user` (the default): the last user turn;
- `last_assistant`: the last assistant turn;
- `every_turn`: every turn but the system's, one verdict each.

The judged turn fills {text}; a policy with `context_turns: N` also sees the N turns before it
in {context}, one turn a line as `role: text`, a turn's later lines indented by two spaces, so a
turn cannot forge a line that starts another turn, and then escaped as the policy's other fields.
A policy over a request and its answer (a prompt with {prompt} and {response}, such as the shipped
response-harm) reads the judged turn as {response} and the last user turn before it as {prompt}.
Pure functions: nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from guard.errors import InputError
from guard.limits import LIMITS, check_text

ROLES = ("user", "assistant", "system", "tool")
JUDGES = ("last_user", "last_assistant", "every_turn")
DEFAULT_JUDGE = "last_user"
NO_CONTEXT = "(no earlier turns)"  # {context} of a turn with none before it


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else default


MAX_TURNS = _env_int("GUARD_MAX_TURNS", 256)  # messages in one conversation
MAX_CONVERSATION_CHARS = _env_int("GUARD_MAX_CONVERSATION_CHARS", 4 * 32_768)  # all turns' text together


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: its position (from 0), role and text."""

    index: int
    role: str
    text: str

    def ref(self) -> dict:
        """How a verdict names the turn it judged."""
        return {"index": self.index, "role": self.role}


@dataclass(frozen=True)
class Setting:
    """How a policy reads a conversation: which turns it judges, and how many turns before each it sees."""

    judge: str = DEFAULT_JUDGE
    context_turns: int = 0
    answers: bool = False  # the prompt pairs a request and its answer ({prompt}, {response})


def parse_messages(value, what: str = "messages") -> list[Turn]:
    """A message list as Turns, or InputError naming the first thing wrong with it (not a list,
    empty, too many turns or characters, an unknown role, content that is not text)."""
    if not isinstance(value, list):
        raise InputError(f"{what} must be a list of messages, not {type(value).__name__}")
    if not value:
        raise InputError(f"{what} is an empty list: nothing to check")
    if len(value) > MAX_TURNS:
        raise InputError(f"{what} has {len(value):,} turns (guard checks up to {MAX_TURNS:,}; GUARD_MAX_TURNS)")
    turns, total = [], 0
    for i, message in enumerate(value):
        where = f"{what}[{i}]"
        if not isinstance(message, dict):
            raise InputError(f'{where} must be an object {{"role": ..., "content": ...}}')
        role = message.get("role")
        if role not in ROLES:
            raise InputError(f"{where}.role must be one of: {', '.join(ROLES)} (not {_shown(role)})")
        text = _content_text(message.get("content"), f"{where}.content")
        total += len(text)
        if total > MAX_CONVERSATION_CHARS:
            raise InputError(
                f"{what} is too long: over {MAX_CONVERSATION_CHARS:,} characters in all (GUARD_MAX_CONVERSATION_CHARS)"
            )
        turns.append(Turn(i, role, text))
    return turns


def _shown(value) -> str:
    """A user's value in an error message, short and on one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _content_text(content, where: str) -> str:
    """A message's content as text: a string, text parts joined by newlines, or "" for null
    (an assistant turn that only calls tools)."""
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(
                    f'{where}[{j}] must be a text part {{"type": "text", "text": "..."}} (conversations are checked as text)'
                )
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise InputError(f"{where} must be a string or a list of text parts, not {type(content).__name__}")
    # NUL, lone surrogates, one turn over the text limit: refused as a text would be
    return check_text(content, where, LIMITS, allow_empty=True)


def judged_turns(turns: list[Turn], judge: str) -> list[Turn]:
    """The turns a policy with this `judge` gives verdicts on, in order, or InputError when the
    conversation has none (no user turn for `last_user`, say). Blank turns are never judged."""
    said = [turn for turn in turns if turn.text.strip()]
    if judge == "every_turn":
        found = [turn for turn in said if turn.role != "system"]
    else:
        role = judge.removeprefix("last_")
        found = [turn for turn in said if turn.role == role][-1:]
    if not found:
        wanted = "non-system" if judge == "every_turn" else judge.removeprefix("last_")
        raise InputError(f"messages: no {wanted} turn with text to judge (the policy judges '{judge}')")
    return found


def render_context(turns: list[Turn], index: int, count: int) -> str:
    """The (up to) `count` non-blank turns before turn `index`, one a line as `role: text`, a
    turn's later lines indented by two spaces; NO_CONTEXT when there are none."""
    if count <= 0:
        return ""
    before = [turn for turn in turns[:index] if turn.text.strip()][-count:]
    if not before:
        return NO_CONTEXT
    return "\n".join(f"{turn.role}: " + "\n  ".join(turn.text.strip().splitlines()) for turn in before)


def turn_fields(turns: list[Turn], turn: Turn, setting: Setting) -> dict:
    """The prompt fields for judging `turn`: {text}, and {context} when the policy sees context;
    for a request-and-answer policy, {response} (the turn) and {prompt} (the user turn before it)."""
    if setting.answers:
        asked = [t for t in turns[: turn.index] if t.role == "user" and t.text.strip()]
        if not asked:
            raise InputError("no user turn before the judged answer to fill {prompt}")
        return {"prompt": asked[-1].text, "response": turn.text}
    fields = {"text": turn.text}
    if setting.context_turns:
        fields["context"] = render_context(turns, turn.index, setting.context_turns)
    return fields


def exemplar_fields(messages, setting: Setting, origin: str) -> dict:
    """The prompt fields of a labelled conversation (an exemplar or an eval item): its last turn
    is the one judged, whatever the policy's `judge`; InputError is re-raised by the caller."""
    turns = parse_messages(json.loads(messages) if isinstance(messages, str) else messages, f"{origin}: messages")
    last = turns[-1]
    if not last.text.strip():
        raise InputError(f"{origin}: the last message (the judged turn) has no text")
    return turn_fields(turns, last, setting)


def read_conversation(path: str) -> dict:
    """`guard check --messages PATH|-`: a JSON file (or stdin) holding one message list, or an
    object with a `messages` list, as an input's fields; InputError when it cannot be used."""
    import sys

    from guard.limits import read_regular_file

    most = 8 * MAX_CONVERSATION_CHARS + 65_536  # JSON's escapes take up to 6 bytes a character
    if path == "-":
        data = sys.stdin.buffer.read(most + 1)
        name = "stdin"
    else:
        data = read_regular_file(path, most, name=path)
        name = path
    if len(data) > most:
        raise InputError(
            f"{name}: more than {most:,} bytes; a conversation holds at most {MAX_CONVERSATION_CHARS:,} characters"
        )
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    turns = parse_messages(value, f"{name}: messages")
    return {"messages": [{"role": turn.role, "content": turn.text} for turn in turns]}
