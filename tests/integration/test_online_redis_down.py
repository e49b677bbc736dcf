"""Redis going down and coming back, on a redis-server of our own (never the shared one on 6379)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest
import redis

from fstore.core.errors import Unavailable
from fstore.storage.online.redis_store import RedisOnlineStore
from fstore.core.settings import Settings
from fstore.store import FeatureStore

pytestmark = pytest.mark.redis


class OwnRedis:
    """A throw-away redis-server: no persistence, stopped and restarted on the same port."""

    def __init__(self, port: int, folder) -> None:
        self.port = port
        self.folder = folder

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--enable-debug-command", "local",  # DEBUG SLEEP: a stall at a chosen moment
                        "--daemonize", "yes", "--dir", str(self.folder), "--pidfile", str(self.folder / "redis.pid")],
                       check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)


@pytest.fixture()
def own_redis(tmp_path, free_port):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(free_port, tmp_path)
    server.start()
    yield server
    server.stop()


def _store(tmp_path, port: int) -> FeatureStore:
    store = FeatureStore(Settings.from_env({
        "STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_TIMEOUT": "0.2",
        "SERVING_CACHE_ENABLED": "true", "SERVING_CACHE_TTL": "0.05"}))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "user_stats", "entities": ["user"], "features": [
        {"name": "clicks", "data_type": "int", "transformation": "clicks"}]})
    return store


def _write(store: FeatureStore) -> None:
    store.online.write_rows(store.feature_set_version("user_stats"),
                            [{"user_id": u, "event_timestamp": datetime.now(timezone.utc), "clicks": u * 10} for u in (1, 2, 3)])


def test_redis_down_fails_fast_serves_the_cache_and_recovers_by_itself(tmp_path, own_redis):
    store = _store(tmp_path, own_redis.port)
    _write(store)
    assert store.get_online_features(features=["clicks"], entities={"user_id": [1, 2]})["features"]["1"] == {"clicks": 10}

    own_redis.stop()
    # Not cached: a 503 that says the online store is unavailable; after a few failures the breaker opens
    # and further calls fail without touching the network.
    for _ in range(3):
        with pytest.raises(Unavailable, match="online store unavailable") as err:
            store.get_online_features(features=["clicks"], entities={"user_id": 3})
        assert err.value.http_status == 503
    assert store.online.breaker.state == "open"
    with pytest.raises(Unavailable, match="retrying in"):
        store.get_online_features(features=["clicks"], entities={"user_id": 3})
    with pytest.raises(Unavailable):
        store.online.ping()

    # Cached keys (even past the cache TTL, within the grace) are answered, marked degraded.
    time.sleep(0.1)
    degraded = store.get_online_features(features=["clicks"], entities={"user_id": [2, 1]})
    assert degraded["features"] == {"2": {"clicks": 20}, "1": {"clicks": 10}}
    assert degraded["metadata"]["degraded"] is True

    # Redis returns (empty: it had no persistence); serving recovers with no restart of ours.
    own_redis.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            store.online.ping()
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the online store did not recover after Redis came back"
            time.sleep(0.1)
    _write(store)
    out = store.get_online_features(features=["clicks"], entities={"user_id": 3})
    assert out["features"]["3"] == {"clicks": 30} and out["metadata"]["degraded"] is False
    assert store.online.breaker.state == "closed"
    store.close()


def test_bounded_load_across_an_outage(tmp_path, own_redis):
    """Requests keep coming while Redis stops and restarts: each answers or raises Unavailable, nothing else."""
    store = _store(tmp_path, own_redis.port)
    _write(store)
    outcomes: list[str] = []

    def burst(n: int) -> None:
        for _ in range(n):
            try:  # a key never asked before, so never cached
                store.get_online_features(features=["clicks"], entities={"user_id": 100 + len(outcomes)})
                outcomes.append("ok")
            except Unavailable:
                outcomes.append("unavailable")

    burst(20)
    own_redis.stop()
    burst(50)
    own_redis.start()
    deadline = time.monotonic() + 15
    while outcomes[-1] != "ok":
        assert time.monotonic() < deadline, "serving did not recover"
        burst(1)
        time.sleep(0.05)
    burst(20)
    assert outcomes[:20] == ["ok"] * 20
    assert set(outcomes[20:70]) == {"unavailable"}
    assert outcomes[-20:] == ["ok"] * 20
    store.close()



def test_one_deadline_bounds_a_read_that_waited_for_a_connection(own_redis):
    """A read first waits for a pool connection (another caller holds the only one), then Redis stalls: the
    read gives up REDIS_TIMEOUT after it started, not a full timeout per stage (issue #32: 0.41 s for a 0.25 s
    timeout). Without the one deadline this read took 0.40 s (0.15 s in the pool, then 0.25 s on the socket)."""
    store = RedisOnlineStore(f"redis://127.0.0.1:{own_redis.port}/0", pool_size=1, timeout=0.25)
    held = store._pool.get_connection()  # another caller's: the pool's one connection, open and idle
    sleeper = redis.Redis(port=own_redis.port, socket_timeout=5)
    sleeper.ping()
    stall = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "0.8"))
    stall.start()  # Redis answers nobody for 0.8 s
    time.sleep(0.02)
    handback = threading.Timer(0.15, store._pool.release, args=(held,))  # the other caller is done in 0.15 s
    handback.start()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="Timeout"):
        store.read_many([("user_stats", ["user_stats:1"], ["clicks"])])
    elapsed = time.monotonic() - started
    handback.join(), stall.join()
    store.close()
    sleeper.close()
    assert elapsed <= 0.25 + 0.03, elapsed


def test_one_deadline_bounds_a_read_that_must_open_a_new_connection(own_redis):
    """As above, but the connection handed back was dropped, so the read connects anew (TCP, then the
    handshake Redis must answer) after waiting for it: every stage within one REDIS_TIMEOUT, not a full
    timeout for the handshake after the wait (0.15 s + 0.25 s before)."""
    store = RedisOnlineStore(f"redis://127.0.0.1:{own_redis.port}/0", pool_size=1, timeout=0.25)
    held = store._pool.get_connection()
    held.disconnect()  # the other caller's connection broke: the next user must connect again
    sleeper = redis.Redis(port=own_redis.port, socket_timeout=5)
    sleeper.ping()
    stall = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "0.8"))
    stall.start()
    time.sleep(0.02)
    handback = threading.Timer(0.15, store._pool.release, args=(held,))
    handback.start()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="Timeout"):
        store.read_many([("user_stats", ["user_stats:1"], ["clicks"])])
    elapsed = time.monotonic() - started
    handback.join(), stall.join()
    assert elapsed <= 0.25 + 0.03, elapsed
    # The connection keeps the full timeout for the reads after this one.
    assert store.read_many([("user_stats", ["user_stats:1"], ["clicks"])]) is not None
    assert all(c.socket_timeout == 0.25 for c in store._pool._connections)
    store.close()
    sleeper.close()
