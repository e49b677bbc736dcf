"""cost per run; online values dropped by usage-based retention

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 15:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("materialization_runs") as batch:
        batch.add_column(sa.Column("cost", sa.JSON(), nullable=True))
    op.create_table(
        "online_drops",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feature_set", sa.String(63), nullable=False, index=True),
        sa.Column("feature", sa.String(63), nullable=False),
        sa.Column("unused_days", sa.Integer(), nullable=False),
        sa.Column("keys", sa.Integer(), nullable=False),
        sa.Column("dropped_at", sa.DateTime(), nullable=False),
        sa.Column("dropped_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("feature_set", "feature"),
    )


def downgrade() -> None:
    op.drop_table("online_drops")
    with op.batch_alter_table("materialization_runs") as batch:
        batch.drop_column("cost")
