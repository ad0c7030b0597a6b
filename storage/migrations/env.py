"""Alembic's entry point for the tuner's schema; the `Config` is built in `storage.store`.

The store hands over its open connection (``config.attributes["connection"]``) so that a migration
runs inside the store's transaction. Without one (authoring a revision with
``alembic.command.revision(..., autogenerate=True)``), the engine comes from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from storage.models import VERSION_TABLE
from storage.models import Base
from storage.session import open_engine


def _is_ours(name: str | None, type_: str, _parent_names: object) -> bool:
    # Optuna's tables share the database; autogenerate must not offer to drop them.
    return type_ != "table" or name in Base.metadata.tables


def _run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=_is_ours,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run_migrations(_connection)
else:
    _engine = open_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with _engine.connect() as _own_connection:
        _run_migrations(_own_connection)
    _engine.dispose()
