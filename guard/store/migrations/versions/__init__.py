"""The Alembic revisions, one module each, applied in order by guard.store.migrations."""
