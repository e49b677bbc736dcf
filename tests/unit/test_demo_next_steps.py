"""The demo ends with what to do next, in commands that read the demo's own store."""
from __future__ import annotations

from fstore.demo import next_steps
from fstore.core.settings import Settings


def test_next_steps_name_the_demo_store_the_server_and_the_docs():
    env = {"STORAGE_PATH": "/tmp/demo store", "COMPUTE_ENGINE": "duckdb"}
    text = next_steps(Settings.from_env(env), env)
    prefix = "STORAGE_PATH='/tmp/demo store' COMPUTE_ENGINE=duckdb fstore"
    for command in ("feature-sets list", "runs list", "serve --host 127.0.0.1 --port 8002"):
        assert f"{prefix} {command}" in text
    assert "http://127.0.0.1:8002/docs" in text


def test_without_settings_the_commands_are_plain():
    assert "\n    fstore feature-sets list" in next_steps(Settings.from_env({}), {})
