"""Persistence: compiled policies and the activation cache, in one SQL database.

SQLite by default (`./guard.db`, `--db PATH` or `GUARD_DB`) or PostgreSQL
(`postgresql+psycopg://...`, `pip install guard-sav[postgres]`). Vectors are little-endian float32
BLOBs, checked when read. The schema is a chain of Alembic revisions (guard.store.migrations), applied
when a database opens. Every compile is kept as a revision of its policy; `current_policies`
names the one that checks use, so recompiling and rolling back change one row.

Several processes may share one database: SQLite runs in WAL mode with a busy timeout, writes
take the write lock up front (BEGIN IMMEDIATE) and reads see one snapshot; on PostgreSQL reads
are REPEATABLE READ and writers of one policy serialise on an advisory lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch
from sqlalchemy import orm

from guard.errors import StoreError, first_line
from guard.method import calibration
from guard.method.artifact import Artifact, ArtifactSummary
from guard.method.calibration import Calibration
from guard.policy import Label
from guard.store import migrations
from guard.store.tables import (
    ActivationRow,
    CalibrationRow,
    CurrentPolicy,
    ExemplarRow,
    HeadRow,
    PolicyRow,
)

DEFAULT_DB = "guard.db"


def to_blob(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().numpy().astype("<f4").tobytes()


def from_blob(blob: bytes, shape: Iterable[int], what: str = "stored vectors") -> torch.Tensor:
    """A float32 tensor of `shape` from its stored bytes; StoreError when the bytes do not fit the
    shape (truncated) or hold NaN or infinity (damaged): a verdict from such vectors would be
    decided by label order, not by the input."""
    shape = tuple(shape)
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) % 4:
        raise StoreError(f"{what} are damaged (not float32 data); recompile the policy")
    array = np.frombuffer(blob, dtype="<f4")
    try:
        array = array.reshape(shape)
    except ValueError:
        raise StoreError(f"{what} are damaged ({array.size} values, expected shape {shape}); recompile") from None
    if not np.isfinite(array).all():
        raise StoreError(f"{what} are damaged (NaN or infinite values); recompile the policy")
    return torch.from_numpy(array.copy())


def database_url(db: str | os.PathLike | None) -> str:
    db = db or os.environ.get("GUARD_DB") or DEFAULT_DB
    db = str(db)
    return db if "://" in db else f"sqlite:///{db}"


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (also `sqlite:///file:x.db?mode=ro&uri=true`); None otherwise."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    database = parsed.database
    if database.startswith("file:"):
        database = database.removeprefix("file:").split("?")[0]
    return Path(database)


def _store_errors(method):
    """Database failures (locked, damaged, a schema that is not guard's) as one-line StoreErrors,
    the driver's error kept as the cause."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"database '{self.display}': {_first_line(exc)}") from exc
        except (KeyError, TypeError, ValueError) as exc:  # a row that does not have guard's shape
            raise StoreError(f"database '{self.display}' holds a damaged record ({_first_line(exc)})") from exc

    return wrapper


class Store:
    def __init__(self, engine: sa.Engine, display: str = "", created: Path | None = None):
        self.engine = engine
        self.display = display or str(engine.url)
        self.created = created  # the SQLite file this Store made (removed again if left empty)
        postgres = engine.dialect.name == "postgresql"
        # reads: one snapshot per session (SQLite gets it from its BEGIN, see _sqlite_begin)
        self.reader = engine.execution_options(isolation_level="REPEATABLE READ") if postgres else engine
        self.writer = engine.execution_options(guard_write=True)

    @classmethod
    def open(cls, db: str | os.PathLike | None = None, create: bool = False) -> Store:
        """Open a guard database; `create` makes (and migrates) it if needed."""
        url = database_url(db)
        display = url.removeprefix("sqlite:///")
        path = sqlite_file(url)
        if path is not None and not create and not path.exists():
            raise StoreError(f"database '{display}' does not exist; run 'guard compile POLICY.yaml' first")
        created = path is not None and not path.exists()
        if created and create:
            _create_private(path)
        try:
            engine = _engine(url)
            tables = set(sa.inspect(engine).get_table_names())
        except sa.exc.DatabaseError as exc:
            raise StoreError(f"'{display}' is not a guard database ({_first_line(exc)})") from exc
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"invalid database URL '{url}': {_first_line(exc)}") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open database '{display}': {_first_line(exc)}") from exc
        if tables and not migrations.is_guard_database(tables):
            raise StoreError(
                f"'{display}' is not a guard database (it has other tables: {', '.join(sorted(tables)[:5])})"
            )
        if not tables and not create:
            raise StoreError(f"database '{display}' is empty; run 'guard compile POLICY.yaml' first")
        store = cls(engine, display, path if created else None)
        store.migrate()
        return store

    @_store_errors
    def migrate(self) -> None:
        migrations.upgrade(self.engine, self.display)

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return migrations.current_revision(conn)

    def discard_if_unused(self) -> None:
        """Remove the database file this Store created, if it holds no policy yet: a compile that
        failed leaves no empty database behind."""
        if self.created is None:
            return
        with contextlib.suppress(Exception):
            if self.policy_names():
                return
        self.engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.created}{suffix}")

    # --- activation cache ------------------------------------------------------------------

    @_store_errors
    def cached_activations(self, fingerprint: str, dtype: str, keys: list[str]) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        with orm.Session(self.reader) as session:
            for start in range(0, len(keys), 500):  # stay under SQL parameter limits
                rows = session.scalars(
                    sa.select(ActivationRow).where(
                        ActivationRow.model_fingerprint == fingerprint,
                        ActivationRow.dtype == dtype,
                        ActivationRow.input_hash.in_(keys[start : start + 500]),
                    )
                )
                for row in rows:
                    with contextlib.suppress(StoreError):  # a damaged cache entry is computed again
                        found[row.input_hash] = from_blob(row.vectors, (row.num_layers, row.num_heads, row.head_dim))
        return found

    @_store_errors
    def put_activations(self, fingerprint: str, dtype: str, items: dict[str, torch.Tensor]) -> None:
        rows = []
        for key, acts in items.items():
            layers, heads, dim = acts.shape
            rows.append(
                dict(
                    model_fingerprint=fingerprint,
                    dtype=dtype,
                    input_hash=key,
                    num_layers=layers,
                    num_heads=heads,
                    head_dim=dim,
                    vectors=to_blob(acts),
                )
            )
        if not rows:
            return
        # another process may cache the same input at the same moment: the newer row wins
        insert = _dialect_insert(self.engine)(ActivationRow).values(rows)
        keys = ["model_fingerprint", "dtype", "input_hash"]
        insert = insert.on_conflict_do_update(index_elements=keys, set_={"vectors": insert.excluded.vectors})
        with self.writer.begin() as conn:
            conn.execute(insert)

    @_store_errors
    def count_activations(self) -> int:
        with orm.Session(self.reader) as session:
            return session.scalar(sa.select(sa.func.count()).select_from(ActivationRow))

    # --- artifacts -------------------------------------------------------------------------

    @_store_errors
    def save_artifact(self, art: Artifact, keep: int | None = None, current: bool = True) -> int:
        """Store a compile as the policy's next revision and make it current (unless not
        `current`, when the policy already has a current revision: a candidate), all or nothing;
        `keep` N: then delete all but the newest N revisions (never the current one)."""
        row = _row_from_artifact(art)
        with orm.Session(self.writer) as session, session.begin():
            self._lock_policy(session, art.name)
            last = session.scalar(sa.select(sa.func.max(PolicyRow.revision)).where(PolicyRow.name == art.name))
            revision = row.revision = (last or 0) + 1
            session.add(row)
            session.flush()
            if current or session.get(CurrentPolicy, art.name) is None:
                self._point(session, art.name, row.id)
            if keep is not None:
                self._prune(session, art.name, keep)
        art.revision = revision
        return revision

    @_store_errors
    def current_compile(self, name: str) -> tuple[str, str, str | None] | None:
        """The current revision of `name` as (version, model fingerprint, dtype), read without its
        vectors; None when no such policy is stored."""
        query = (
            sa.select(PolicyRow.version, PolicyRow.model_fingerprint, PolicyRow.dtype)
            .join(CurrentPolicy, CurrentPolicy.policy_id == PolicyRow.id)
            .where(CurrentPolicy.name == name)
        )
        with orm.Session(self.reader) as session:
            row = session.execute(query).first()
        return None if row is None else tuple(row)

    @_store_errors
    def policy_names(self) -> list[str]:
        with orm.Session(self.reader) as session:
            return list(session.scalars(sa.select(CurrentPolicy.name).order_by(CurrentPolicy.name)))

    @_store_errors
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
                PolicyRow.revision,
                heads.c.k,
            )
            .join(CurrentPolicy, CurrentPolicy.policy_id == PolicyRow.id)
            .outerjoin(heads, heads.c.policy_id == PolicyRow.id)
            .order_by(PolicyRow.name)
        )
        with self.reader.connect() as conn:
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
                revision=row.revision,
            )
            for row in rows
        ]

    @_store_errors
    def load_artifact(self, name: str | None = None) -> Artifact:
        """The current revision of policy `name` (optional when there is one policy), or the one
        `NAME@VERSION` names: a revision number or a prefix of the content version."""
        with orm.Session(self.reader) as session:
            names = list(session.scalars(sa.select(CurrentPolicy.name).order_by(CurrentPolicy.name)))
            if name is None:
                if len(names) != 1:
                    listing = ", ".join(names) if names else "none"
                    raise StoreError(
                        f"the database holds {len(names)} policies ({listing}); choose one with --policy NAME"
                    )
                name = names[0]
            row = self._find(session, name, names)
            return _artifact_from_row(row)

    def load_artifacts(self, names: Sequence[str] | None = None, *, every: bool = False) -> list[Artifact]:
        """The one way to load compiled policies: each named one (NAME, or NAME@VERSION as
        `load_artifact` reads it), in the order given. With no names, the database's only policy
        (an error when it holds several: `guard check`, `scan`, `inspect`, `export`, `Guard.load`),
        or with `every`, all of its policies, an error when it holds none (`guard serve`, `GuardSet.load`)."""
        if names:
            return [self.load_artifact(name) for name in names]
        if not every:
            return [self.load_artifact()]
        artifacts = [self.load_artifact(name) for name in self.policy_names()]
        if not artifacts:
            raise StoreError("the database holds no compiled policy; run 'guard compile POLICY.yaml' first")
        return artifacts

    @_store_errors
    def versions(self, name: str | None = None) -> list[dict]:
        """Every stored revision (of one policy, or of all), newest first per policy."""
        with orm.Session(self.reader) as session:
            current = set(session.scalars(sa.select(CurrentPolicy.policy_id)))
            query = sa.select(PolicyRow).order_by(PolicyRow.name, PolicyRow.revision.desc())
            if name is not None:
                query = query.where(PolicyRow.name == name)
            rows = session.scalars(query).all()
            if name is not None and not rows:
                raise StoreError(f"no compiled policy named '{name}'")
            return [_revision_summary(row, row.id in current) for row in rows]

    @_store_errors
    def rollback(self, name: str, version: str) -> dict:
        """Make an earlier (or later) stored revision of `name` the current one."""
        with orm.Session(self.writer) as session, session.begin():
            self._lock_policy(session, name)
            names = list(session.scalars(sa.select(CurrentPolicy.name)))
            row = self._find(session, f"{name}@{version}", names)
            self._point(session, name, row.id)
            return _revision_summary(row, True)

    @_store_errors
    def prune(self, name: str, keep: int) -> int:
        """Delete all but the newest `keep` revisions of `name` (never the current one)."""
        with orm.Session(self.writer) as session, session.begin():
            self._lock_policy(session, name)
            return self._prune(session, name, keep)

    def _find(self, session: orm.Session, spec: str, names: list[str]) -> PolicyRow:
        name, version = (spec, None) if spec in names or "@" not in spec else spec.rsplit("@", 1)
        if version is None:
            pointer = session.get(CurrentPolicy, name)
            if pointer is None:
                raise StoreError(f"no compiled policy named '{name}' (have: {', '.join(names) or 'none'})")
            return session.get(PolicyRow, pointer.policy_id)
        rows = session.scalars(
            sa.select(PolicyRow).where(PolicyRow.name == name).order_by(PolicyRow.revision.desc())
        ).all()
        if not rows:
            raise StoreError(f"no compiled policy named '{name}' (have: {', '.join(names) or 'none'})")
        version = version.strip().removeprefix("r")
        for row in rows:
            if version.isdigit() and row.revision == int(version):
                return row
        matches = [row for row in rows if version and row.version.startswith(version)]
        if not matches:
            have = ", ".join(f"{r.revision} ({r.version})" for r in rows)
            raise StoreError(f"policy '{name}' has no version '{version}' (have: {have})")
        return matches[0]  # the newest compile of that content

    def _point(self, session: orm.Session, name: str, policy_id: int) -> None:
        pointer = session.get(CurrentPolicy, name)
        if pointer is None:
            session.add(CurrentPolicy(name=name, policy_id=policy_id, since=_now()))
        else:
            pointer.policy_id, pointer.since = policy_id, _now()
        session.flush()

    def _prune(self, session: orm.Session, name: str, keep: int) -> int:
        if keep < 1:
            raise StoreError("--keep must be at least 1 (the current revision always stays)")
        current = session.get(CurrentPolicy, name)
        rows = session.scalars(
            sa.select(PolicyRow).where(PolicyRow.name == name).order_by(PolicyRow.revision.desc())
        ).all()
        doomed = [row for row in rows[keep:] if current is None or row.id != current.policy_id]
        for row in doomed:
            session.delete(row)
        session.flush()
        return len(doomed)

    def _lock_policy(self, session: orm.Session, name: str) -> None:
        """Serialise writers of one policy (SQLite: BEGIN IMMEDIATE already holds the lock)."""
        if self.engine.dialect.name == "postgresql":
            session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"guard:{name}"})


def _row_from_artifact(art: Artifact) -> PolicyRow:
    num_layers, num_heads = art.head_accuracy.shape
    row = PolicyRow(
        name=art.name,
        version=art.version,
        description=art.description,
        policy_text=art.policy_text,
        prompt=art.prompt,
        labels=[lab.stored() for lab in art.labels],
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
        dtype=art.dtype or None,
        device=art.device or None,
    )
    row.heads = [
        HeadRow(
            rank=rank,
            layer=layer,
            head=head,
            accuracy=float(art.head_accuracy[layer, head]),
            margin=float(art.head_margin[layer, head]),
            centroids=to_blob(art.centroids[:, rank]),
            bank=None if art.prototype_bank is None else to_blob(art.prototype_bank[:, rank]),
        )
        for rank, (layer, head) in enumerate(art.heads)
    ]
    row.exemplars = [
        ExemplarRow(index=i, text=text, label=label, vectors=to_blob(art.exemplar_vectors[i]))
        for i, (text, label) in enumerate(zip(art.exemplar_texts, art.exemplar_labels))
    ]
    if art.calibration is not None:
        row.calibration = _calibration_row(art.calibration, len(art.labels))
    return row


def _revision_summary(row: PolicyRow, current: bool) -> dict:
    return {
        "policy": row.name,
        "revision": row.revision,
        "version": row.version,
        "current": current,
        "compiled": row.created_at,
        "dtype": row.dtype,
        "device": row.device,
        "model": row.model_reference,
        "heads": len(row.heads),
        "loo_accuracy": (row.metrics or {}).get("loo_accuracy"),
    }


def _artifact_from_row(row: PolicyRow) -> Artifact:
    grid = (row.num_layers, row.num_heads)
    num_labels = len(row.labels)
    what = f"policy '{row.name}': its stored vectors"
    if not row.heads:
        raise StoreError(f"policy '{row.name}' has no stored heads (a damaged database); recompile it")
    centroids = torch.stack([from_blob(h.centroids, (num_labels, row.head_dim), what) for h in row.heads], dim=1)
    k = len(row.heads)
    vectors = [from_blob(e.vectors, (k, row.head_dim), what) for e in row.exemplars]
    prototypes = (row.metrics or {}).get("method", {}).get("prototypes", 1)
    bank = None  # stored prototypes (revision 0006 on); else Artifact.bank recomputes them
    if prototypes > 1 and all(h.bank is not None for h in row.heads):
        shape = (num_labels * prototypes, row.head_dim)
        bank = torch.stack([from_blob(h.bank, shape, what) for h in row.heads], dim=1)
    return Artifact(
        name=row.name,
        version=row.version,
        prompt=row.prompt,
        labels=[
            Label(
                name=lab["name"],
                flagged=lab["flagged"],
                description=lab.get("description", ""),
                openai_category=lab.get("openai_category"),
            )
            for lab in row.labels
        ],
        model_reference=row.model_reference,
        model_fingerprint=row.model_fingerprint,
        model_info=row.model_info,
        scoring=row.scoring,
        heads=[(h.layer, h.head) for h in row.heads],
        head_accuracy=from_blob(row.head_accuracy, grid, what),
        head_margin=from_blob(row.head_margin, grid, what),
        centroids=centroids,
        exemplar_vectors=torch.stack(vectors) if vectors else torch.empty((0, k, row.head_dim)),
        prototype_bank=bank,
        exemplar_texts=[e.text for e in row.exemplars],
        exemplar_labels=[e.label for e in row.exemplars],
        metrics=row.metrics,
        description=row.description,
        policy_text=row.policy_text,
        created_at=row.created_at,
        revision=row.revision,
        dtype=row.dtype or "",
        device=row.device or "",
        calibration=_calibration_from_row(row.calibration, num_labels) if row.calibration is not None else None,
    )


def _calibration_row(cal: Calibration, num_labels: int) -> CalibrationRow:
    shares = torch.tensor(cal.shares, dtype=torch.float32).reshape(-1, num_labels)
    return CalibrationRow(
        method=cal.method,
        uncertain_margin=cal.uncertain_margin,
        labels=calibration.to_label_rows(cal),
        shares=to_blob(shares),
        metrics=cal.metrics,
    )


def _calibration_from_row(row: CalibrationRow, num_labels: int) -> Calibration:
    platt, thresholds = calibration.from_label_rows(row.labels)
    shares = from_blob(row.shares, (-1, num_labels)).double().tolist()
    return Calibration(row.method, platt, thresholds, row.uncertain_margin, shares, row.metrics)


def _create_private(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600): SQLite gives its -wal and -shm
    files the same mode. An existing file, or one another process just made, is left as it is."""
    with contextlib.suppress(FileExistsError, FileNotFoundError, IsADirectoryError, PermissionError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))


SQLITE_BUSY_MS = 30_000  # how long a writer waits for another to finish before failing


def _engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):  # guard-sav[postgres] installs psycopg 3
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_connect(dbapi_conn, _record) -> None:
    # The driver's own transaction handling would begin transactions late (not before a SELECT)
    # and never for DDL; guard begins them itself (_sqlite_begin), as SQLAlchemy's docs advise.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    with contextlib.suppress(Exception):  # a read-only database keeps its journal mode
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # Writers take the write lock up front: a reader that upgrades to a writer in WAL mode fails
    # at once with "database is locked" instead of waiting out the busy timeout.
    immediate = conn.get_execution_options().get("guard_write")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _dialect_insert(engine: sa.Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: Exception) -> str:
    return first_line(getattr(exc, "orig", None) or exc)  # the driver's own message, not SQLAlchemy's wrapper
