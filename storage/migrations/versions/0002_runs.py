"""Tuning runs and their candidate device maps.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=4096), nullable=False),
        sa.Column("model_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("hardware_name", sa.String(length=512), nullable=False),
        sa.Column("hardware_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("new_tokens", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=64), nullable=False),
        sa.Column("max_memory_json", sa.Text(), nullable=False),
        sa.Column("pins_json", sa.Text(), nullable=False),
        sa.Column("exclude_json", sa.Text(), nullable=False),
        sa.Column("study_name", sa.String(length=512), nullable=False),
        sa.Column(
            "status",
            sa.Enum("RUNNING", "COMPLETE", "INTERRUPTED", "FAILED", name="runstatus"),
            nullable=False,
        ),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("phase_seconds_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # Its foreign key to candidates comes below, once that table exists.
        sa.Column("winner_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("study_name", name=op.f("uq_runs_study_name")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_key"), ["key"], unique=False)

    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("is_baseline", sa.Boolean(), nullable=False),
        sa.Column("trial", sa.Integer(), nullable=True),
        sa.Column("device_map_json", sa.Text(), nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=True),
        sa.Column("feasible", sa.Boolean(), nullable=False),
        sa.Column("prediction_json", sa.Text(), nullable=True),
        sa.Column("measured_s", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_candidates_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_candidates_run_id_name")),
    )
    # SQLite cannot add a constraint to a table; batch mode rebuilds `runs` (still empty) there.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_runs_winner_id_candidates"),
            "candidates",
            ["winner_id"],
            ["id"],
            ondelete="SET NULL",
            use_alter=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_runs_winner_id_candidates"), type_="foreignkey")
    op.drop_table("candidates")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_key"))
    op.drop_table("runs")
    # PostgreSQL keeps an enum type after its table is gone.
    sa.Enum(name="runstatus").drop(op.get_bind(), checkfirst=True)
