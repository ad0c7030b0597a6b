"""A time limit for a run of the queue: the seconds its request allows the search, and the moment
the search must end, fixed when the first worker starts it (by the database's clock, which every
worker of the run shares).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_timeout_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Runs keep what they are; a run of the queue searched again by an older tuner has no limit.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("requested_timeout_s")
