"""The tuner's database: SQLAlchemy models and Alembic migrations behind one `Store`.

Rows stay inside this package; callers get `tuner.core.domain` objects. Nothing here imports torch.
"""

from __future__ import annotations

from storage.session import as_url
from storage.session import default_url
from storage.session import describe_url
from storage.session import retrying
from storage.store import HEARTBEAT_SECONDS
from storage.store import LEASE_SECONDS
from storage.store import SCHEMA_REVISION
from storage.store import Store
from storage.store import opened

__all__ = [
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "SCHEMA_REVISION",
    "Store",
    "as_url",
    "default_url",
    "describe_url",
    "opened",
    "retrying",
]
