"""The online store contract on the real Redis, a real 3-master Redis Cluster and the embedded SQLite store (same tests)."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.storage.online import open_online_store
from fstore.storage.online.base import NULL, Codec, decoder, to_micros
from fstore.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, 12, 0, 0)
CODEC = Codec(name="user_stats", version=1, key_columns=("user_id",), key_types=("int",),
              features=(("clicks", "int"), ("score", "float"), ("name", "string"), ("tags", "list<string>")),
              ttl_seconds=None)


@pytest.fixture(params=["redis", "redis-cluster", "embedded"])
def store_settings(request, tmp_path) -> Settings:
    if request.param != "embedded":
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        return Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": url})
    return Settings.from_env({"STORAGE_PATH": str(tmp_path / "store")})


@pytest.fixture()
def online(store_settings):
    store = open_online_store(store_settings)
    yield store
    store.close()


def row(user, ts, clicks, score=0.5, name="n", tags=()):
    return {"user_id": user, "event_timestamp": ts, "clicks": clicks, "score": score, "name": name, "tags": list(tags)}


def values(online, users, codec=CODEC):
    keys = [codec.key_of({"user_id": u}) for u in users]
    out = []
    for result in online.read(codec, keys):
        if result is None:
            out.append(None)
            continue
        ts, raw = result
        decoded = {}
        for (name, data_type), value in zip(codec.features, raw):
            decoded[name] = "<missing>" if value is None else None if value == NULL else decoder(data_type)(value)
        out.append((ts, decoded))
    return out


def test_write_then_read_typed_values_nulls_and_missing_keys(online):
    assert online.write_rows(CODEC, [row(1, T0, 3, 1.25, "a:b|c", ["x", ""]),
                                     row("2", T0, None, None, "", [])]) == 2
    got = values(online, [1, 2, 3, "1"])
    assert got[0] == (to_micros(T0), {"clicks": 3, "score": 1.25, "name": "a:b|c", "tags": ["x", ""]})
    assert got[1] == (to_micros(T0), {"clicks": None, "score": None, "name": "", "tags": []})
    assert got[2] is None
    assert got[3] == got[0]  # the key 1 sent as text finds the same row


def test_a_field_never_written_is_missing_not_null(online):
    online.write_rows(CODEC, [row(1, T0, 3)])
    wider = Codec(name="user_stats", version=2, key_columns=("user_id",), key_types=("int",),
                  features=CODEC.features + (("added_later", "float"),))
    (_, decoded), = values(online, [1], wider)
    assert decoded["added_later"] == "<missing>" and decoded["clicks"] == 3


def test_an_older_write_never_moves_a_key_backwards(online):
    online.write_rows(CODEC, [row(1, T0, 10), row(2, T0, 20)])
    # a backfill of older rows: dropped, for each key separately
    assert online.write_rows(CODEC, [row(1, T0 - timedelta(days=1), 1), row(2, T0 + timedelta(seconds=1), 21)]) == 1
    got = values(online, [1, 2])
    assert got[0][1]["clicks"] == 10 and got[1][1]["clicks"] == 21
    # the same event time again (a re-run) overwrites: newer-or-equal wins
    assert online.write_rows(CODEC, [row(1, T0, 11)]) == 1
    assert values(online, [1])[0][1]["clicks"] == 11
    assert online.newest_timestamp("user_stats") == T0 + timedelta(seconds=1)


def test_bad_rows_are_refused_and_nothing_is_written(online):
    with pytest.raises(InvalidDefinition, match="clicks"):
        online.write_rows(CODEC, [row(1, T0, 1), row(2, T0, "many")])
    assert values(online, [1, 2]) == [None, None]


_WRITER = textwrap.dedent("""
    import random, sys
    from datetime import datetime, timedelta
    from fstore.storage.online import open_online_store
    from fstore.storage.online.base import Codec
    from fstore.core.settings import Settings
    seed, url, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    codec = Codec(name="user_stats", version=1, key_columns=("user_id",), key_types=("int",),
                  features=(("clicks", "int"), ("score", "float"), ("name", "string"), ("tags", "list<string>")))
    store = open_online_store(Settings.from_env({"STORAGE_PATH": path, "REDIS_URL": url}))
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1)
    for batch in range(20):
        rows = []
        for _ in range(10):
            minute = rng.randrange(1000)
            # the value is derived from the event time, so the winner is checkable
            rows.append({"user_id": rng.randrange(8), "event_timestamp": t0 + timedelta(minutes=minute),
                         "clicks": minute, "score": minute / 2, "name": str(minute), "tags": [str(seed)]})
        store.write_rows(codec, rows)
    store.close()
""")


def test_concurrent_out_of_order_writers_from_several_processes(online, store_settings):
    """Four processes write random event times for the same keys at once; each key ends at its newest."""
    env = {"PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(seed), store_settings.redis_url, store_settings.storage_path],
                              env=env, stderr=subprocess.PIPE) for seed in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    expected: dict[int, int] = {}
    for seed in range(4):
        rng = random.Random(seed)
        for _ in range(200):
            minute = rng.randrange(1000)
            user = rng.randrange(8)
            expected[user] = max(expected.get(user, -1), minute)
    got = values(online, sorted(expected))
    for user, result in zip(sorted(expected), got):
        ts, decoded = result
        assert decoded["clicks"] == expected[user]
        assert ts == to_micros(datetime(2026, 1, 1) + timedelta(minutes=expected[user]))
        assert decoded["name"] == str(expected[user]) and decoded["score"] == expected[user] / 2


def test_delete_feature_set_and_ping(online):
    online.ping()
    other = Codec(name="user_stats_2", version=1, key_columns=("user_id",), key_types=("int",), features=(("clicks", "int"),))
    online.write_rows(CODEC, [row(u, T0, u) for u in range(5)])
    online.write_rows(other, [{"user_id": 1, "event_timestamp": T0, "clicks": 9}])
    assert online.delete_feature_set("user_stats") == 5
    assert values(online, [0, 1]) == [None, None]
    assert online.newest_timestamp("user_stats") is None
    assert values(online, [1], other)[0][1]["clicks"] == 9  # a set whose name extends the deleted one survives


def test_many_keys_and_sets_in_one_read(online):
    other = Codec(name="merchant", version=1, key_columns=("merchant_id",), key_types=("string",), features=(("risk", "float"),))
    online.write_rows(CODEC, [row(u, T0, u) for u in range(1200)])
    online.write_rows(other, [{"merchant_id": "m:1", "event_timestamp": T0, "risk": 0.25}])
    first, second = online.read_many([
        ("user_stats", [CODEC.key_of({"user_id": u}) for u in (1199, 5, 5000)], ("clicks",)),
        ("merchant", [other.key_of({"merchant_id": "m:1"})], ("risk",)),
    ])
    assert [r and int(r[1][0]) for r in first] == [1199, 5, None]
    assert float(second[0][1][0]) == 0.25


def test_redis_read_of_many_keys_and_sets_is_one_round_trip(redis_url, tmp_path, monkeypatch):
    """Count what goes on the wire: one packed command per read, whatever the number of keys and sets."""
    import redis

    store = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url}))
    store.write_rows(CODEC, [row(u, T0, u) for u in range(300)])
    store.read(CODEC, [CODEC.key_of({"user_id": 1})])  # warm: connected
    sent = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(command)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    other = Codec(name="other", version=1, key_columns=("user_id",), key_types=("int",), features=(("clicks", "int"),))
    result = store.read_many([("user_stats", [CODEC.key_of({"user_id": u}) for u in range(300)], ("clicks", "score")),
                              ("other", [other.key_of({"user_id": u}) for u in range(100)], ("clicks",))])
    assert len(sent) == 1
    assert [int(r[1][0]) for r in result[0]] == list(range(300)) and result[1] == [None] * 100
    store.close()


def test_redis_error_reply_in_a_read_fails_that_read_only(redis_url, tmp_path):
    """A key that is not a hash answers WRONGTYPE amid the other replies: the read fails naming it, and the
    next reads get their own replies."""
    import redis

    store = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url}))
    store.write_rows(CODEC, [row(u, T0, u) for u in range(3)])
    client = redis.Redis.from_url(redis_url)
    client.set(CODEC.key_of({"user_id": 1}), "not a hash")
    keys = [CODEC.key_of({"user_id": u}) for u in range(3)]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.read(CODEC, keys, ("clicks",))
    assert [int(r[1][0]) for r in store.read(CODEC, [keys[0], keys[2]], ("clicks",))] == [0, 2]
    client.delete(keys[1])
    client.close()
    store.close()


def test_an_exhausted_pool_is_unavailable_without_opening_the_breaker(redis_url):
    from fstore.core.errors import Unavailable
    from fstore.storage.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore(redis_url, pool_size=1, timeout=0.05)
    held = store._pool.get_connection()
    with pytest.raises(Unavailable, match="REDIS_POOL_SIZE"):
        store.ping()
    assert store.breaker.state == "closed"
    store._pool.release(held)
    store.ping()
    store.close()


def test_a_kept_read_connection_that_redis_closed_reconnects(redis_url, tmp_path):
    """Reads keep their connection out of the pool; when Redis drops it, the next read reconnects and
    answers, and the breaker stays closed."""
    import redis

    store = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url}))
    store.write_rows(CODEC, [row(u, T0, u) for u in range(3)])
    keys = [CODEC.key_of({"user_id": u}) for u in range(3)]
    assert [int(r[1][0]) for r in store.read(CODEC, keys, ("clicks",))] == [0, 1, 2]
    assert len(store._idle) == 1
    kept = store._idle[0]
    kept.send_command("CLIENT", "ID")
    client = redis.Redis.from_url(redis_url)
    assert client.client_kill_filter(_id=kept.read_response()) == 1
    for _ in range(3):
        assert [int(r[1][0]) for r in store.read(CODEC, keys, ("clicks",))] == [0, 1, 2]
    assert store.breaker.state == "closed"
    client.close()
    store.close()


def test_kept_read_connections_leave_half_the_pool_to_other_calls(redis_url):
    from fstore.storage.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore(redis_url, pool_size=2, timeout=0.05)
    first, second = store._borrow(), store._borrow()  # two reads at once take the whole pool
    store._keep(first)
    store._keep(second)
    assert store._idle == [first]  # one kept, one back in the pool
    store.ping()  # so other calls still get a connection
    assert store._borrow() is first and store._idle == []
    store._keep(first)
    store.close()
    assert store._idle == []


def test_write_at_sets_fields_only_beside_the_row_of_that_event_time(online):
    """The window record's write (``fstore.online.load_windows``): never onto a newer or an older row,
    never creating a key, and the row's values untouched."""
    online.write_rows(CODEC, [row(1, T0, 3), row(2, T0 + timedelta(seconds=5), 4)])
    at = to_micros(T0)
    keys = [CODEC.key_of({"user_id": u}) for u in (1, 2, 3)]
    written = online.write_at(CODEC.name, ["@w"], [(keys[0], at, [b"[1]"]), (keys[1], at, [b"[2]"]),
                                                   (keys[2], at, [b"[3]"])])
    assert written == 1
    got = online.read(CODEC, keys, ["clicks", "@w"])
    assert got[0] == (at, [b"3", b"[1]"])
    assert got[1] == (to_micros(T0 + timedelta(seconds=5)), [b"4", None])  # the hash holds a newer row
    assert got[2] is None  # no key is created
    online.write_rows(CODEC, [row(1, T0 + timedelta(seconds=9), 7)])  # a newer row: the old record stays, stale
    assert online.read(CODEC, keys[:1], ["clicks", "@w"])[0] == (to_micros(T0 + timedelta(seconds=9)), [b"7", b"[1]"])
    assert online.write_at(CODEC.name, ["@w"], [(keys[0], at, [b"[9]"])]) == 0


def test_swap_writes_only_where_the_row_and_record_read_are_still_stored(online):
    """The compare-and-set under pushed windows (``fstore.compute.stream_windows``): a write based on a read that
    another writer has overtaken is refused, key by key, in one call across keys (slots, on a cluster)."""
    keys = [CODEC.key_of({"user_id": u}) for u in range(1, 41)]
    ts = to_micros(T0)
    fields = ["clicks", "@w"]
    assert online.swap(CODEC.name, fields, "@w", [(k, None, None, ts, [b"1", b"w1"]) for k in keys]) == [True] * 40
    assert online.newest_timestamp(CODEC.name) == T0
    assert online.swap(CODEC.name, fields, "@w", [(keys[0], None, None, ts + 1, [b"2", b"w2"]),  # read "absent"
                                                  (keys[1], ts, b"w0", ts + 1, [b"2", b"w2"]),  # another record
                                                  (keys[2], ts - 1, b"w1", ts + 1, [b"2", b"w2"]),  # another row
                                                  (keys[3], ts, b"w1", ts + 1, [b"2", b"w2"])]) == [False] * 3 + [True]
    got = online.read(CODEC, keys[:4], fields)
    assert got[:3] == [(ts, [b"1", b"w1"])] * 3 and got[3] == (ts + 1, [b"2", b"w2"])
    assert online.swap(CODEC.name, ["@w"], "@w", [(keys[0], ts, b"w1", ts, [b"w3"])]) == [True]  # same row, new record
    assert online.read(CODEC, keys[:1], fields)[0] == (ts, [b"1", b"w3"])
    assert online.newest_timestamp(CODEC.name) == T0 + timedelta(microseconds=1)
