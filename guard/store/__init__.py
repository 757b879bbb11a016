"""Storage: the tables, the Store of compiled policies and activations, the audit log, the migrations."""

from guard.store.audit import AuditKey, AuditLog, AuditRecord, input_digest, load_or_create_secret, now_iso, parse_since
from guard.store.database import DEFAULT_DB, Store, database_url, from_blob, sqlite_file, to_blob

__all__ = [
    "DEFAULT_DB",
    "AuditKey",
    "AuditLog",
    "AuditRecord",
    "Store",
    "database_url",
    "from_blob",
    "input_digest",
    "load_or_create_secret",
    "now_iso",
    "parse_since",
    "sqlite_file",
    "to_blob",
]
