"""ONLINE_CACHE=tracking on a real Redis: a cached value goes the moment Redis reports its key changed.

No test sleeps for an invalidation: ``tracker.sync()`` is the protocol's own barrier (a PING on the
tracking connection, answered after every invalidation queued before it), and a write made through
the serving process's own store returns only once its invalidations are applied. Loops that wait for
the tracking connection to be lost or re-established are bounded.

Every test runs on a redis-server of its own: Redis tracks keys server-wide, so a FLUSHDB in any
database of a shared Redis (other test runs do that all the time) would empty the cache mid-test.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import redis

from fstore.core.errors import InvalidDefinition, Unavailable
from fstore.core.settings import Settings
from fstore.ops import metrics
from fstore.serving import online as serving
from fstore.storage.online import tracking
from fstore.store import FeatureStore
from tests.conftest import store_env
from tests.integration.test_online_redis_down import own_redis  # noqa: F401 - the fixture

pytestmark = pytest.mark.redis
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_tracker_outlives_its_test():
    """A test that fails half-way must not leave a tracker retrying (and warning) in later tests."""
    yield
    for tracker in list(tracking._TRACKERS):
        tracker.close()


@pytest.fixture()
def redis_url(own_redis) -> str:  # noqa: F811 - this module's Redis: a server of its own (see the docstring)
    return f"redis://127.0.0.1:{own_redis.port}/0"


def _store(tmp_path, redis_url: str, cache: str = "tracking") -> FeatureStore:
    store = FeatureStore(Settings.from_env(store_env(tmp_path, REDIS_URL=redis_url, ONLINE_CACHE=cache,
                                                     REDIS_TIMEOUT="0.2", AUTH_ENABLED="false",
                                                     COMPUTE_ENGINE="duckdb")))
    if not store.list_entities()["items"]:
        source = tmp_path / "source"  # a source, so that rows can be pushed
        source.mkdir()
        pd.DataFrame({"user_id": [1], "event_timestamp": pd.Series([T0.replace(tzinfo=None)], dtype="datetime64[us]"),
                      "clicks": [1]}).to_parquet(source / "part-0.parquet", index=False)
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        store.create_feature_set({"name": "user_stats", "entities": ["user"], "source": {
            "path": str(source), "format": "parquet", "event_timestamp_column": "event_timestamp"}, "features": [
            {"name": "clicks", "data_type": "int", "transformation": "clicks"}]})
    return store


def _write(store: FeatureStore, clicks: dict[int, int], at: datetime) -> None:
    store.online.write_rows(store.feature_set_version("user_stats"),
                            [{"user_id": u, "event_timestamp": at, "clicks": c} for u, c in clicks.items()])


def _read(store: FeatureStore, *users: int) -> tuple[dict, dict]:
    answer = store.get_online_features(features=["clicks"], entities={"user_id": list(users)})
    return {int(k): v["clicks"] for k, v in answer["features"].items()}, answer["metadata"]


def _tracking(tmp_path, redis_url):
    """A tracking store with its tracker established, and a second store (no cache) as another writer."""
    store = _store(tmp_path, redis_url)
    tracker = serving.tracker(store)
    assert tracker is not None and tracker.wait_established(5.0)
    return store, tracker, _store(tmp_path, redis_url, cache="off")


def _until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_write_elsewhere_invalidates_before_the_next_read(tmp_path, redis_url):
    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {1: 10, 2: 20}, T0)
    assert _read(store, 1, 2)[0] == {1: 10, 2: 20}
    assert _read(store, 1, 2)[1]["cache_hit"]
    before = metrics.cache_totals()["invalidated_keys"]

    _write(other, {1: 11}, T0 + timedelta(seconds=1))  # another client: this process learns it from Redis only
    assert tracker.sync(1.0)
    values, meta = _read(store, 1, 2)
    assert values == {1: 11, 2: 20} and (meta["cache_hits"], meta["cache_misses"]) == (1, 1)
    assert metrics.cache_totals()["invalidated_keys"] >= before + 1
    assert _read(store, 1, 2)[1]["cache_hit"]  # cached again, and tracked again

    # The process's own write: visible to its next read with no barrier of the caller's.
    _write(store, {2: 22}, T0 + timedelta(seconds=2))
    values, meta = _read(store, 1, 2)
    assert values == {1: 11, 2: 22} and (meta["cache_hits"], meta["cache_misses"]) == (1, 1)
    store.close(), other.close()


def test_a_push_by_another_process_invalidates(tmp_path, redis_url):
    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {1: 10}, T0)
    assert _read(store, 1)[0] == {1: 10}
    assert _read(store, 1)[1]["cache_hit"]
    script = textwrap.dedent(f"""
        from datetime import datetime, timezone
        from fstore.core.settings import Settings
        from fstore.store import FeatureStore
        store = FeatureStore(Settings.from_env())
        out = store.push("user_stats", [{{"user_id": 1, "event_timestamp": datetime(2026, 1, 2, tzinfo=timezone.utc),
                                          "clicks": 99}}], to="online")
        assert out["online_rows"] == 1, out
        store.close()
    """)
    env = {**os.environ, **store_env(tmp_path, REDIS_URL=redis_url, ONLINE_CACHE="off", COMPUTE_ENGINE="duckdb")}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert tracker.sync(1.0)
    values, meta = _read(store, 1)
    assert values == {1: 99} and not meta["cache_hit"]
    store.close(), other.close()


def test_concurrent_writes_never_leave_a_stale_value_cached(tmp_path, redis_url):
    """A writer changes one key as fast as it can while this process reads it: a read that raced with an
    invalidation must not cache its (already old) value. After the writer stops and the barrier, the cache
    answers the last value written."""
    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {1: 0}, T0)
    last = 200
    done = threading.Event()
    fsv = other.feature_set_version("user_stats")

    def writer() -> None:
        for n in range(1, last + 1):
            other.online.write_rows(fsv, [{"user_id": 1, "event_timestamp": T0 + timedelta(milliseconds=n), "clicks": n}])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set():
        _read(store, 1)
        reads += 1
        time.sleep(0.0002)  # hand the GIL to the writer (else each of its writes waits out switch intervals)
    thread.join()
    assert tracker.sync(1.0)
    assert reads > 10 and _read(store, 1)[0] == {1: last} and _read(store, 1)[0] == {1: last}
    store.close(), other.close()


def test_a_killed_tracking_connection_flushes_and_bypasses_until_back(tmp_path, redis_url):
    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {1: 10}, T0)
    _read(store, 1)
    assert _read(store, 1)[1]["cache_hit"]
    flushes = metrics.cache_totals()["flushes"]
    reconnect = tracker._connect
    with socket.socket() as s:  # a loopback port nobody listens on: the tracker cannot reconnect
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    tracker._connect = lambda: redis.Connection(host="127.0.0.1", port=closed, socket_connect_timeout=0.2)
    old = tracker.state
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_id=old[1]) == 1
    _until(lambda: tracker.state is None and metrics.cache_totals()["flushes"] > flushes)  # state first, then the flush
    assert metrics.cache_totals()["flushes"] == flushes + 1
    time.sleep(0.5)  # the tracker's reconnects (every 0.2 s) keep failing meanwhile
    assert tracker.state is None

    # Its invalidation had nowhere to go: without the flush the cache would answer 10.
    _write(other, {1: 11}, T0 + timedelta(seconds=1))
    for _ in range(3):  # bypassed: every read goes to Redis, none is cached while tracking is down
        values, meta = _read(store, 1)
        assert values == {1: 11} and not meta["cache_hit"]

    tracker._connect = reconnect
    assert tracker.wait_established(5.0) and tracker.state[0] > old[0]
    assert _read(store, 1)[0] == {1: 11}
    values, meta = _read(store, 1)
    assert values == {1: 11} and meta["cache_hit"]
    _write(other, {1: 12}, T0 + timedelta(seconds=2))  # read connections now redirect to the new client
    assert tracker.sync(1.0) and _read(store, 1)[0] == {1: 12}
    admin.close(), store.close(), other.close()


def test_redis_down_fails_fast_never_answers_from_the_cache_and_recovers(tmp_path, own_redis):
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    store, tracker, _ = _tracking(tmp_path, url)
    _write(store, {1: 10}, datetime.now(timezone.utc))
    _read(store, 1)
    assert _read(store, 1)[1]["cache_hit"]

    own_redis.stop()
    _until(lambda: tracker.state is None)
    for _ in range(4):  # the breaker as without a cache: 503s, never a value that may be stale
        with pytest.raises(Unavailable, match="online store unavailable"):
            _read(store, 1)
    assert store.online.breaker.state == "open"

    own_redis.start()  # empty: no persistence
    assert tracker.wait_established(10.0)
    _until(lambda: store.online.breaker.state == "closed", 10.0)
    _write(store, {1: 30}, datetime.now(timezone.utc))
    assert _read(store, 1)[0] == {1: 30}
    assert _read(store, 1)[1]["cache_hit"]
    store.close()


def test_hit_rate_is_reported(tmp_path, redis_url):
    from fstore.api import create_app

    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {u: u for u in range(1, 5)}, T0)
    before = metrics.cache_totals()
    _read(store, 1, 2, 3, 4)  # 4 misses
    _read(store, 1, 2, 3, 4)  # 4 hits
    _write(other, {1: 100}, T0 + timedelta(seconds=1))
    assert tracker.sync(1.0)
    _read(store, 1, 2, 3, 4)  # 3 hits, 1 miss
    after = metrics.cache_totals()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (7, 5)

    app = create_app(store=store)
    client = app.test_client()
    stats = client.get("/monitoring/statistics?days=7").get_json()["online_cache"]
    assert stats["mode"] == "tracking" and stats["hits"] >= 7 and stats["invalidated_keys"] >= 1
    assert stats["hit_rate"] == pytest.approx(stats["hits"] / (stats["hits"] + stats["misses"]))
    text = client.get("/monitoring/metrics").get_data(as_text=True)
    assert "fstore_online_cache_hit_rate " in text and 'fstore_online_cache_keys_total{result="hit"}' in text
    assert 'fstore_online_cache_invalidations_total{kind="key"}' in text
    app.extensions["fstore_security"].usage.stop()
    store.close(), other.close()


def test_tracking_needs_one_redis(tmp_path):
    store = FeatureStore(Settings.from_env(store_env(tmp_path)).with_(online_cache="tracking"))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    for _ in range(2):  # every time: never a silent fall-back to another mode
        with pytest.raises(InvalidDefinition, match="ONLINE_CACHE=tracking needs one Redis") as info:
            store.get_online_features(features=["clicks"], entities={"user_id": [1]})
        assert info.value.field == "ONLINE_CACHE"
    store.close()


def test_a_forked_child_drops_the_inherited_cache_and_tracks_on_its_own(tmp_path, redis_url):
    import multiprocessing

    store, tracker, other = _tracking(tmp_path, redis_url)
    _write(store, {1: 10}, T0)
    _read(store, 1)
    assert _read(store, 1)[1]["cache_hit"]

    def child(queue) -> None:
        first = _read(store, 1)[1]["cache_hit"]  # the parent's entry is not the child's (its thread is not here)
        mine = serving.tracker(store)
        established = mine.wait_established(5.0)
        _read(store, 1)
        hit = _read(store, 1)[1]["cache_hit"]
        _write(other, {1: 12}, T0 + timedelta(seconds=1))
        queue.put((first, established, hit, mine.sync(1.0), _read(store, 1)[0]))

    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    process = fork.Process(target=child, args=(queue,))
    process.start()
    outcome = queue.get(timeout=30)
    process.join(10)
    assert outcome == (False, True, True, True, {1: 12})
    assert tracker.sync(1.0) and _read(store, 1)[0] == {1: 12}  # the parent was told too
    store.close(), other.close()


def test_a_redis_that_refuses_tracking_is_never_cached_from(tmp_path, own_redis):
    """An ACL that allows every command but CLIENT TRACKING: the tracker connects, but no read connection
    can be tracked, so nothing read is cached (a value cached untracked could stay stale forever)."""
    admin = redis.Redis(port=own_redis.port)
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all", "-client|tracking")
    url = f"redis://reader:pw@127.0.0.1:{own_redis.port}/0"
    store, tracker, other = _tracking(tmp_path, url)
    _write(store, {1: 10}, T0)
    for n in range(3):
        values, meta = _read(store, 1)
        assert values == {1: 10 + n} and not meta["cache_hit"]
        tracker.wait_established(5.0)
        _write(other, {1: 11 + n}, T0 + timedelta(seconds=n + 1))
    assert metrics.cache_totals()["flushes"] >= 1
    admin.close(), store.close(), other.close()


def test_a_hung_redis_is_noticed_by_an_unanswered_ping(tmp_path, own_redis):
    """Redis stops answering (CLIENT PAUSE) without closing anything: the tracker's PING goes unanswered, the
    cache is flushed and bypassed (reads fail fast, none answered from the cache), then tracking comes back."""
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    store, tracker, _ = _tracking(tmp_path, url)
    _write(store, {1: 10}, datetime.now(timezone.utc))
    _read(store, 1)
    assert _read(store, 1)[1]["cache_hit"]
    admin = redis.Redis(port=own_redis.port)
    old = tracker.state
    paused = time.monotonic()
    admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
    _until(lambda: tracker.state is None, 4.0)
    assert time.monotonic() - paused <= 2 * tracker.ping_seconds + 0.5
    with pytest.raises(Unavailable):
        _read(store, 1)
    admin.execute_command("CLIENT", "UNPAUSE")
    assert tracker.wait_established(5.0) and tracker.state[0] > old[0]
    _until(lambda: store.online.breaker.state == "closed", 10.0)
    values, meta = _read(store, 1)
    assert values == {1: 10} and not meta["cache_hit"]
    admin.close(), store.close()
