"""runs record what of the source they read, and the late events they did not process

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 09:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("materialization_runs") as batch:
        batch.add_column(sa.Column("source_read", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("late_dropped", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("materialization_runs") as batch:
        batch.drop_column("late_dropped")
        batch.drop_column("source_read")
