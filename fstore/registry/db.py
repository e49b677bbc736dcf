"""Registry database: engine creation and schema upgrades (Alembic).

Callers own sessions: ``with Session(engine) as s, s.begin(): ...`` frames one
transaction, so a failed request leaves the registry as it was.
"""
from __future__ import annotations

import math
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from fstore.core.errors import Unavailable
from fstore.core.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration's revision; a test holds it equal to Alembic's head. Lets a store whose
# registry is already there skip importing Alembic (0.15 s of every CLI command and job start).
HEAD_REVISION = "0005"


def make_engine(settings: Settings) -> Engine:
    """An engine for the registry; SQLite gets WAL, foreign keys and a busy timeout.

    PostgreSQL gets bounded calls (``DB_CONNECT_TIMEOUT``, ``DB_STATEMENT_TIMEOUT``), a ping on
    checkout that is bounded too, and connection failures raised as ``Unavailable`` (503), logged
    once per outage (``fstore.registry.guard``).
    """
    url = settings.database_url
    if settings.is_sqlite:
        ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    from fstore.registry.guard import guard_engine

    statement_ms = int(settings.db_statement_timeout * 1000)
    # libpq counts connect_timeout in whole seconds (at least 2); the server enforces the statement
    # and lock timeouts itself, and ends a transaction left idle (a client that died mid-write).
    options = (f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms} "
               f"-c idle_in_transaction_session_timeout={max(statement_ms * 4, 10_000)}")
    engine = create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size,
                           pool_timeout=settings.db_connect_timeout,
                           connect_args={"connect_timeout": max(2, math.ceil(settings.db_connect_timeout)),
                                         "options": options})
    return guard_engine(engine, connect_seconds=settings.db_connect_timeout,
                        statement_seconds=settings.db_statement_timeout + 1.0)


def ensure_sqlite_folder(url: str) -> None:
    path = url.split("sqlite:///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def alembic_config(database_url: str):
    """An Alembic config pointing at the packaged migrations and ``database_url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the registry schema to ``revision`` (default: the newest)."""
    from alembic import command

    if settings.is_sqlite:
        ensure_sqlite_folder(settings.database_url)
    try:
        command.upgrade(alembic_config(settings.database_url), revision)
    except OperationalError as exc:
        raise Unavailable(f"registry database unreachable: {exc.orig}") from None


def at_head(engine: Engine) -> bool:
    """True when the registry's schema is at ``HEAD_REVISION`` (one query, no Alembic)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
    except SQLAlchemyError:  # no table yet (a new registry), or unreachable: upgrade() explains
        return False


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
