"""Persistence: compiled policies and the activation cache, in one SQL database.

SQLite by default (`./guard.db`, `--db PATH` or `GUARD_DB`); any SQLAlchemy URL works. Vectors
are little-endian float32 BLOBs. Schema changes are named migrations applied in a transaction
and recorded in `guard_migrations`, so a database says which schema it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch
from sqlalchemy import orm

from guard.artifact import Artifact, ArtifactSummary
from guard.calibration import Calibration, Platt, Threshold
from guard.errors import StoreError
from guard.policy import Label

DEFAULT_DB = "guard.db"


class Base(orm.DeclarativeBase):
    pass


class Migration(Base):
    __tablename__ = "guard_migrations"
    name: orm.Mapped[str] = orm.mapped_column(sa.String(100), primary_key=True)
    applied_at: orm.Mapped[str] = orm.mapped_column(sa.String(40))


class PolicyRow(Base):
    __tablename__ = "policies"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(200), unique=True)
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
    heads: orm.Mapped[list[HeadRow]] = orm.relationship(cascade="all, delete-orphan", order_by="HeadRow.rank")
    exemplars: orm.Mapped[list[ExemplarRow]] = orm.relationship(
        cascade="all, delete-orphan", order_by="ExemplarRow.index"
    )
    calibration: orm.Mapped[CalibrationRow | None] = orm.relationship(cascade="all, delete-orphan")


class HeadRow(Base):
    """A selected head with its score and one centroid per label (float32 [labels, head_dim])."""

    __tablename__ = "heads"
    policy_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True)
    rank: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    layer: orm.Mapped[int]
    head: orm.Mapped[int]
    accuracy: orm.Mapped[float]
    margin: orm.Mapped[float]
    centroids: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary)


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
    """Calibrated scores and thresholds of a policy (guard.calibration), from migration 0002.

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
    """One verdict given by `guard serve --audit` (guard.audit), from migration 0003.

    `input_sha256` identifies the input without keeping it; `input_text` is kept only when the
    operator asked for it (`--audit-text`). `created_at` is ISO 8601 UTC with microseconds, so
    it sorts as text.
    """

    __tablename__ = "audit_log"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=True)
    created_at: orm.Mapped[str] = orm.mapped_column(sa.String(40), index=True)
    request_id: orm.Mapped[str] = orm.mapped_column(sa.String(128), index=True)
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


def _initial(conn: sa.Connection) -> None:
    # The tables of the first schema, named: a migration must do the same thing forever, so it
    # never creates "whatever the models define now" (later tables belong to later migrations).
    tables = [PolicyRow, HeadRow, ExemplarRow, ActivationRow]
    Base.metadata.create_all(conn, tables=[t.__table__ for t in tables])


def _calibrations(conn: sa.Connection) -> None:
    CalibrationRow.__table__.create(conn)


def _audit_log(conn: sa.Connection) -> None:
    AuditRow.__table__.create(conn)


# Applied in order, each once, inside the transaction that records it. Append; never edit.
MIGRATIONS = [("0001_initial", _initial), ("0002_calibrations", _calibrations), ("0003_audit_log", _audit_log)]


def to_blob(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().numpy().astype("<f4").tobytes()


def from_blob(blob: bytes, shape: Iterable[int]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(blob, dtype="<f4").reshape(tuple(shape)).copy())


def database_url(db: str | os.PathLike | None) -> str:
    db = db or os.environ.get("GUARD_DB") or DEFAULT_DB
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


class Store:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @classmethod
    def open(cls, db: str | os.PathLike | None = None, create: bool = False) -> Store:
        """Open a guard database; `create` makes (and migrates) it if needed."""
        url = database_url(db)
        display = url.removeprefix("sqlite:///")
        if url.startswith("sqlite:///") and not create:
            path = Path(display)
            if not path.exists():
                raise StoreError(f"database '{display}' does not exist; run 'guard compile POLICY.yaml' first")
        try:
            engine = sa.create_engine(url)
            if url.startswith("sqlite"):
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            tables = set(sa.inspect(engine).get_table_names())
        except sa.exc.DatabaseError as exc:
            raise StoreError(f"'{display}' is not a guard database ({_first_line(exc)})") from None
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"invalid database URL '{url}': {exc}") from None
        if tables and Migration.__tablename__ not in tables:
            raise StoreError(
                f"'{display}' is not a guard database (it has other tables: {', '.join(sorted(tables)[:5])})"
            )
        if not tables and not create:
            raise StoreError(f"database '{display}' is empty; run 'guard compile POLICY.yaml' first")
        store = cls(engine)
        store.migrate()
        return store

    def migrate(self) -> None:
        with self.engine.begin() as conn:
            Migration.__table__.create(conn, checkfirst=True)
            done = set(conn.execute(sa.select(Migration.name)).scalars())
            for name, apply in MIGRATIONS:
                if name not in done:
                    apply(conn)
                    conn.execute(sa.insert(Migration).values(name=name, applied_at=_now()))

    # --- activation cache ------------------------------------------------------------------

    def cached_activations(self, fingerprint: str, dtype: str, keys: list[str]) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        with orm.Session(self.engine) as session:
            for start in range(0, len(keys), 500):  # stay under SQL parameter limits
                rows = session.scalars(
                    sa.select(ActivationRow).where(
                        ActivationRow.model_fingerprint == fingerprint,
                        ActivationRow.dtype == dtype,
                        ActivationRow.input_hash.in_(keys[start : start + 500]),
                    )
                )
                for row in rows:
                    found[row.input_hash] = from_blob(row.vectors, (row.num_layers, row.num_heads, row.head_dim))
        return found

    def put_activations(self, fingerprint: str, dtype: str, items: dict[str, torch.Tensor]) -> None:
        with orm.Session(self.engine) as session, session.begin():
            for key, acts in items.items():
                layers, heads, dim = acts.shape
                session.merge(
                    ActivationRow(
                        model_fingerprint=fingerprint,
                        dtype=dtype,
                        input_hash=key,
                        num_layers=layers,
                        num_heads=heads,
                        head_dim=dim,
                        vectors=to_blob(acts),
                    )
                )

    def count_activations(self) -> int:
        with orm.Session(self.engine) as session:
            return session.scalar(sa.select(sa.func.count()).select_from(ActivationRow))

    # --- artifacts -------------------------------------------------------------------------

    def save_artifact(self, art: Artifact) -> None:
        """Replace the policy of that name, all or nothing."""
        num_layers, num_heads = art.head_accuracy.shape
        row = PolicyRow(
            name=art.name,
            version=art.version,
            description=art.description,
            policy_text=art.policy_text,
            prompt=art.prompt,
            labels=[{"name": lab.name, "flagged": lab.flagged, "description": lab.description} for lab in art.labels],
            scoring=art.scoring,
            model_reference=art.model_reference,
            model_fingerprint=art.model_fingerprint,
            model_info=art.model_info,
            num_layers=num_layers,
            num_heads=num_heads,
            head_dim=art.centroids.shape[-1],
            head_accuracy=to_blob(art.head_accuracy),
            head_margin=to_blob(art.head_margin),
            metrics=art.metrics,
            created_at=art.created_at or _now(),
        )
        row.heads = [
            HeadRow(
                rank=rank,
                layer=layer,
                head=head,
                accuracy=float(art.head_accuracy[layer, head]),
                margin=float(art.head_margin[layer, head]),
                centroids=to_blob(art.centroids[:, rank]),
            )
            for rank, (layer, head) in enumerate(art.heads)
        ]
        row.exemplars = [
            ExemplarRow(index=i, text=text, label=label, vectors=to_blob(art.exemplar_vectors[i]))
            for i, (text, label) in enumerate(zip(art.exemplar_texts, art.exemplar_labels))
        ]
        if art.calibration is not None:
            row.calibration = _calibration_row(art.calibration, len(art.labels))
        with orm.Session(self.engine) as session, session.begin():
            old = session.scalar(sa.select(PolicyRow).where(PolicyRow.name == art.name))
            if old is not None:
                session.delete(old)
                session.flush()
            session.add(row)

    def policy_names(self) -> list[str]:
        with orm.Session(self.engine) as session:
            return list(session.scalars(sa.select(PolicyRow.name).order_by(PolicyRow.name)))

    def summaries(self) -> list[ArtifactSummary]:
        """Every compiled policy at a glance, by name, without reading heads or vectors."""
        heads = sa.select(HeadRow.policy_id, sa.func.count().label("k")).group_by(HeadRow.policy_id).subquery()
        query = (
            sa.select(
                PolicyRow.name,
                PolicyRow.version,
                PolicyRow.labels,
                PolicyRow.model_reference,
                PolicyRow.metrics,
                PolicyRow.created_at,
                heads.c.k,
            )
            .outerjoin(heads, heads.c.policy_id == PolicyRow.id)
            .order_by(PolicyRow.name)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            ArtifactSummary(
                policy=row.name,
                version=row.version,
                labels=[lab["name"] for lab in row.labels],
                flagged=[lab["name"] for lab in row.labels if lab["flagged"]],
                model=row.model_reference,
                heads=row.k or 0,
                metrics=row.metrics,
                compiled=row.created_at,
            )
            for row in rows
        ]

    def load_artifact(self, name: str | None = None) -> Artifact:
        names = self.policy_names()
        if name is None:
            if len(names) != 1:
                listing = ", ".join(names) if names else "none"
                raise StoreError(f"the database holds {len(names)} policies ({listing}); choose one with --policy NAME")
            name = names[0]
        with orm.Session(self.engine) as session:
            row = session.scalar(sa.select(PolicyRow).where(PolicyRow.name == name))
            if row is None:
                raise StoreError(f"no compiled policy named '{name}' (have: {', '.join(names) or 'none'})")
            return _artifact_from_row(row)


def _artifact_from_row(row: PolicyRow) -> Artifact:
    grid = (row.num_layers, row.num_heads)
    num_labels = len(row.labels)
    centroids = torch.stack([from_blob(h.centroids, (num_labels, row.head_dim)) for h in row.heads], dim=1)
    k = len(row.heads)
    vectors = [from_blob(e.vectors, (k, row.head_dim)) for e in row.exemplars]
    return Artifact(
        name=row.name,
        version=row.version,
        prompt=row.prompt,
        labels=[
            Label(name=lab["name"], flagged=lab["flagged"], description=lab.get("description", ""))
            for lab in row.labels
        ],
        model_reference=row.model_reference,
        model_fingerprint=row.model_fingerprint,
        model_info=row.model_info,
        scoring=row.scoring,
        heads=[(h.layer, h.head) for h in row.heads],
        head_accuracy=from_blob(row.head_accuracy, grid),
        head_margin=from_blob(row.head_margin, grid),
        centroids=centroids,
        exemplar_vectors=torch.stack(vectors) if vectors else torch.empty((0, k, row.head_dim)),
        exemplar_texts=[e.text for e in row.exemplars],
        exemplar_labels=[e.label for e in row.exemplars],
        metrics=row.metrics,
        description=row.description,
        policy_text=row.policy_text,
        created_at=row.created_at,
        calibration=_calibration_from_row(row.calibration, num_labels) if row.calibration is not None else None,
    )


def _calibration_row(cal: Calibration, num_labels: int) -> CalibrationRow:
    labels = []
    for c, platt in enumerate(cal.platt):
        threshold = cal.thresholds.get(c)
        labels.append(
            {
                "slope": platt.slope,
                "intercept": platt.intercept,
                "threshold": threshold.to_dict() if threshold else None,
            }
        )
    shares = torch.tensor(cal.shares, dtype=torch.float32).reshape(-1, num_labels)
    return CalibrationRow(
        method=cal.method,
        uncertain_margin=cal.uncertain_margin,
        labels=labels,
        shares=to_blob(shares),
        metrics=cal.metrics,
    )


def _calibration_from_row(row: CalibrationRow, num_labels: int) -> Calibration:
    platt = [Platt(lab["slope"], lab["intercept"]) for lab in row.labels]
    thresholds = {c: Threshold(**lab["threshold"]) for c, lab in enumerate(row.labels) if lab["threshold"]}
    shares = from_blob(row.shares, (-1, num_labels)).double().tolist()
    return Calibration(row.method, platt, thresholds, row.uncertain_margin, shares, row.metrics)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
