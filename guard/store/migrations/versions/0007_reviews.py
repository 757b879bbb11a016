"""The review loop (issue 22): `reviews` holds what moderators said about audited verdicts (one row
per action, never an edit of the audit row: two reviewers who disagree are both kept), with a copy
of the input's text so an export outlives the audit log's retention; `staff_actions` records
what review and admin keys did (guard's own audit of its reviewers). The audit log gains the
per-label head votes and the uncertain flag of each verdict (NULL on rows written before), so
the review page can order by doubt and draw the votes.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    columns = {column["name"] for column in inspector.get_columns("audit_log")}
    if "votes" not in columns:
        op.add_column("audit_log", sa.Column("votes", sa.JSON, nullable=True))
    if "uncertain" not in columns:
        op.add_column("audit_log", sa.Column("uncertain", sa.Boolean, nullable=True))
    tables = set(inspector.get_table_names())
    if "reviews" not in tables:
        op.create_table(
            "reviews",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("created_at", sa.String(40), nullable=False, index=True),
            sa.Column("reviewer", sa.String(16), nullable=False),  # the key's keyed hash, never the key
            sa.Column("role", sa.String(16), nullable=False),
            # no foreign key: pruning or erasing audit rows must not be refused because of reviews
            sa.Column("audit_id", sa.Integer, nullable=False, index=True),
            sa.Column("policy", sa.String(200), nullable=False, index=True),
            sa.Column("policy_version", sa.String(64), nullable=False),
            sa.Column("input_sha256", sa.String(64), nullable=False, index=True),
            sa.Column("input_text", sa.Text, nullable=True),
            sa.Column("model_label", sa.String(200), nullable=False),
            sa.Column("action", sa.String(16), nullable=False),  # confirm, correct, skip, note
            sa.Column("label", sa.String(200), nullable=True),  # the label the reviewer gave (None: skip, note)
            sa.Column("note", sa.Text, nullable=True),
        )
    if "staff_actions" not in tables:
        op.create_table(
            "staff_actions",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("created_at", sa.String(40), nullable=False, index=True),
            sa.Column("actor", sa.String(64), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("action", sa.String(40), nullable=False),
            sa.Column("detail", sa.JSON, nullable=False),
        )


def downgrade() -> None:
    raise NotImplementedError("guard does not downgrade databases; restore a backup instead")
