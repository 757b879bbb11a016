"""The audit log keeps the caller's X-Request-ID apart: `request_id` is made by the server (one
per request, never chosen by a client) and `client_request_id` holds what the caller sent, if
anything. Rows written before this revision keep their `request_id` (the caller's header, or a
made one: which, they did not record) and get NULL here. Their `input_sha256` stays a plain
SHA-256; rows from this revision on hold a keyed hash (guard.store.audit.AuditKey).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("audit_log")}
    if "client_request_id" in columns:
        return
    op.add_column("audit_log", sa.Column("client_request_id", sa.String(128), nullable=True))
    op.create_index("ix_audit_log_client_request_id", "audit_log", ["client_request_id"])


def downgrade() -> None:
    raise NotImplementedError("guard does not downgrade databases; restore a backup instead")
