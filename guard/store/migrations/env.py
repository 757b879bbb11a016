"""Alembic's entry point for its own command line (`alembic -c guard/store/migrations/alembic.ini ...`,
with `-x url=sqlite:///guard.db`); guard itself runs the revisions in-process (guard.store.migrations)."""

import sqlalchemy as sa
from alembic import context

from guard.store.migrations import VERSION_TABLE

url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///guard.db")
with sa.create_engine(url).connect() as connection:
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
