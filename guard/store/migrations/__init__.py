"""The database schema, as Alembic revisions (`versions/`), applied in-process when a Store opens.

A database records its revision in `guard_schema`; a guard 0.1 database (which recorded named
migrations in `guard_migrations`) is recognised, stamped with the matching revision and upgraded
in place. A revision this guard does not know means a newer guard wrote the database: it is
refused rather than misread. Upgrades take a lock first (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock), so several processes opening a new database at once migrate it once.

New revision: `alembic -c guard/store/migrations/alembic.ini revision -m "what"`, then write its
upgrade() by hand (name the tables and columns; never import guard's models of the day).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import sqlalchemy as sa

from guard.errors import StoreError

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "guard_schema"
LEGACY_TABLE = "guard_migrations"  # guard 0.1's own migration record
# 0003_audit_log (recorded by the serve branch before Alembic) holds the audit table only: revision
# 0004 finds it and leaves it
LEGACY_REVISIONS = {"0001_initial": "0001", "0002_calibrations": "0002", "0003_audit_log": "0002"}
PG_LOCK_KEY = 0x6775617264  # "guard": the advisory lock that serialises migrations


@functools.cache
def script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    return script().get_current_head()


@functools.cache
def newest_file_revision() -> str:
    """The head revision as the files name it (`versions/0006_head_banks.py` is revision 0006; a
    test holds it equal to Alembic's `head()`): opening a database at head imports no Alembic."""
    return max(path.name.split("_", 1)[0] for path in (HERE / "versions").glob("[0-9]*_*.py"))


def at_head(conn: sa.Connection) -> bool:
    """Whether the database records the head revision: one query, no Alembic."""
    if VERSION_TABLE not in sa.inspect(conn).get_table_names():
        return False
    stored = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return stored == [newest_file_revision()]


def is_guard_database(tables: set[str]) -> bool:
    return VERSION_TABLE in tables or LEGACY_TABLE in tables


def current_revision(conn: sa.Connection) -> str | None:
    """The revision a database is at (None: a new, empty database); StoreError if it is newer
    than this guard knows."""
    from alembic.migration import MigrationContext

    tables = set(sa.inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        revision = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    elif LEGACY_TABLE in tables:
        names = set(conn.execute(sa.text(f"SELECT name FROM {LEGACY_TABLE}")).scalars())
        unknown = sorted(names - set(LEGACY_REVISIONS))
        if unknown:
            raise NewerSchema(unknown[-1])
        revision = max((LEGACY_REVISIONS[n] for n in names), default=None)
    else:
        return None
    known = {rev.revision for rev in script().walk_revisions()}
    if revision is not None and revision not in known:
        raise NewerSchema(revision)
    return revision


class NewerSchema(Exception):
    def __init__(self, revision: str):
        super().__init__(revision)
        self.revision = revision


def upgrade(engine: sa.Engine, display: str) -> None:
    """Bring the database to the head revision (nothing is written when it is there already, so
    read-only databases open)."""
    try:
        with engine.connect() as conn:
            if at_head(conn) or current_revision(conn) == head():
                return
        with _migration_connection(engine) as conn:
            revision = current_revision(conn)  # again, under the lock: another process may have done it
            if revision != head():
                _run(conn, revision)
    except NewerSchema as exc:
        raise StoreError(
            f"database '{display}' was written by a newer guard (schema revision {exc.revision}); "
            "upgrade guard to use it"
        ) from exc


def _run(conn: sa.Connection, revision: str | None) -> None:
    from alembic.runtime.environment import EnvironmentContext

    directory = script()
    with EnvironmentContext(
        _config(),
        directory,
        fn=lambda rev, _context: directory._upgrade_revs("head", rev),
        destination_rev="head",
    ) as env:
        env.configure(connection=conn, version_table=VERSION_TABLE)
        if revision is not None and VERSION_TABLE not in sa.inspect(conn).get_table_names():
            env.get_context().stamp(directory, revision)  # a guard 0.1 database: where it stands
        env.run_migrations()


def _config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


@contextlib.contextmanager
def _migration_connection(engine: sa.Engine):
    """A connection in one transaction that holds the database's migration lock. SQLite: foreign
    keys off (a table copy must not cascade), BEGIN IMMEDIATE (one writer at a time)."""
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:  # on the driver's connection: outside any transaction, where the pragma works
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
            conn = conn.execution_options(guard_write=True)
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"the schema upgrade would break {len(broken)} references; nothing changed")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
