"""Models, hardware, profiles and unit profiles.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=4096), nullable=False),
        sa.Column("architecture", sa.String(length=512), nullable=False),
        sa.Column("dtype", sa.String(length=64), nullable=False),
        sa.Column("weights", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_models_fingerprint")),
    )
    op.create_table(
        "hardware",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=512), nullable=False),
        sa.Column("profile_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hardware")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_hardware_fingerprint")),
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("hardware_id", sa.Integer(), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("new_tokens", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=64), nullable=False),
        sa.Column("full", sa.Boolean(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("graph_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_profiles_model_id_models")),
        sa.ForeignKeyConstraint(
            ["hardware_id"], ["hardware.id"], name=op.f("fk_profiles_hardware_id_hardware")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
        sa.UniqueConstraint(
            "model_id",
            "hardware_id",
            "batch",
            "seq",
            "new_tokens",
            "dtype",
            name=op.f("uq_profiles_model_id_hardware_id_batch_seq_new_tokens_dtype"),
        ),
    )
    op.create_table(
        "unit_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=512), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.Enum("PREFILL", "DECODE", name="phase"), nullable=False),
        sa.Column("time_s", sa.Double(), nullable=False),
        sa.Column("activation_peak_bytes", sa.BigInteger(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cache_bytes", sa.BigInteger(), nullable=False),
        sa.Column("kv_bytes_per_token", sa.BigInteger(), nullable=False),
        sa.Column("measured_as", sa.String(length=512), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name=op.f("fk_unit_profiles_profile_id_profiles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unit_profiles")),
        sa.UniqueConstraint(
            "profile_id",
            "unit",
            "device",
            "phase",
            name=op.f("uq_unit_profiles_profile_id_unit_device_phase"),
        ),
    )


def downgrade() -> None:
    op.drop_table("unit_profiles")
    op.drop_table("profiles")
    op.drop_table("hardware")
    op.drop_table("models")
    # PostgreSQL keeps an enum type after its table is gone.
    sa.Enum(name="phase").drop(op.get_bind(), checkfirst=True)
