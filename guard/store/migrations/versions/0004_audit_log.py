"""The audit log of `guard serve --audit` (guard.store.audit): one row per verdict served. A database
made by the guard that recorded it as the named migration 0003_audit_log already has the table
(it is stamped at 0002 and comes through 0003 here), so it is created only where missing.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "audit_log" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.String(40), nullable=False, index=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("api_key", sa.String(16), nullable=True),
        sa.Column("policy", sa.String(200), nullable=False, index=True),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("model_fingerprint", sa.String(200), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("input_text", sa.Text, nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
