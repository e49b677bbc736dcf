"""An online store that lost its values (Redis restarted empty, the embedded file deleted) is reported
degraded, and ``fstore online reload`` brings back exactly the values it held, from the offline table.

Everything runs on the real Redis (database 15, FLUSHDB is what a restart without persistence looks like
to us), a private redis-server really restarted, and the embedded SQLite store; each engine reloads.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fstore.ops import monitoring
from fstore.serving import online as serving
from fstore.api import create_app
from fstore.core.errors import Conflict, InvalidDefinition
from fstore.registry import runs
from fstore.store import FeatureStore
from test_materialize_support import (  # noqa: F401 - fixtures
    DAY, FEATURES, T0, T_END, any_online_store, create_set, events, expected_online, online_values, source,
)
from test_online_redis_down import own_redis  # noqa: F401 - fixture
from test_security_support import headers, make_keys

ROOT = Path(__file__).resolve().parents[2]
ASK = {"features": [f"user_txn:{f}" for f in FEATURES], "entities": {"user_id": [1, 2, 3]}}


def raw(store: FeatureStore, name: str = "user_txn") -> dict:
    """The set's stored bytes, read beside the library: Redis hashes, or the embedded rows."""
    if store.settings.redis_url:
        client = redis.Redis.from_url(store.settings.redis_url)
        try:
            return {key: client.hgetall(key) for key in client.scan_iter(match=f"fs:{name}:*")}
        finally:
            client.close()
    with sqlite3.connect(store.settings.embedded_online_path) as conn:
        return {k: (ts, data) for k, ts, data in conn.execute("SELECT k, ts, data FROM online_values WHERE fs = ?", (name,))}


def lose_everything(store: FeatureStore) -> None:
    """What a store restarted empty looks like: FLUSHDB, or every row of the embedded file gone."""
    if store.settings.redis_url:
        client = redis.Redis.from_url(store.settings.redis_url)
        client.flushdb()
        client.close()
        return
    with sqlite3.connect(store.settings.embedded_online_path) as conn:
        for table in ("online_values", "online_meta", "online_loaded"):
            conn.execute(f"DELETE FROM {table}")


def answer(store: FeatureStore) -> dict:
    return store.get_online_features(**ASK)


def after_check_interval() -> None:
    """Serving checks a set's marker at most every MARKER_CHECK_SECONDS per process: let that pass."""
    time.sleep(serving.MARKER_CHECK_SECONDS + 0.05)


def ready(store: FeatureStore) -> tuple[int, dict]:
    response = create_app(store=store).test_client().get("/ready")
    return response.status_code, response.get_json()


def freshness(store: FeatureStore) -> dict:
    return {item["feature_set"]: item for item in monitoring.data_freshness(store)["items"]}["user_txn"]


def no_auth(store: FeatureStore) -> FeatureStore:
    store.settings = store.settings.with_(auth_enabled=False)
    return store


def test_lost_values_are_degraded_until_a_reload_restores_them_bit_for_bit(any_online_store, source):
    store = no_auth(any_online_store)
    create_set(store, source)
    # A set never loaded answers "missing" without being degraded: nothing was lost.
    assert answer(store)["metadata"]["degraded"] is False
    run = store.materialize("user_txn", T0, T_END)
    marker = store.online.read_marker("user_txn")
    assert marker["complete"] is True and marker["kind"] == "run" and marker["run_id"] == run["id"]
    assert marker["offline_version"] == run["offline_version"] and marker["keys_written"] == 3
    before = raw(store)
    good = answer(store)
    assert good["metadata"]["degraded"] is False and good["metadata"]["degraded_reason"] is None
    assert ready(store) == (200, {"status": "ready", "checks": {"registry": "ok", "online_store": "ok"}})

    lose_everything(store)
    after_check_interval()
    lost = answer(store)
    assert all(s == "missing" for row in lost["statuses"].values() for s in row.values())
    assert lost["metadata"]["degraded"] is True
    assert "fstore online reload user_txn" in lost["metadata"]["degraded_reason"]
    status, body = ready(store)
    assert status == 200 and body["status"] == "degraded" and body["checks"]["online_store"] == "degraded"
    assert [item["feature_set"] for item in body["online_values_lost"]] == ["user_txn"]
    assert "reload" in freshness(store)["online_values_lost"]
    # Nothing recomputes the lost values by itself: the watermark is at the end.
    assert store.materialize_incremental("user_txn", end=T_END)["status"] == "skipped"

    # A later run loads only its own keys (user 1): the set stays degraded, its marker says incomplete.
    partial = store.materialize("user_txn", T0 + 4 * DAY, T_END)
    assert partial["online_rows"] == 1 and store.online.read_marker("user_txn")["complete"] is False
    after_check_interval()
    assert answer(store)["metadata"]["degraded"] is True and ready(store)[1]["status"] == "degraded"

    # A value newer than anything offline (user 2) must survive the reload: newer wins.
    fsv = store.feature_set_version("user_txn")
    store.online.write_rows(fsv, [{"user_id": 2, "event_timestamp": T_END + DAY, "amount_x2": -1.0, "txn_count_2d": 9,
                                   "amount_sum_2d": -2.0, "avg_amount_2d": None}])
    user2 = b"fs:user_txn:1:2" if store.settings.redis_url else "fs:user_txn:1:2"
    newer = raw(store)[user2]

    result = store.reload_online("user_txn")
    assert result["keys_written"] == 2 and result["features_skipped"] == []  # users 1 and 3; user 2 kept newer
    assert result["offline_version"] == partial["offline_version"]
    after = raw(store)
    assert after == {**before, user2: newer}
    assert after != before  # the newer value is not the offline one
    restored = answer(store)
    assert restored["metadata"]["degraded"] is False and restored["metadata"]["degraded_reason"] is None
    assert {u: restored["features"][u] for u in ("1", "3")} == {u: good["features"][u] for u in ("1", "3")}
    assert restored["features"]["2"]["user_txn:txn_count_2d"] == 9
    marker = store.online.read_marker("user_txn")
    assert marker["complete"] is True and marker["kind"] == "reload" and "run_id" not in marker
    assert ready(store)[1]["status"] == "ready" and freshness(store)["online_values_lost"] is None


@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_cli_reload_after_a_flush(settings, redis_url, spark, source, engine, tmp_path):
    store = no_auth(FeatureStore(settings.with_(redis_url=redis_url, compute_engine=engine)).use_spark(spark))
    try:
        create_set(store, source)
        store.materialize("user_txn", T0, T_END)
        before = raw(store)
        assert online_values(store) == expected_online(events())
        lose_everything(store)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_PATH": settings.storage_path, "REDIS_URL": redis_url,
               "COMPUTE_ENGINE": engine, "SPARK_MASTER": "local[1]"}
        done = subprocess.run([sys.executable, "cli.py", "--json", "online", "reload", "user_txn"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
        assert result["keys_written"] == 3 and result["engine"] == engine and result["feature_set"] == "user_txn"
        assert raw(store) == before  # bit for bit
        after_check_interval()
        assert answer(store)["metadata"]["degraded"] is False
        assert store.online.read_marker("user_txn")["complete"] is True
    finally:
        store.close()


def test_a_real_redis_restart_through_the_http_api(settings, own_redis, source):  # noqa: F811 - fixture
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    store = FeatureStore(settings.with_(redis_url=url, compute_engine="duckdb", auth_enabled=True), auto_upgrade=True)
    try:
        create_set(store, source)
        keys = make_keys(store)
        store.materialize("user_txn", T0, T_END)
        before = raw(store)
        client = create_app(store=store).test_client()
        online = lambda: client.post("/api/v1/serving/online", json=ASK, headers=headers(keys["serve_online"]))  # noqa: E731
        assert online().get_json()["metadata"]["degraded"] is False

        own_redis.stop()
        own_redis.start()  # --save "": back empty
        deadline = time.monotonic() + 15
        while (response := online()).status_code != 200:
            assert time.monotonic() < deadline, response.get_data()
            time.sleep(0.1)
        after_check_interval()
        lost = online().get_json()
        assert lost["metadata"]["degraded"] is True and "reload" in lost["metadata"]["degraded_reason"]
        body = client.get("/ready", headers=headers(keys["read_registry"])).get_json()
        assert body["status"] == "degraded" and body["online_values_lost"][0]["feature_set"] == "user_txn"

        path = "/api/v1/feature-sets/user_txn/online/reload"
        assert client.post(path, json={}, headers=headers(keys["read_registry"])).status_code == 403
        response = client.post(path, json={}, headers=headers(keys["materialize"]))
        assert response.status_code == 200, response.get_data()
        assert response.get_json()["keys_written"] == 3
        assert raw(store) == before
        assert online().get_json()["metadata"]["degraded"] is False
        assert client.get("/ready", headers=headers(keys["read_registry"])).get_json()["status"] == "ready"
    finally:
        store.close()


def test_a_deleted_embedded_store_file(settings, on_engine, source):
    store = no_auth(on_engine(settings))
    create_set(store, source)
    store.materialize("user_txn", T0, T_END)
    before = raw(store)
    store.close()
    path = settings.embedded_online_path
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    store = no_auth(on_engine(settings))  # a new process's view: an empty store file
    try:
        lost = answer(store)
        assert lost["metadata"]["degraded"] is True and ready(store)[1]["status"] == "degraded"
        assert store.reload_online("user_txn")["keys_written"] == 3
        assert raw(store) == before
        assert answer(store)["metadata"]["degraded"] is False and ready(store)[1]["status"] == "ready"
    finally:
        store.close()


@pytest.fixture()
def duck(settings, redis_url):
    store = no_auth(FeatureStore(settings.with_(redis_url=redis_url, compute_engine="duckdb")))
    yield store
    store.close()


def test_values_without_a_marker_are_not_lost(duck, source):
    """Values loaded before markers existed (or a marker deleted alone) are not reported lost."""
    create_set(duck, source)
    duck.materialize("user_txn", T0, T_END)
    redis.Redis.from_url(duck.settings.redis_url).delete("fstore:loaded:user_txn")
    assert answer(duck)["metadata"]["degraded"] is False and ready(duck)[1]["status"] == "ready"
    duck.materialize("user_txn", T0 + 4 * DAY, T_END)  # the next load writes a complete marker
    assert duck.online.read_marker("user_txn")["complete"] is True


def test_reload_takes_the_sets_lock_and_needs_an_offline_table(duck, source):
    create_set(duck, source)
    duck.materialize("user_txn", T0, T_END)
    with duck.transaction() as s:
        fs_id = runs.feature_set_row(s, "user_txn").id
    from fstore.compute.materialize import lock_name

    assert runs.try_acquire_lock(duck.engine, lock_name(fs_id), "a-running-run", 60) is None
    with pytest.raises(Conflict, match="already being materialized by run a-running-run"):
        duck.reload_online("user_txn")
    runs.release_lock(duck.engine, lock_name(fs_id), "a-running-run")
    assert duck.reload_online("user_txn")["keys_written"] == 3  # equal event times rewrite the same bytes

    create_set(duck, source, name="online_only")
    duck.update_feature_set("online_only", {"offline_enabled": False})
    with pytest.raises(InvalidDefinition, match="keeps no offline table"):
        duck.reload_online("online_only")
