"""`fstore serve`: gunicorn started from the user's folder, with the environment's settings."""
from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_serve_keeps_the_working_folder_and_reads_workers_from_the_environment(tmp_path, free_port, run_server):
    env = {**os.environ, "STORAGE_PATH": "relative_store", "WEB_CONCURRENCY": "1", "PORT": str(free_port),
           "HOST": "127.0.0.1", "COMPUTE_ENGINE": "duckdb"}
    for name in ("DATABASE_URL", "REDIS_URL", "AUTH_ENABLED"):
        env.pop(name, None)
    process = run_server([sys.executable, str(REPO / "cli.py"), "serve"], free_port, cwd=tmp_path, env=env)
    # Bound to loopback, so no key is needed; the entity lands in ./relative_store of the user's folder.
    connection = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
    connection.request("POST", "/api/v1/entities", json.dumps({"name": "user", "join_keys": ["user_id"]}),
                       {"Content-Type": "application/json"})
    assert connection.getresponse().status == 201
    assert any((tmp_path / "relative_store").iterdir())
    assert len(_children(process.pid)) == 1  # WEB_CONCURRENCY=1 worker
