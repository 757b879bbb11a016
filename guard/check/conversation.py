"""Checking a conversation (a `messages` input; guard.policy.conversation): each policy judges the
turns its `judge` key names, each turn with the `context_turns` before it, and its verdict names
the turn it judged (`turn: {"index", "role"}`).

An input `{"messages": [...]}` is prepared once per engine: for each distinct conversation setting
among the engine's policies, every judged turn becomes an ordinary input (its prompt fields from
`turn_fields`) prepared by that setting's policies, so a turn is rendered, escaped, limit-checked
and tokenised as any text is. Checking runs those inputs through the same engine's
`check_prepared` (forwards shared with other inputs of the same setting) and folds them back: a
`last_user` / `last_assistant` policy's verdict is its one turn's; an `every_turn` policy's verdict
lists every turn's (`turns`) and is the flagged turn with the highest calibrated probability of its
label (else the highest vote margin; the earlier turn on ties), or the last turn's when none is
flagged. Engine-agnostic: the torch and the ONNX engine both call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from guard.check.prepared import Prepared
from guard.errors import InputError
from guard.policy.conversation import NO_CONTEXT, Setting, Turn, judged_turns, parse_messages, turn_fields

# guard.check.engine (and guard.check.protocol, which names its types) import this module: their
# types are named here, not imported
Engine = Any  # guard.check.protocol.Engine: a GuardSet, a Guard, an OnnxGuard
Verdict = Any  # guard.check.engine.Verdict
Wrap = Callable[[list[tuple[str, Verdict]]], Any]  # (policy, verdict) pairs -> a CheckResult


@dataclass(frozen=True)
class PreparedConversation(Prepared):
    """A conversation ready for `check_prepared`: its turns, and per conversation setting, each
    judged turn with its prepared input (the policies of that setting: `names`)."""

    turns: tuple[Turn, ...] = ()
    judged: dict[Setting, list[tuple[Turn, Prepared]]] = field(default_factory=dict)
    names: dict[Setting, list[str]] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return max((p.tokens for pairs in self.judged.values() for _, p in pairs), default=0)


def is_conversation(fields: dict) -> bool:
    return "messages" in fields


def with_context(engine: Engine, fields: dict) -> dict:
    """A plain input (no `messages`) to policies that show context is a conversation of one turn:
    its {context} says there are no earlier turns, as for a plain exemplar (unless given)."""
    if "context" in fields or not any(art.conversation.context_turns for art in engine.artifacts):
        return fields
    return {**fields, "context": NO_CONTEXT}


def settings_of(engine: Engine) -> dict[Setting, list[str]]:
    """The engine's policies by conversation setting, in policy order."""
    out: dict[Setting, list[str]] = {}
    for art in engine.artifacts:
        out.setdefault(art.conversation, []).append(art.name)
    return out


def prepare_conversation(engine: Engine, fields: dict) -> PreparedConversation:
    """A `{"messages": [...]}` input (other text fields go with every turn) ready for the engine,
    or InputError: a malformed message list, no turn to judge, a turn too long for the prompt."""
    if fields.get("images"):
        raise InputError("a conversation is checked as text: give 'messages' without images")
    turns = parse_messages(fields["messages"])
    extra = {k: v for k, v in fields.items() if k not in ("messages", "images")}
    judged, names = {}, settings_of(engine)
    for setting, policies in names.items():
        part = engine.select(policies)
        pairs = []
        for turn in judged_turns(turns, setting.judge):
            try:
                pairs.append((turn, part.prepare({**extra, **turn_fields(turns, turn, setting)})))
            except InputError as exc:
                raise InputError(f"messages[{turn.index}]: {exc}") from None
        judged[setting] = pairs
    messages = [{"role": t.role, "content": t.text} for t in turns]
    return PreparedConversation({"messages": messages}, turns=tuple(turns), judged=judged, names=names)


def check_mixed(engine: Engine, prepared: Sequence[Prepared], wrap: Wrap, **options) -> list:
    """`check_prepared` for a list that holds conversations: the plain inputs together, then the
    conversations (`check_conversations`), results in input order."""
    plain = [i for i, p in enumerate(prepared) if not isinstance(p, PreparedConversation)]
    talks = [i for i, p in enumerate(prepared) if isinstance(p, PreparedConversation)]
    out: list = [None] * len(prepared)
    if plain:
        for i, result in zip(plain, engine.check_prepared([prepared[i] for i in plain], **options)):
            out[i] = result
    for i, result in zip(talks, check_conversations(engine, [prepared[i] for i in talks], wrap, **options)):
        out[i] = result
    return out


def check_conversations(engine: Engine, talks: Sequence[PreparedConversation], wrap: Wrap, **options) -> list:
    """One CheckResult (made by `wrap`) per conversation: each policy's verdict on the turn(s) it judges."""
    per_policy: list[dict[str, Verdict]] = [{} for _ in talks]
    for setting, policies in settings_of(engine).items():
        keys = [(n, turn) for n, talk in enumerate(talks) for turn, _ in talk.judged[setting]]
        inputs = [p for talk in talks for _, p in talk.judged[setting]]
        results = engine.select(policies).check_prepared(inputs, **options)
        for name in policies:
            by_talk: list[list[Verdict]] = [[] for _ in talks]
            for (n, turn), result in zip(keys, results):
                by_talk[n].append(replace(result[name], turn=turn.ref()))
            for n, verdicts in enumerate(by_talk):
                per_policy[n][name] = fold(verdicts, setting.judge)
    return [wrap([(name, found[name]) for name in engine.names]) for found in per_policy]


def fold(verdicts: list[Verdict], judge: str) -> Verdict:
    """One policy's verdict on a conversation from its turn verdicts (see the module docstring)."""
    if judge != "every_turn":
        return verdicts[0]
    flagged = [j for j, v in enumerate(verdicts) if v.flagged]

    def strength(j: int) -> tuple[float, float, int]:
        v = verdicts[j]
        return ((v.calibrated or {}).get(v.label, 0.0), v.margin, -j)

    chosen = max(flagged, key=strength) if flagged else len(verdicts) - 1
    each = [replace(v, explanation=None) for v in verdicts]
    return replace(verdicts[chosen], turns=each)
