"""Version history: a policy keeps its earlier compiles. `policies` holds one row per compile
(revision 1, 2, ... per name) with the dtype and device it was compiled in; `current_policies`
says which revision `guard check` uses, so a rollback is one row. The 0.1 migration table goes:
guard 0.1 then refuses this database as "not a guard database" instead of misreading it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _policies_0002_without_unique_name() -> sa.Table:
    """The 0002 `policies` table minus UNIQUE(name), for SQLite's copy-and-rename."""
    return sa.Table(
        "policies",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
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


def upgrade() -> None:
    bind = op.get_bind()
    new_columns = [
        sa.Column("revision", sa.Integer, nullable=False, server_default="1"),
        sa.Column("dtype", sa.String(20), nullable=True),  # NULL: compiled before guard recorded it
        sa.Column("device", sa.String(40), nullable=True),
    ]
    if bind.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: the table is copied without it (foreign keys are off
        # during migrations, so the copy does not cascade into heads and exemplars)
        with op.batch_alter_table(
            "policies", recreate="always", copy_from=_policies_0002_without_unique_name()
        ) as batch:
            for column in new_columns:
                batch.add_column(column)
            batch.create_unique_constraint("uq_policies_name_revision", ["name", "revision"])
    else:
        for constraint in sa.inspect(bind).get_unique_constraints("policies"):
            if constraint["column_names"] == ["name"]:
                op.drop_constraint(constraint["name"], "policies", type_="unique")
        for column in new_columns:
            op.add_column("policies", column)
        op.create_unique_constraint("uq_policies_name_revision", "policies", ["name", "revision"])
    op.create_table(
        "current_policies",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id"), nullable=False),
        sa.Column("since", sa.String(40), nullable=False),
    )
    op.execute("INSERT INTO current_policies (name, policy_id, since) SELECT name, id, created_at FROM policies")
    if "guard_migrations" in sa.inspect(bind).get_table_names():
        op.drop_table("guard_migrations")


def downgrade() -> None:
    raise NotImplementedError("guard does not downgrade databases; restore a backup instead")
