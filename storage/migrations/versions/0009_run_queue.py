"""The runs table as a queue of tuning requests: a queued status, the trials a queued request asked
for, and why a run failed.

PostgreSQL keeps the status as an enum type, which gains its value in place; SQLite keeps it as
text, which needs no change.

Downgrading deletes the runs still queued (requests no worker has prepared: nothing was tuned
for them, and an older tuner has no status for them; they hold no candidates), then, on
PostgreSQL, gives the status its enum type without the value: PostgreSQL cannot drop a value
from an enum type, so the type is made again and the column converted to it.

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


#: The statuses before this revision (0002's enum type).
_OLDER_STATUSES = ("RUNNING", "COMPLETE", "INTERRUPTED", "FAILED")


def downgrade() -> None:
    # Only requests no worker has prepared are QUEUED: preparing one makes it RUNNING.
    op.execute("DELETE FROM runs WHERE status = 'QUEUED'")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE runstatus RENAME TO runstatus_queued")
        values = ", ".join(f"'{status}'" for status in _OLDER_STATUSES)
        op.execute(f"CREATE TYPE runstatus AS ENUM ({values})")
        op.execute("ALTER TABLE runs ALTER COLUMN status TYPE runstatus USING status::text::runstatus")
        op.execute("DROP TYPE runstatus_queued")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("requested_trials")
