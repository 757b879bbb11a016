"""Reviews of audited verdicts: the queue moderators work through, their actions, and the rule
that turns several reviewers' labels into one exemplar label.

A review is a row of its own (`reviews`), never an edit of the audit row it is about; two
reviewers who disagree are both kept, and `decide` settles them: the latest admin decision,
else the majority of the reviewers (each reviewer's latest label counts once), and a tie is
reported, not exported. `staff_actions` records what review and admin keys did.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import sqlalchemy as sa

from guard.errors import GuardError
from guard.store.audit import _iso, now_iso
from guard.store.database import Store
from guard.store.tables import AuditRow, ReviewRow, StaffAction

ACTIONS = ("confirm", "correct", "skip", "note")
LABELLING = ("confirm", "correct")  # the actions that give the item a label
MAX_NOTE = 2000  # characters in a note
SAMPLE_RATE = 0.05  # share of confident verdicts the queue samples (every label alike)
HOLD_OUT = 0.2  # share of reviewed items kept out of an export, to measure a candidate on
# How many times the fit counts a reviewed item (its exemplar line's `weight`): ten corrections
# among a policy's ~1,100 exemplars must move the classifier where a moderator expects. Weights
# from 5 up let the candidate allow all of ten corrected advice questions (1 allowed 6 to 7);
# 10 leaves room, and lost no recall on never-fitted harmful sets (BENCHMARKS.md, "The review loop").
REVIEW_WEIGHT = 10.0


@dataclass
class QueueItem:
    """An audited verdict waiting for review, and why it is in the queue."""

    audit_id: int
    created_at: str
    policy: str
    policy_version: str
    text: str
    label: str
    flagged: bool
    scores: dict
    votes: dict | None
    uncertain: bool
    reason: str  # "uncertain" or "sample" (a random share of confident verdicts)
    nearest: list | None = None  # per top head, the closest exemplars (None: not recorded)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Review:
    id: int
    created_at: str
    reviewer: str
    role: str
    audit_id: int
    policy: str
    policy_version: str
    input_sha256: str
    input_text: str | None
    model_label: str
    action: str
    label: str | None
    note: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    """What the reviews of one input (per policy) settle on; `label` None for a tie."""

    policy: str
    input_sha256: str
    text: str | None
    model_label: str
    label: str | None
    rule: str  # "admin", "majority", "tie"
    votes: dict[str, int] = field(default_factory=dict)  # label -> reviewers (their latest label)

    @property
    def held_out(self) -> bool:
        return held_out(self.input_sha256)


def held_out(input_sha256: str, share: float = HOLD_OUT) -> bool:
    """Whether an input belongs to the held-out share (stable: by its hash, whoever asks)."""
    return int(hashlib.sha256(b"held-out\0" + input_sha256.encode()).hexdigest()[:8], 16) < share * 16**8


def sampled(audit_id: int, rate: float = SAMPLE_RATE) -> bool:
    """Whether a confident verdict is in the queue's random sample (stable across page loads)."""
    return int(hashlib.sha256(b"sample\0" + str(audit_id).encode()).hexdigest()[:8], 16) < rate * 16**8


def is_uncertain(row) -> bool:
    """The verdict's own flag (revision 0007); for older rows, a winning probability under 0.75."""
    if row.uncertain is not None:
        return bool(row.uncertain)
    scores = row.scores or {}
    return bool(scores) and max(scores.values()) < 0.75


def decide(reviews: Sequence[Review]) -> list[Decision]:
    """One decision per (policy, input) that has labelling reviews: the latest admin label, else
    the majority of reviewers' latest labels; a tie is a decision without a label."""
    groups: dict[tuple[str, str], list[Review]] = {}
    for review in sorted(reviews, key=lambda r: (r.created_at, r.id)):
        if review.action in LABELLING:
            groups.setdefault((review.policy, review.input_sha256), []).append(review)
    decisions = []
    for (policy, digest), items in groups.items():
        latest = {r.reviewer: r.label for r in items}  # in time order: the last one stays
        votes = dict(Counter(latest.values()).most_common())
        text = next((r.input_text for r in reversed(items) if r.input_text is not None), None)
        admins = [r for r in items if r.role == "admin"]
        top = sorted(votes.values(), reverse=True)
        if admins:
            label, rule = admins[-1].label, "admin"
        elif len(top) > 1 and top[0] == top[1]:
            label, rule = None, "tie"
        else:
            label, rule = next(iter(votes)), "majority"
        decisions.append(Decision(policy, digest, text, items[-1].model_label, label, rule, votes))
    return decisions


class Reviews:
    """The reviews table and the staff log of one database."""

    def __init__(self, store: Store):
        self.store = store

    def add(
        self,
        audit_id: int,
        *,
        reviewer: str,
        role: str,
        action: str,
        labels: Sequence[str],
        label: str | None = None,
        note: str | None = None,
    ) -> Review:
        """Record one action on an audited verdict; GuardError (one line) for a bad one."""
        if action not in ACTIONS:
            raise GuardError(f"unknown review action '{action}' (use {', '.join(ACTIONS)})")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise GuardError(f"a note holds at most {MAX_NOTE} characters")
        with self.store.engine.begin() as conn:
            row = conn.execute(sa.select(AuditRow.__table__).where(AuditRow.__table__.c.id == audit_id)).first()
            if row is None:
                raise GuardError(f"no audit row {audit_id}")
            if action == "confirm":
                label = row.label
            elif action == "correct":
                if label not in labels:
                    raise GuardError(f"'{label}' is not a label of policy '{row.policy}' ({', '.join(labels)})")
            else:
                label = None
            if action == "note" and note is None:
                raise GuardError("a note needs its text")
            values = dict(
                created_at=now_iso(),
                reviewer=reviewer,
                role=role,
                audit_id=audit_id,
                policy=row.policy,
                policy_version=row.policy_version,
                input_sha256=row.input_sha256,
                input_text=row.input_text,
                model_label=row.label,
                action=action,
                label=label,
                note=note,
            )
            new_id = conn.execute(sa.insert(ReviewRow.__table__).values(**values)).inserted_primary_key[0]
        return Review(id=new_id, **values)

    def queue(
        self,
        *,
        reviewer: str | None = None,
        policy: str | None = None,
        label: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        sample_rate: float = SAMPLE_RATE,
        window: int = 5000,
    ) -> list[QueueItem]:
        """Verdicts to review: the uncertain ones newest first, then a stable random share of
        the confident ones (of every label) newest first. Only rows with their text (`--audit-text`),
        one per input and policy (the newest), none `reviewer` has already acted on; the newest
        `window` audit rows are considered."""
        audit = AuditRow.__table__
        stmt = sa.select(audit).where(audit.c.input_text.is_not(None))
        if policy:
            stmt = stmt.where(audit.c.policy == policy)
        if label:
            stmt = stmt.where(audit.c.label == label)
        if since is not None:
            stmt = stmt.where(audit.c.created_at >= _iso(since))
        stmt = stmt.order_by(audit.c.id.desc()).limit(window)
        done_stmt = sa.select(ReviewRow.policy, ReviewRow.input_sha256).where(ReviewRow.reviewer == reviewer)
        with self.store.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            done = set(conn.execute(done_stmt).all()) if reviewer else set()
        seen, doubtful, sample = set(done), [], []
        for row in rows:
            key = (row.policy, row.input_sha256)
            if key in seen:
                continue
            seen.add(key)
            uncertain = is_uncertain(row)
            if uncertain or sampled(row.id, sample_rate):
                item = QueueItem(
                    audit_id=row.id,
                    created_at=row.created_at,
                    policy=row.policy,
                    policy_version=row.policy_version,
                    text=row.input_text,
                    label=row.label,
                    flagged=bool(row.flagged),
                    scores=row.scores or {},
                    votes=row.votes,
                    uncertain=uncertain,
                    reason="uncertain" if uncertain else "sample",
                    nearest=row.nearest,
                )
                (doubtful if uncertain else sample).append(item)
        return (doubtful + sample)[:limit]

    def item(self, audit_id: int) -> dict | None:
        """One audit row, as the review page shows it."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(AuditRow.__table__).where(AuditRow.__table__.c.id == audit_id)).first()
        return None if row is None else dict(row._mapping)

    def all(self, policy: str | None = None) -> list[Review]:
        """Every review (of one policy), oldest first."""
        stmt = sa.select(ReviewRow.__table__).order_by(ReviewRow.id)
        if policy is not None:
            stmt = stmt.where(ReviewRow.policy == policy)
        with self.store.engine.connect() as conn:
            return [Review(**row._mapping) for row in conn.execute(stmt)]

    def log(self, actor: str, role: str, action: str, **detail) -> None:
        """Record what a review or admin key (or the command line) did."""
        with self.store.engine.begin() as conn:
            conn.execute(
                sa.insert(StaffAction.__table__).values(
                    created_at=now_iso(), actor=actor, role=role, action=action, detail=detail
                )
            )

    def staff_actions(self) -> list[dict]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(StaffAction.__table__).order_by(StaffAction.id)).all()
        return [dict(row._mapping) for row in rows]


@dataclass
class Export:
    """What `guard review export` wrote, and what it left out and why."""

    lines: list[dict]  # {"text", "label", "source": "reviews", "rule", "weight"}
    held_out: list[Decision]  # kept out, to measure a candidate on (guard review diff)
    ties: list[Decision]  # reviewers split evenly, no admin decision: not exported
    without_text: int  # decided, but the text was not kept (served without --audit-text)

    def summary(self) -> str:
        return (
            f"{len(self.lines)} reviewed items exported, {len(self.held_out)} held out for 'guard review diff', "
            f"{len(self.ties)} ties left out, {self.without_text} without their text"
        )


def export(decisions: Sequence[Decision], hold_out: float = HOLD_OUT, weight: float = REVIEW_WEIGHT) -> Export:
    """Exemplar lines from the decisions, each counted `weight` times by the fit (its line's
    `weight`): the held-out share and ties kept out (see `decide`)."""
    lines, held, ties, without_text = [], [], [], 0
    for decision in decisions:
        if decision.label is None:
            ties.append(decision)
        elif decision.text is None:
            without_text += 1
        elif held_out(decision.input_sha256, hold_out):
            held.append(decision)
        else:
            line = {"text": decision.text, "label": decision.label, "source": "reviews", "rule": decision.rule}
            lines.append({**line, "weight": weight})
    return Export(lines, held, ties, without_text)
