"""Alembic environment: runs on the connection handed in by ``pacs.index.engine.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pacs.index.schema import metadata

config = context.config


def run() -> None:
    """Run migrations online, on a given connection or one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
