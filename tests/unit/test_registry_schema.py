"""The registry's schema revision as the code knows it, and the start-up check that uses it."""
from __future__ import annotations

from alembic.script import ScriptDirectory

from fstore.registry.db import HEAD_REVISION, alembic_config, at_head, make_engine, upgrade
from fstore.core.settings import Settings


def test_head_revision_is_alembics_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_current_head() == HEAD_REVISION


def test_at_head_only_once_upgraded(tmp_path):
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path)})
    engine = make_engine(settings)
    assert not at_head(engine)  # a new registry: no alembic_version table yet
    upgrade(settings, "0001")
    assert not at_head(engine)
    upgrade(settings)
    assert at_head(engine)
    engine.dispose()
