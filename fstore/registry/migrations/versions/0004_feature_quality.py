"""feature quality: profiles per run and training set, anomaly alerts, feature importances

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 12:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_profiles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feature_set", sa.String(63), nullable=False, index=True),
        sa.Column("run_id", sa.String(36), nullable=True, index=True),
        sa.Column("training_set", sa.String(63), nullable=True, index=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    )
    op.create_table(
        "quality_alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feature_set", sa.String(63), nullable=False, index=True),
        sa.Column("feature", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False, index=True),
        sa.Column("metric", sa.String(40), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("median", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    )
    op.create_table(
        "feature_importances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("training_set", sa.String(63), nullable=False, index=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("method", sa.String(63), nullable=False),
        sa.Column("feature", sa.String(200), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("training_set", "label", "method", "feature"),
    )


def downgrade() -> None:
    op.drop_table("feature_importances")
    op.drop_table("quality_alerts")
    op.drop_table("feature_profiles")
