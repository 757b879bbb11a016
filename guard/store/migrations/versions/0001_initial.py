"""The first schema (guard 0.1's migration 0001_initial): policies, their heads and exemplars,
and the activation cache. Tables written out here, never taken from the models of the day: a
migration must do the same thing forever.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("policy_text", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("scoring", sa.String(20), nullable=False),
        sa.Column("model_reference", sa.Text, nullable=False),
        sa.Column("model_fingerprint", sa.String(200), nullable=False),
        sa.Column("model_info", sa.JSON, nullable=False),
        sa.Column("num_layers", sa.Integer, nullable=False),
        sa.Column("num_heads", sa.Integer, nullable=False),
        sa.Column("head_dim", sa.Integer, nullable=False),
        sa.Column("head_accuracy", sa.LargeBinary, nullable=False),
        sa.Column("head_margin", sa.LargeBinary, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "activations",
        sa.Column("model_fingerprint", sa.String(200), primary_key=True),
        sa.Column("dtype", sa.String(20), primary_key=True),
        sa.Column("input_hash", sa.String(64), primary_key=True),
        sa.Column("num_layers", sa.Integer, nullable=False),
        sa.Column("num_heads", sa.Integer, nullable=False),
        sa.Column("head_dim", sa.Integer, nullable=False),
        sa.Column("vectors", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "heads",
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.Integer, primary_key=True),
        sa.Column("layer", sa.Integer, nullable=False),
        sa.Column("head", sa.Integer, nullable=False),
        sa.Column("accuracy", sa.Float, nullable=False),
        sa.Column("margin", sa.Float, nullable=False),
        sa.Column("centroids", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "exemplars",
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("vectors", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("exemplars", "heads", "activations", "policies"):
        op.drop_table(table)
