"""A measured map keeps its prefill and decode step beside its whole latency, and whether the
machine was busy while it was timed: measured over predicted per phase is what `optimize
--calibrate` learns from.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("measured_prefill_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("measured_decode_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("measure_busy", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_column("measure_busy")
        batch_op.drop_column("measured_decode_s")
        batch_op.drop_column("measured_prefill_s")
