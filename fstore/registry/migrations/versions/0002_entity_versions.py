"""entity versions: every change to an entity keeps its old spec

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 05:05:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    versions = op.create_table(
        "entity_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["entity_id"], ["entities.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("entity_id", "version"),
    )
    op.create_index("ix_entity_versions_entity_id", "entity_versions", ["entity_id"], unique=False)
    # Entities registered before this revision get their current spec as their only recorded version.
    entities = sa.table("entities", sa.column("id", sa.Integer), sa.column("version", sa.Integer),
                        sa.column("spec", sa.JSON), sa.column("updated_at", sa.DateTime),
                        sa.column("created_by", sa.String))
    connection = op.get_bind()
    rows = connection.execute(sa.select(entities.c.id, entities.c.version, entities.c.spec, entities.c.updated_at,
                                        entities.c.created_by)).all()
    if rows:
        op.bulk_insert(versions, [{"entity_id": r.id, "version": r.version, "spec": r.spec, "changes": [],
                                   "created_at": r.updated_at, "created_by": r.created_by or ""} for r in rows])


def downgrade() -> None:
    op.drop_index("ix_entity_versions_entity_id", table_name="entity_versions")
    op.drop_table("entity_versions")
