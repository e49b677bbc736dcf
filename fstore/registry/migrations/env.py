"""Alembic environment: runs migrations for fstore's registry (SQLite or PostgreSQL)."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from fstore.registry.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""
if not url:
    # `alembic upgrade head` from the repository root: the same settings the app uses.
    from fstore.core.settings import Settings

    url = Settings.from_env().database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def run_migrations() -> None:
    if url.startswith("sqlite"):
        from fstore.registry.db import ensure_sqlite_folder

        ensure_sqlite_folder(url)  # `alembic upgrade head` on a fresh machine: the folder may not exist yet
    connectable = engine_from_config(config.get_section(config.config_ini_section) or {"sqlalchemy.url": url},
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
