"""The review page shows each queued verdict's nearest exemplars (issue 22): `guard serve --review`
stores them with the audit row (`audit_log.nearest`: for the top heads, the exemplars closest to
the input, as `guard check --explain` gives them: index, text, label, similarity). They come from
the head vectors the check already has, so the page needs neither the model nor the artifact.
NULL on rows written before, or without --review.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("audit_log")}
    if "nearest" not in columns:
        op.add_column("audit_log", sa.Column("nearest", sa.JSON, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("guard does not downgrade databases; restore a backup instead")
