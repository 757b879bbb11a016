"""Storage: the tables, the Store of compiled policies and activations, the audit log, the migrations.

Names are imported on first use, so `guard check` (the Store alone) does not import the audit log.
"""

import importlib

_WHERE = {
    "guard.store.audit": (
        "AuditKey",
        "AuditLog",
        "AuditRecord",
        "input_digest",
        "load_or_create_secret",
        "now_iso",
        "parse_since",
    ),
    "guard.store.database": ("DEFAULT_DB", "Store", "database_url", "from_blob", "sqlite_file", "to_blob"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'guard.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE[name]), name)
    globals()[name] = value
    return value
