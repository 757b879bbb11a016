"""The database's tables as SQLAlchemy models (the schema itself is made by guard.store.migrations)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm


class Base(orm.DeclarativeBase):
    pass


class PolicyRow(Base):
    """One compile of a policy: revision 1, 2, ... of its name."""

    __tablename__ = "policies"
    __table_args__ = (sa.UniqueConstraint("name", "revision", name="uq_policies_name_revision"),)
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    revision: orm.Mapped[int] = orm.mapped_column(server_default="1")
    version: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    description: orm.Mapped[str] = orm.mapped_column(sa.Text)
    policy_text: orm.Mapped[str] = orm.mapped_column(sa.Text)
    prompt: orm.Mapped[str] = orm.mapped_column(sa.Text)
    labels: orm.Mapped[list] = orm.mapped_column(sa.JSON)  # [{"name", "flagged", "description"}]
    scoring: orm.Mapped[str] = orm.mapped_column(sa.String(20))
    model_reference: orm.Mapped[str] = orm.mapped_column(sa.Text)
    model_fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    model_info: orm.Mapped[dict] = orm.mapped_column(sa.JSON)
    num_layers: orm.Mapped[int]
    num_heads: orm.Mapped[int]
    head_dim: orm.Mapped[int]
    head_accuracy: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)  # float32 [layers, heads]
    head_margin: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    metrics: orm.Mapped[dict] = orm.mapped_column(sa.JSON)
    created_at: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    dtype: orm.Mapped[str | None] = orm.mapped_column(sa.String(20))  # None: compiled before guard recorded it
    device: orm.Mapped[str | None] = orm.mapped_column(sa.String(40))
    heads: orm.Mapped[list[HeadRow]] = orm.relationship(cascade="all, delete-orphan", order_by="HeadRow.rank")
    exemplars: orm.Mapped[list[ExemplarRow]] = orm.relationship(
        cascade="all, delete-orphan", order_by="ExemplarRow.index"
    )
    calibration: orm.Mapped[CalibrationRow | None] = orm.relationship(cascade="all, delete-orphan")


class CurrentPolicy(Base):
    """Which revision of each policy `guard check` uses."""

    __tablename__ = "current_policies"
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200), primary_key=True)
    policy_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("policies.id"))
    since: orm.Mapped[str] = orm.mapped_column(sa.String(40))


class HeadRow(Base):
    """A selected head with its score, one centroid per label (float32 [labels, head_dim]) and its prototypes."""

    __tablename__ = "heads"
    policy_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True)
    rank: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    layer: orm.Mapped[int]
    head: orm.Mapped[int]
    accuracy: orm.Mapped[float]
    margin: orm.Mapped[float]
    centroids: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    # the k-means prototypes of a `prototypes: P` policy (float32 [labels x P, head_dim]), from
    # revision 0006; None: centroid and probe policies, and compiles before it (recomputed at load)
    bank: orm.Mapped[bytes | None] = orm.mapped_column(sa.LargeBinary)


class ExemplarRow(Base):
    """An exemplar and its vectors at the selected heads (float32 [k, head_dim]), for explanations."""

    __tablename__ = "exemplars"
    policy_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True)
    index: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    text: orm.Mapped[str] = orm.mapped_column(sa.Text)
    label: orm.Mapped[int]
    vectors: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)


class ActivationRow(Base):
    """Cache: every head's last-token output for one rendered prompt on one model and dtype."""

    __tablename__ = "activations"
    model_fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(200), primary_key=True)
    dtype: orm.Mapped[str] = orm.mapped_column(sa.String(20), primary_key=True)
    input_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), primary_key=True)
    num_layers: orm.Mapped[int]
    num_heads: orm.Mapped[int]
    head_dim: orm.Mapped[int]
    vectors: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)  # float32 [layers, heads, head_dim]


class CalibrationRow(Base):
    """Calibrated scores and thresholds of a policy (guard.method.calibration), from migration 0002.

    `labels`: per label {"slope", "intercept", "threshold": null or {"value", "metric", "target",
    "recall", "fpr", "precision"}}; `shares`: float32 [exemplars, labels] leave-one-out vote shares.
    """

    __tablename__ = "calibrations"
    policy_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True)
    method: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    uncertain_margin: orm.Mapped[float]
    labels: orm.Mapped[list] = orm.mapped_column(sa.JSON)
    shares: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)
    metrics: orm.Mapped[dict] = orm.mapped_column(sa.JSON)


class AuditRow(Base):
    """One verdict given by `guard serve --audit` (guard.store.audit), from Alembic revision 0004.

    `input_sha256` identifies the input without keeping it (a keyed hash, HMAC-SHA256 under the
    audit secret, since revision 0005; a plain SHA-256 before); `input_text` is kept only when the
    operator asked for it (`--audit-text`). `request_id` is made by the server, one per request;
    the caller's X-Request-ID is kept apart in `client_request_id` (revision 0005). `created_at`
    is ISO 8601 UTC with microseconds, so it sorts as text.
    """

    __tablename__ = "audit_log"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=True)
    created_at: orm.Mapped[str] = orm.mapped_column(sa.String(40), index=True)
    request_id: orm.Mapped[str] = orm.mapped_column(sa.String(128), index=True)
    client_request_id: orm.Mapped[str | None] = orm.mapped_column(sa.String(128), index=True)
    item: orm.Mapped[int]  # the input's index in its request
    endpoint: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    api_key: orm.Mapped[str | None] = orm.mapped_column(sa.String(16))  # a short hash of the key, never the key
    policy: orm.Mapped[str] = orm.mapped_column(sa.String(200), index=True)
    policy_version: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    model_fingerprint: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    input_sha256: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    input_text: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    label: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    flagged: orm.Mapped[bool]
    scores: orm.Mapped[dict] = orm.mapped_column(sa.JSON)
    latency_ms: orm.Mapped[float]
    # from revision 0007 (NULL before): each label's head votes, and whether the verdict was uncertain
    votes: orm.Mapped[dict | None] = orm.mapped_column(sa.JSON)
    uncertain: orm.Mapped[bool | None]
    # from revision 0008 (NULL before, and without --review): the nearest exemplars at the top
    # heads, as guard.check.explain.nearest_exemplars gives them, for the review page
    nearest: orm.Mapped[list | None] = orm.mapped_column(sa.JSON)


class ReviewRow(Base):
    """One reviewer's action on one audited verdict (guard.store.reviews), from revision 0007.

    Never an edit of the audit row: each action is a row of its own, so reviewers who disagree
    are all kept. `input_text` is a copy of the audit row's text (erased with it), so an export
    still finds it after the audit log's retention pruned the row.
    """

    __tablename__ = "reviews"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=True)
    created_at: orm.Mapped[str] = orm.mapped_column(sa.String(40), index=True)
    reviewer: orm.Mapped[str] = orm.mapped_column(sa.String(16))  # the key's keyed hash
    role: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    audit_id: orm.Mapped[int] = orm.mapped_column(index=True)
    policy: orm.Mapped[str] = orm.mapped_column(sa.String(200), index=True)
    policy_version: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    input_sha256: orm.Mapped[str] = orm.mapped_column(sa.String(64), index=True)
    input_text: orm.Mapped[str | None] = orm.mapped_column(sa.Text)
    model_label: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    action: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    label: orm.Mapped[str | None] = orm.mapped_column(sa.String(200))
    note: orm.Mapped[str | None] = orm.mapped_column(sa.Text)


class StaffAction(Base):
    """What a review or admin key (or the command line) did: guard's audit of its own staff."""

    __tablename__ = "staff_actions"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=True)
    created_at: orm.Mapped[str] = orm.mapped_column(sa.String(40), index=True)
    actor: orm.Mapped[str] = orm.mapped_column(sa.String(64))
    role: orm.Mapped[str] = orm.mapped_column(sa.String(16))
    action: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    detail: orm.Mapped[dict] = orm.mapped_column(sa.JSON)
