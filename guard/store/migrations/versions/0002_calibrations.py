"""Calibrated scores and thresholds of each policy (guard 0.1's migration 0002_calibrations).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("uncertain_margin", sa.Float, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("shares", sa.LargeBinary, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("calibrations")
