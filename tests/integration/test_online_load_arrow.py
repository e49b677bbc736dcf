"""Bulk load from an Arrow table (the DuckDB engine) stores the very bytes the Spark path stores."""
from __future__ import annotations

import json

import math
import random
import sqlite3
import struct
import time
from datetime import datetime, timedelta, timezone

import orjson
import pyarrow as pa
import pytest
import redis

from fstore.storage.online import load_dataframe, open_online_store
from fstore.storage.online.base import NULL, Codec, to_micros
from fstore.storage.online.load_arrow import load_arrow
from fstore.core.settings import Settings
from redis_cluster_support import everything
from test_online_load import read_back

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECOND, HOUR, DAY = timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)

# (column, Spark type, Arrow type)
COLUMNS = [
    ("user_id", "bigint", pa.int64()), ("merchant_id", "string", pa.string()),
    ("event_timestamp", "timestamp", pa.timestamp("us", "UTC")),
    ("created_timestamp", "timestamp", pa.timestamp("us", "UTC")),
    ("amount", "double", pa.float64()), ("n", "bigint", pa.int64()), ("flag", "boolean", pa.bool_()),
    ("label", "string", pa.large_string()), ("seen", "timestamp", pa.timestamp("us", "UTC")),
    ("xs", "array<double>", pa.list_(pa.float64())), ("ns", "array<bigint>", pa.list_(pa.int64())),
    ("bs", "array<boolean>", pa.list_(pa.bool_())), ("ss", "array<string>", pa.list_(pa.string())),
    ("ts_list", "array<timestamp>", pa.list_(pa.timestamp("us", "UTC"))),
]
CODEC = Codec(name="txn_stats", version=1, key_columns=("user_id", "merchant_id"), key_types=("int", "string"),
              features=(("amount", "float"), ("n", "int"), ("flag", "bool"), ("label", "string"),
                        ("seen", "timestamp"), ("xs", "list<float>"), ("ns", "list<int>"), ("bs", "list<bool>"),
                        ("ss", "list<string>"), ("ts_list", "list<timestamp>")))
NAN, INF = float("nan"), float("inf")
# Doubles that Java 17 (Spark here) and Java 19+ print alike (Java 17 spells e.g. 1e23 "9.999999999999999E22").
FLOATS = [1e-5, 1e20, -0.0, 0.0, 0.1, 1.0, 1 / 3, 123.456, -1234.5, 1e7, 12345678.0, 9999999.999999998, 0.001,
          0.0009999999999999998, 1e-4, 1.5e-7, 1e16, 1e22, 2.0 ** 53, 1.7976931348623157e308,
          2.2250738585072014e-308, 5e-324, -2.5e-300, NAN, INF, -INF, None]
INTS = [0, -1, 2 ** 63 - 1, -(2 ** 63), 12345678901234, None]
LABELS = ["", "plain", "é😀\u2028", 'quote " back \\ slash /', "ctl \x00\x01\x0b\x1f\x7f end", "a:b|c", '{"a":1}', None]
STAMPS = [T0, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), T0 + timedelta(microseconds=123456), None]
XS = [[], [1e-5, None, NAN, -0.0, INF, -INF, 0.1], None, [1e20, 12345678.0]]
NS = [[1, None, 2 ** 63 - 1], [], None]
BS = [[True, None, False], [], None]
SS = [["", "x", None, 'q"\\\x0b\n\x1f/é'], [], None]
TS_LISTS = [[T0, None, STAMPS[1]], [], None]
MERCHANTS = ["m", "", "a:b|c", "é😀", "x y"]


def all_types_rows():
    rows = []
    for i, amount in enumerate(FLOATS):
        pick = lambda values: values[i % len(values)]  # noqa: E731
        rows.append((i, pick(MERCHANTS), T0 + i * SECOND, T0 if i % 2 else None, amount, pick(INTS),
                     [True, False, None][i % 3], pick(LABELS), pick(STAMPS), pick(XS), pick(NS), pick(BS), pick(SS),
                     pick(TS_LISTS)))
        # an older row per key, which the newer one must beat
        rows.append((i, pick(MERCHANTS), T0 - DAY, T0, 0.5, 1, True, "old", T0, [0.5], [1], [True], ["old"], [T0]))
    rows.append((99, "m", T0, None, *([None] * 10)))  # nulls everywhere but the keys
    rows.append((None, "m", T0, None, 1.0, 1, True, "no key", None, None, None, None, None, None))
    rows.append((100, "m", None, None, 1.0, 1, True, "no time", None, None, None, None, None, None))
    return rows


def spark_df(spark, columns, rows):
    return spark.createDataFrame(rows, ", ".join(f"{name} {spark_type}" for name, spark_type, _ in columns))


def arrow_table(columns, rows):
    return pa.table({name: pa.array([row[i] for row in rows], arrow_type)
                     for i, (name, _, arrow_type) in enumerate(columns)})


@pytest.fixture(params=["redis", "redis-cluster", "embedded"])
def make_settings(request, tmp_path):
    """A function giving settings on an emptied store (one Redis DB, flushed; every master of the Redis
    Cluster, flushed; or a new embedded file)."""
    def make(name: str) -> Settings:
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            redis.Redis.from_url(url).flushdb()
            return Settings.from_env({"STORAGE_PATH": str(tmp_path / name), "REDIS_URL": url})
        if request.param == "redis-cluster":
            url = request.getfixturevalue("redis_cluster_url")
            request.getfixturevalue("redis_cluster_servers").flush()
            return Settings.from_env({"STORAGE_PATH": str(tmp_path / name), "REDIS_URL": url})
        return Settings.from_env({"STORAGE_PATH": str(tmp_path / name)})

    return make


def _untagged(key: bytes) -> bytes:
    if not key.startswith(b"fs:"):
        return key
    head, brace, rest = key.partition(b"{")
    assert brace and rest.endswith(b"}"), key
    return head + rest[:-1]


def stored(settings: Settings):
    """Everything in the store, as bytes: every Redis hash (``HGETALL``) and string, or every embedded row.

    Load markers (``fstore.storage.online.marker``) are compared without their ``loaded_at``, the time of each load.
    """
    if settings.redis_cluster:  # hash keys by their one-Redis names: fs:<set>:{<parts>} -> fs:<set>:<parts>
        out = {_untagged(k): v for k, v in everything(settings.redis_url).items()}
    elif settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            out = {k: client.hgetall(k) if client.type(k) == b"hash" else client.get(k) for k in client.keys("*")}
        finally:
            client.close()
    if settings.redis_url:
        for key in [k for k in out if k.startswith(b"fstore:loaded:")]:
            out[key] = {f: v for f, v in out[key].items() if f != b"loaded_at"}
        return out
    with sqlite3.connect(settings.embedded_online_path) as connection:
        markers = [(fs, complete, {k: v for k, v in json.loads(data).items() if k != "loaded_at"})
                   for fs, complete, data in connection.execute("SELECT fs, complete, data FROM online_loaded ORDER BY fs")]
        return (connection.execute("SELECT fs, k, ts, data FROM online_values ORDER BY fs, k").fetchall(),
                connection.execute("SELECT fs, newest FROM online_meta ORDER BY fs").fetchall(), markers)


def spark_then_arrow(spark, make_settings, codec, columns, rows, *, arrow_rows=None, **kwargs):
    """Load the same rows through Spark and through Arrow into empty stores: both (keys written, stored)."""
    settings = make_settings("spark")
    spark_written = load_dataframe(spark_df(spark, columns, rows).repartition(2), codec, settings, **kwargs)
    spark_result = (spark_written, stored(settings))
    settings = make_settings("arrow")
    arrow_written = load_arrow(arrow_table(columns, arrow_rows or rows), codec, settings, **kwargs)
    return spark_result, (arrow_written, stored(settings)), settings


def test_every_data_type_is_stored_byte_for_byte_as_spark_stores_it(spark, make_settings):
    spark_result, arrow_result, _ = spark_then_arrow(spark, make_settings, CODEC, COLUMNS, all_types_rows())
    assert spark_result[0] == len(FLOATS) + 1
    assert arrow_result == spark_result
    if isinstance(arrow_result[1], dict):  # spot checks of the Redis bytes
        hashes = arrow_result[1]
        assert hashes[b"fs:txn_stats:1:01:m"][b"amount"] == b"1.0E-5"
        assert hashes[b"fs:txn_stats:1:10:"][b"amount"] == b"1.0E20"
        assert hashes[b"fs:txn_stats:1:25:a:b|c"][b"amount"] == b"-0.0"
        assert hashes[b"fs:txn_stats:2:991:m"] == {b"@ts": b"%d" % to_micros(T0), **{n.encode(): NULL for n in CODEC.feature_names}}


def test_keys_of_every_value_type_match_spark(spark, make_settings):
    columns = [("at", "timestamp", pa.timestamp("us")), ("active", "boolean", pa.bool_()), ("score", "double", pa.float64()),
               ("code", "int", pa.int32()), ("event_timestamp", "timestamp", pa.timestamp("us")), ("n", "bigint", pa.int64())]
    codec = Codec(name="keyed", version=1, key_columns=("at", "active", "score", "code"),
                  key_types=("timestamp", "bool", "float", "string"), features=(("n", "int"),))
    rows = [(T0, True, 1.5, 7, T0, 1), (STAMPS[1], False, -0.0, -7, T0, 2), (STAMPS[1], False, 0.0, -7, T0 + SECOND, 3),
            (T0, True, 1e20, 0, T0, 4), (T0, False, 1e-5, 1, T0, 5), (T0, None, 1.0, 1, T0, 6),
            (T0, True, NAN, 3, T0, 7), (T0, True, NAN, 3, T0 + SECOND, 8)]
    naive = [tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in row) for row in rows]
    spark_result, arrow_result, settings = spark_then_arrow(spark, make_settings, codec, columns, rows, arrow_rows=naive)
    assert arrow_result == spark_result  # naive Arrow timestamps are UTC
    assert arrow_result[0] == 5  # -0.0 and 0.0 are one key, so are two NaNs; a null key is skipped
    assert read_back(settings, codec, [(STAMPS[1], "0", 0.0, "-7")])[0][1] == {"n": 3}


def test_ties_on_event_time_are_broken_as_spark_breaks_them(spark, make_settings):
    def row(key, created=None, amount=None, n=None, flag=None, label=None, xs=None):
        return (key, "m", T0, created, amount, n, flag, label, None, xs, None, None, None, None)

    rows = [
        row(1, created=T0 + HOUR, label="later-created"), row(1, created=T0, amount=9.0, label="earlier-created"),
        row(2, amount=5.0), row(2, amount=NAN), row(2, amount=INF),  # NaN is the largest double
        row(3, amount=None, n=9), row(3, amount=1.0, n=1),  # a null is smaller than any value
        row(4, xs=[None, 5.0]), row(4, xs=[1.0]), row(4, xs=[1.0, None]), row(4, xs=[1.0, 2.0]),  # lists element-wise
        row(5, xs=[1.0, None]), row(5, xs=[1.0]), row(5, xs=[None, 5.0]), row(5, xs=None),
        row(6, label="a"), row(6, label="B"), row(6, label="é"), row(6, label="z"),  # strings as UTF-8 bytes
        row(7, created=None, label="no created"), row(7, created=T0 - DAY, label="created"),
        row(8, flag=False, label="false"), row(8, flag=True, label="true"),
    ]
    spark_result, arrow_result, settings = spark_then_arrow(spark, make_settings, CODEC, COLUMNS, rows)
    assert arrow_result == spark_result
    got = [values for _, values in read_back(settings, CODEC, [(k, "m") for k in range(1, 9)])]
    assert got[0]["label"] == "later-created"
    assert math.isnan(got[1]["amount"])
    assert (got[2]["amount"], got[2]["n"]) == (1.0, 1)
    assert (got[3]["xs"], got[4]["xs"]) == ([1.0, 2.0], [1.0, None])
    assert [g["label"] for g in got[5:]] == ["é", "created", "true"]


def test_random_doubles_decode_to_the_same_bits_as_sparks(spark, make_settings):
    """Spelling may differ only where Java 17 prints a longer text for the same double (1e23: 9.999999999999999E22)."""
    rng = random.Random(7)
    doubles = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(1500)]
    doubles += [rng.random() * 10 ** rng.randint(-12, 25) * rng.choice((1, -1)) for _ in range(1500)]
    columns = [("k", "bigint", pa.int64()), ("event_timestamp", "timestamp", pa.timestamp("us", "UTC")),
               ("x", "double", pa.float64())]
    codec = Codec(name="doubles", version=1, key_columns=("k",), key_types=("int",), features=(("x", "float"),))
    rows = [(i, T0, x) for i, x in enumerate(doubles)]
    spark_result, arrow_result, _ = spark_then_arrow(spark, make_settings, codec, columns, rows)
    assert arrow_result[0] == spark_result[0] == len(doubles)
    spark_texts, arrow_texts = texts_by_key(spark_result[1]), texts_by_key(arrow_result[1])
    assert spark_texts.keys() == arrow_texts.keys()
    differ = 0
    for key, text in arrow_texts.items():
        bits = struct.pack("<d", doubles[int(key.rsplit(":", 1)[1])])
        if math.isfinite(float(text)):
            assert struct.pack("<d", orjson.loads(text)) == bits  # the serving fast path reads the same double
        assert struct.pack("<d", float(text)) == bits or math.isnan(float(text))
        if text != spark_texts[key]:
            differ += 1
            assert struct.pack("<d", float(spark_texts[key])) == bits and len(spark_texts[key]) > len(text)
    assert differ < len(doubles) // 10


def texts_by_key(contents) -> dict[str, str]:
    """The stored text of feature ``x`` per hash key, from Redis hashes or embedded rows."""
    if isinstance(contents, dict):
        return {k.decode(): h[b"x"].decode() for k, h in contents.items() if k.startswith(b"fs:")}
    return {k: orjson.loads(data)["x"] for _, k, _, data in contents[0]}


def plain_row(key, at, label, amount=1.0):
    """A ``COLUMNS`` row of key ``(key, "m")`` with only ``amount`` and ``label`` set."""
    return (key, "m", at, None, amount, None, None, label, None, None, None, None, None, None)


def test_an_older_load_never_moves_serving_backwards(make_settings):
    settings = make_settings("store")
    new = arrow_table(COLUMNS, [plain_row(1, T0 + 5 * DAY, "new"), plain_row(2, T0, "old")])
    assert load_arrow(new, CODEC, settings) == 2
    backfill = arrow_table(COLUMNS, [plain_row(1, T0 + DAY, "backfill"), plain_row(2, T0 + DAY, "backfill")])
    assert load_arrow(backfill, CODEC, settings) == 1  # only key 2 moves (forwards)
    got = read_back(settings, CODEC, [(1, "m"), (2, "m")])
    assert got[0][1]["label"] == "new" and got[1][1]["label"] == "backfill"
    store = open_online_store(settings)
    assert store.newest_timestamp("txn_stats") == (T0 + 5 * DAY).replace(tzinfo=None)
    store.close()


def test_rows_older_than_the_ttl_are_skipped(make_settings):
    settings = make_settings("store")
    codec = Codec(name="recent", version=1, key_columns=("user_id",), key_types=("int",), features=(("n", "int"),),
                  ttl_seconds=3600)
    # Times near the real clock: the stores also expire a row at event time + TTL by it (Redis PEXPIREAT).
    t0 = datetime.utcnow().replace(microsecond=0) - timedelta(hours=2, minutes=30)
    table = pa.table({"user_id": pa.array([1, 2], pa.int32()), "n": [1, 2],
                      "event_timestamp": pa.array([t0, t0 + 2 * HOUR], pa.timestamp("us", "UTC"))})
    now = to_micros(t0 + timedelta(hours=2, minutes=30))
    assert load_arrow(table, codec, settings, now_micros=now) == 1
    got = read_back(settings, codec, [(1,), (2,)])
    assert got[0] is None and got[1][1] == {"n": 2}


def test_many_keys_in_many_batches(make_settings):
    settings = make_settings("store")
    codec = Codec(name="many", version=1, key_columns=("user_id",), key_types=("string",), features=(("x", "float"),))
    count = 25_000  # more than one Arrow batch from DuckDB and many write calls
    table = pa.table({"user_id": [str(i) for i in range(count)], "event_timestamp": pa.array([T0] * count, pa.timestamp("us")),
                      "x": [i / 2 for i in range(count)]})
    assert load_arrow(table, codec, settings) == count
    got = read_back(settings, codec, [("0",), ("1777",), (str(count - 1),)])
    assert [g[1]["x"] for g in got] == [0.0, 888.5, (count - 1) / 2]
    assert load_arrow(table.slice(0, 0), codec, settings) == 0


def test_a_table_without_the_feature_columns_is_refused(make_settings):
    from fstore.core.errors import InvalidDefinition

    table = pa.table({"user_id": [1], "merchant_id": ["m"], "event_timestamp": pa.array([T0], pa.timestamp("us", "UTC"))})
    with pytest.raises(InvalidDefinition, match="lacks column.*amount") as info:
        load_arrow(table, CODEC, make_settings("store"))
    assert info.value.field == "amount"


def test_an_unreachable_redis_fails_the_load_with_unavailable(tmp_path):
    import socket

    from fstore.core.errors import Unavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    table = arrow_table(COLUMNS, [plain_row(1, T0, "x")])
    with pytest.raises(Unavailable, match="online load of feature set txn_stats failed: online store unavailable"):
        load_arrow(table, CODEC, settings)


def _prepare_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("fstore-online-prepare-")]


def test_a_prepared_load_closed_before_writing_stops_and_writes_nothing(make_settings, monkeypatch):
    from fstore.storage.online import load_arrow as module

    # Batches of 10 rows, at most 2 waiting: 50 keys fill the queue and the preparation must stop there.
    monkeypatch.setattr(module, "FETCH_ROWS", 10)
    monkeypatch.setattr(module, "READY_BATCHES", 2)
    settings = make_settings("store")
    load = module.PreparedLoad(arrow_table(COLUMNS, [plain_row(i, T0, "x") for i in range(50)]), CODEC, settings)
    deadline = time.monotonic() + 60
    while not load._ready.full() and time.monotonic() < deadline:  # the preparation waits on a full queue
        time.sleep(0.01)
    assert load._ready.full()
    load.close()
    assert not _prepare_threads()
    if settings.redis_cluster:
        assert everything(settings.redis_url) == {}
    elif settings.redis_url:
        assert redis.Redis.from_url(settings.redis_url).dbsize() == 0
    else:
        assert not settings.embedded_online_path.exists()


def test_a_prepared_load_writes_every_batch_after_waiting_ones(make_settings, monkeypatch):
    from fstore.storage.online import load_arrow as module

    monkeypatch.setattr(module, "FETCH_ROWS", 10)
    monkeypatch.setattr(module, "READY_BATCHES", 2)
    settings = make_settings("store")
    load = module.PreparedLoad(arrow_table(COLUMNS, [plain_row(i, T0, "x") for i in range(50)]), CODEC, settings)
    try:
        assert load.write() == 50
    finally:
        load.close()
    assert not _prepare_threads()


def test_a_failed_preparation_is_raised_by_write(make_settings):
    from fstore.core.errors import ComputeError
    from fstore.storage.online.load_arrow import PreparedLoad

    codec = Codec(name="counts", version=1, key_columns=("user_id",), key_types=("int",), features=(("n", "int"),))
    table = pa.table({"user_id": [1], "event_timestamp": pa.array([T0], pa.timestamp("us", "UTC")), "n": ["seven"]})
    load = PreparedLoad(table, codec, make_settings("store"))
    try:
        with pytest.raises(ComputeError, match="online load of feature set counts failed"):
            load.write()
    finally:
        load.close()
    assert not _prepare_threads()
