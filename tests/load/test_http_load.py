"""A bounded load on the real server: gunicorn (2 workers) on loopback, the real Redis, 4 client processes.

Bounded in requests and time, loopback only. Every answer must be a 200 with exactly the
values written; no timing is asserted (speed is measured in ``bench/``).
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fstore.core.settings import Settings
from fstore.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]
USERS = 500
REQUESTS_PER_CLIENT = 300
CLIENTS = 4


def _expected(user: int) -> dict:
    return {"clicks": user * 3, "spend": user / 4, "segment": f"s{user % 5}"}


@pytest.fixture(params=["gthread", "gevent"])
def server(request, tmp_path, redis_url, free_port, run_server):
    """gunicorn under each worker class we document: gthread (the default) and gevent (online-serving pods)."""
    env = {"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": redis_url}
    store = FeatureStore(Settings.from_env(env))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "user_stats", "entities": ["user"], "features": [
        {"name": "clicks", "data_type": "int", "transformation": "clicks"},
        {"name": "spend", "data_type": "float", "transformation": "spend"},
        {"name": "segment", "data_type": "string", "transformation": "segment"}]})
    now = datetime.now(timezone.utc)
    store.online.write_rows(store.feature_set_version("user_stats"),
                            [{"user_id": u, "event_timestamp": now, **_expected(u)} for u in range(USERS)])
    store.close()

    port = free_port
    process = run_server(
        [sys.executable, "-m", "gunicorn", "server:app", "-c", "conf/gunicorn.conf.py", "-w", "2",
         "-b", f"127.0.0.1:{port}"], port,
        cwd=REPO, env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "GUNICORN_WORKER_CLASS": request.param})
    yield port
    log = run_server.log_path
    expected = {"gthread": "fstore.api.gunicorn_worker.SpreadThreadWorker"}.get(request.param, request.param)
    assert f"Using worker: {expected}" in log.read_text()
    process.terminate()
    assert process.wait(timeout=30) == 0, log.read_text()[-2000:]


def _client(args: tuple[int, int]) -> tuple[int, list[str]]:
    """One keep-alive client: a fixed number of requests; returns (answers checked, problems)."""
    port, seed = args
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    problems: list[str] = []
    checked = 0
    for i in range(REQUESTS_PER_CLIENT):
        users = [(seed * 7919 + i * 31 + j) % (USERS + 20) for j in range(1 if i % 10 else 100)]
        body = json.dumps({"features": ["clicks", "spend", "segment"], "entities": {"user_id": users}})
        connection.request("POST", "/api/v1/serving/online", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            problems.append(f"status {response.status}: {answer}")
            continue
        for user in users:
            got, status = answer["features"][str(user)], answer["statuses"][str(user)]
            if user < USERS:
                ok = got == _expected(user) and set(status.values()) == {"present"}
            else:  # never written: missing, null
                ok = got == {"clicks": None, "spend": None, "segment": None} and set(status.values()) == {"missing"}
            if not ok:
                problems.append(f"user {user}: {got} {status}")
        checked += 1
    connection.close()
    return checked, problems[:5]


def test_four_clients_on_two_workers_get_every_answer_right(server):
    with multiprocessing.get_context("spawn").Pool(CLIENTS) as pool:
        results = pool.map(_client, [(server, seed) for seed in range(CLIENTS)], chunksize=1)
    assert [problems for _, problems in results] == [[]] * CLIENTS
    assert sum(checked for checked, _ in results) == CLIENTS * REQUESTS_PER_CLIENT


def test_the_registry_and_the_metrics_answer_beside_online_load(server):
    """Under either worker class, a registry read and a metrics scrape answer while clients load the server."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pending = pool.map_async(_client, [(server, seed) for seed in range(2)], chunksize=1)
        connection = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        connection.request("GET", "/api/v1/feature-sets/user_stats")
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["name"] == "user_stats"
        results = pending.get(timeout=120)
    assert [problems for _, problems in results] == [[]] * 2
    connection.request("GET", "/monitoring/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == 200
    assert 'fstore_http_requests_total{endpoint="/api/v1/serving/online",method="POST",status="200"}' in text
