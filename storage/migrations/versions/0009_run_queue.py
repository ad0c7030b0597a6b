"""The runs table as a queue of tuning requests: a queued status, the trials a queued request asked
for, and why a run failed.

PostgreSQL keeps the status as an enum type, which gains its value in place; SQLite keeps it as
text, which needs no change.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Allowed in a transaction since PostgreSQL 12, as long as the value is not used in it.
        op.execute("ALTER TYPE runstatus ADD VALUE IF NOT EXISTS 'QUEUED'")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_trials", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("requested_trials")
