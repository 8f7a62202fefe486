# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""Alembic environment: runs on the connection the server hands over (``db.migrate``).

Also usable from the ``alembic`` command with ``-x url=...`` for operators who want
to inspect or upgrade a database by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # pragma: no cover - manual use
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
