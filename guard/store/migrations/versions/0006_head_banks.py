"""Each selected head keeps the bank compile computed for it: a policy with `prototypes: P` stores
its k-means prototypes (float32 [labels x P, head_dim]) instead of recomputing them from the
exemplar vectors every time it loads. NULL for centroid and probe policies (the centroids are the
bank) and for rows compiled before this revision (recomputed at load, as before).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("heads")}
    if "bank" not in columns:
        op.add_column("heads", sa.Column("bank", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    raise NotImplementedError("guard does not downgrade databases; restore a backup instead")
