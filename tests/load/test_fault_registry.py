"""The registry stopped and frozen under online load: serving answers from its snapshot, writes answer 503.

A private PostgreSQL cluster (``faults.PrivatePostgres``) is the registry of a real gunicorn
server (2 gthread workers, DuckDB, the embedded online store); 4 keep-alive clients load the
online endpoint while the test stops the cluster (``pg_ctl stop``) or freezes it (SIGSTOP
of every PostgreSQL process). Figures asserted: every online answer during the fault is a
200 with the values written, none slower than 1 s, answers turn ``degraded`` and back; a
registry write answers 503 in the JSON error shape within 6 s and leaves nothing behind; the
log holds a few lines per outage and no traceback.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fstore.core.settings import Settings
from fstore.store import FeatureStore
from faults import Load, PrivatePostgres

REPO = Path(__file__).resolve().parents[2]
USERS = [1, 2, 3]
BODY = {"features": ["clicks", "spend"], "entities": {"user_id": USERS}}
WRITE_BOUND_SECONDS = 4.5  # a ping cut after DB_CONNECT_TIMEOUT (1 s) + one new connection (libpq: 2 s at least); the rest fail fast
SLOWEST_ONLINE_SECONDS = 1.0

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def registry():
    pg = PrivatePostgres()
    yield pg
    pg.close()


@pytest.fixture()
def server(registry, tmp_path, free_port, run_server):
    env = {"STORAGE_PATH": str(tmp_path / "store"), "DATABASE_URL": registry.url, "COMPUTE_ENGINE": "duckdb",
           "DB_CONNECT_TIMEOUT": "1", "DB_STATEMENT_TIMEOUT": "1", "AUTH_ENABLED": "false"}
    store = FeatureStore(Settings.from_env(env), auto_upgrade=True)
    if not store.list_entities()["total"]:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        store.create_feature_set({"name": "user_stats", "entities": ["user"], "features": [
            {"name": "clicks", "data_type": "int", "transformation": "clicks"},
            {"name": "spend", "data_type": "float", "transformation": "spend"}]})
    store.online.write_rows(store.feature_set_version("user_stats"),
                            [{"user_id": u, "event_timestamp": datetime.now(timezone.utc), "clicks": u * 3,
                              "spend": u / 4} for u in USERS])
    store.close()
    process = run_server([sys.executable, "-m", "gunicorn", "server:app", "-c", "conf/gunicorn.conf.py", "-w", "2",
                          "-b", f"127.0.0.1:{free_port}"], free_port, cwd=REPO,
                         env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(free_port)})
    yield free_port, run_server.log_path
    process.terminate()
    process.wait(timeout=30)


def _expected_features() -> dict:
    return {str(u): {"clicks": u * 3, "spend": u / 4} for u in USERS}


def _write(port: int, name: str) -> tuple[float, int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    connection.request("POST", "/api/v1/entities", body=json.dumps({"name": name, "join_keys": ["k"], "value_type": "int"}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    return time.monotonic() - started, response.status, body


def _get_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def _check_fault(port: int, log: Path, *, begin, end, fault_seconds: float, name: str) -> dict:
    """Load the server, run ``begin`` … ``end`` around a fault; assert the online and write behaviour."""
    with Load(port, BODY) as load:
        time.sleep(1.0)  # warm: every worker has resolved the request once
        log_before = log.read_text()
        fault_at = time.monotonic()
        begin()
        time.sleep(0.5)
        write_seconds, write_status, write_body = _write(port, name)
        time.sleep(max(fault_seconds - (time.monotonic() - fault_at), 0))
        end()
        back_at = time.monotonic()
        time.sleep(4.0)  # a refresh interval (2 s) and a margin
        during = load.between(fault_at, back_at)
        after = load.between(back_at + 3.0, back_at + 4.0)
    bad = [(status, answer) for _, _, status, answer in during if status != 200]
    assert not bad, bad[:3]
    assert all(a["features"] == _expected_features() for _, _, _, a in during)
    slowest = max(seconds for _, seconds, _, _ in during)
    assert slowest < SLOWEST_ONLINE_SECONDS, slowest
    assert any(a["metadata"]["degraded"] for _, _, _, a in during), "no answer said degraded during the outage"
    assert after and not any(a["metadata"]["degraded"] for _, _, _, a in after), "still degraded 3 s after recovery"
    assert write_status == 503 and write_body["error"]["code"] == "unavailable", (write_status, write_body)
    assert write_seconds < WRITE_BOUND_SECONDS, write_seconds
    assert _get_status(port, f"/api/v1/entities/{name}") == 404  # nothing half-written
    text = log.read_text()[len(log_before):]
    assert "Traceback" not in text, text[-3000:]
    assert text.count("registry database unreachable") <= 2, text[-3000:]  # one per worker at most
    return {"answers": len(during), "slowest_s": round(slowest, 3), "write_s": round(write_seconds, 2),
            "log_lines": len(text.splitlines())}


def test_online_serving_survives_a_stopped_registry(registry, server):
    port, log = server
    figures = _check_fault(port, log, begin=registry.stop, end=registry.start, fault_seconds=5.0, name="during_stop")
    print("registry stopped 5 s:", figures)


def test_online_serving_survives_a_frozen_registry(registry, server):
    port, log = server
    figures = _check_fault(port, log, begin=registry.freeze, end=registry.thaw, fault_seconds=5.0, name="during_freeze")
    print("registry frozen 5 s:", figures)
