"""Bulk load from a Spark DataFrame into the real Redis and the embedded store (shared Spark session)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from fstore.storage.online import load_dataframe, open_online_store
from fstore.storage.online.base import NULL, Codec, decoder, to_micros
from fstore.core.settings import Settings

T0 = datetime(2026, 1, 1)
CODEC = Codec(name="txn_stats", version=1, key_columns=("user_id", "merchant_id"), key_types=("int", "string"),
              features=(("amount", "float"), ("n", "int"), ("flag", "bool"), ("label", "string"),
                        ("seen", "timestamp"), ("xs", "list<float>"), ("ts_list", "list<timestamp>")),
              ttl_seconds=None)
SCHEMA = ("user_id bigint, merchant_id string, event_timestamp timestamp, created_timestamp timestamp, "
          "amount double, n int, flag boolean, label string, seen timestamp, xs array<double>, ts_list array<timestamp>")


@pytest.fixture(params=["redis", "redis-cluster", "embedded"])
def load_settings(request, tmp_path) -> Settings:
    if request.param != "embedded":
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        return Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": url})
    return Settings.from_env({"STORAGE_PATH": str(tmp_path / "store")})


def read_back(settings, codec, keys):
    store = open_online_store(settings)
    try:
        out = []
        for result in store.read(codec, [codec.key_of(dict(zip(codec.key_columns, k))) for k in keys]):
            if result is None:
                out.append(None)
                continue
            ts, raw = result
            out.append((ts, {name: None if v == NULL else decoder(dt)(v) for (name, dt), v in zip(codec.features, raw)}))
        return out
    finally:
        store.close()


def rows_df(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def test_latest_row_per_key_is_loaded_from_the_executors(spark, load_settings):
    day = timedelta(days=1)
    rows = [
        # key (1, "m:1"): three events, the newest wins
        (1, "m:1", T0, T0, 1.0, 1, True, "old", T0, [1.0], [T0]),
        (1, "m:1", T0 + 2 * day, T0 + 2 * day, 3.5, 3, False, "new", T0 + day, [3.0, None], [T0 + day, None]),
        (1, "m:1", T0 + day, T0 + day, 2.0, 2, True, "mid", T0, [], []),
        # key (2, "a:b|c"): a tie on event time is broken by the created timestamp
        (2, "a:b|c", T0, T0 + timedelta(hours=1), 9.0, 9, True, "later-created", None, None, None),
        (2, "a:b|c", T0, T0, 8.0, 8, False, "earlier-created", None, None, None),
        # key (3, ""): nulls everywhere but the keys
        (3, "", T0, None, None, None, None, None, None, None, None),
        # rows without a key or event time cannot be served and are skipped
        (None, "m:1", T0, T0, 0.0, 0, False, "no key", None, None, None),
        (4, "m:1", None, T0, 0.0, 0, False, "no time", None, None, None),
    ]
    df = rows_df(spark, rows).repartition(3)
    written = load_dataframe(df, CODEC, load_settings)
    assert written == 3
    got = read_back(load_settings, CODEC, [(1, "m:1"), (2, "a:b|c"), (3, ""), (4, "m:1"), ("1", "m:1")])
    assert got[0] == (to_micros(T0 + 2 * day), {
        "amount": 3.5, "n": 3, "flag": False, "label": "new", "seen": "2026-01-02T00:00:00Z", "xs": [3.0, None],
        "ts_list": ["2026-01-02T00:00:00Z", None]})
    assert got[1][1]["label"] == "later-created" and got[1][1]["n"] == 9
    assert got[2] == (to_micros(T0), {name: None for name in CODEC.feature_names})
    assert got[3] is None
    assert got[4] == got[0]  # Spark's key text and the request's key text agree


def test_an_older_load_never_moves_serving_backwards(spark, load_settings):
    new = rows_df(spark, [(1, "m", T0 + timedelta(days=5), None, 5.0, 5, True, "new", None, None, None),
                          (2, "m", T0, None, 1.0, 1, True, "old", None, None, None)])
    assert load_dataframe(new, CODEC, load_settings) == 2
    backfill = rows_df(spark, [(1, "m", T0 + timedelta(days=1), None, 1.0, 1, True, "backfill", None, None, None),
                               (2, "m", T0 + timedelta(days=1), None, 2.0, 2, True, "backfill", None, None, None)])
    assert load_dataframe(backfill, CODEC, load_settings) == 1  # only key 2 moves (forwards)
    got = read_back(load_settings, CODEC, [(1, "m"), (2, "m")])
    assert got[0][1]["label"] == "new" and got[1][1]["label"] == "backfill"
    store = open_online_store(load_settings)
    assert store.newest_timestamp("txn_stats") == T0 + timedelta(days=5)
    store.close()


def test_rows_older_than_the_ttl_are_skipped(spark, load_settings):
    codec = Codec(name="recent", version=1, key_columns=("user_id",), key_types=("int",), features=(("n", "int"),),
                  ttl_seconds=3600)
    # Times near the real clock: the stores also expire a row at event time + TTL by it (Redis PEXPIREAT).
    t0 = datetime.utcnow().replace(microsecond=0) - timedelta(hours=2, minutes=30)
    df = spark.createDataFrame([(1, t0, 1), (2, t0 + timedelta(hours=2), 2)], "user_id int, event_timestamp timestamp, n int")
    now = to_micros(t0 + timedelta(hours=2, minutes=30))
    assert load_dataframe(df, codec, load_settings, now_micros=now) == 1
    got = read_back(load_settings, codec, [(1,), (2,)])
    assert got[0] is None and got[1][1] == {"n": 2}


def test_many_keys_in_many_batches(spark, load_settings):
    codec = Codec(name="many", version=1, key_columns=("user_id",), key_types=("string",), features=(("x", "float"),))
    df = spark.range(0, 3000).selectExpr("CAST(id AS STRING) AS user_id", "TIMESTAMP'2026-01-01' AS event_timestamp",
                                         "id / 2.0 AS x")
    assert load_dataframe(df, codec, load_settings) == 3000
    got = read_back(load_settings, codec, [("0",), ("1777",), ("2999",)])
    assert [g[1]["x"] for g in got] == [0.0, 888.5, 1499.5]


def test_a_dataframe_without_the_feature_columns_is_refused(spark, load_settings):
    from fstore.core.errors import InvalidDefinition

    df = spark.createDataFrame([(1, T0)], "user_id int, event_timestamp timestamp")
    with pytest.raises(InvalidDefinition, match="lacks column"):
        load_dataframe(df, CODEC, load_settings)


def test_an_unreachable_redis_fails_the_load_with_unavailable(spark, tmp_path):
    import socket

    from fstore.core.errors import Unavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    df = rows_df(spark, [(1, "m", T0, None, 1.0, 1, True, "x", None, None, None)])
    with pytest.raises(Unavailable, match="online load of feature set txn_stats failed: online store unavailable"):
        load_dataframe(df, CODEC, settings)
