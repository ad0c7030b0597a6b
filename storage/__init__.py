"""The tuner's database: SQLAlchemy models and Alembic migrations behind one `Store`.

Rows stay inside this package; callers get `tuner.core.domain` objects. Nothing here imports torch.
"""

from __future__ import annotations

from storage.session import default_url
from storage.session import describe_url
from storage.store import Store

__all__ = ["Store", "default_url", "describe_url"]
