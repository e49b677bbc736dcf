"""Shared fixtures and helpers for the materialization tests (no tests of its own).

A tiny transactions source (three users over five days) and a feature set with
a row feature, two 2-day windows and a composite, plus a pandas oracle that
computes the same features independently.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from fstore.core.settings import Settings
from fstore.store import FeatureStore

DAY = timedelta(days=1)
T0 = datetime(2024, 1, 1)
T_END = datetime(2024, 1, 6)
WINDOW = timedelta(days=2)
FEATURES = ("amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d")


def events() -> pd.DataFrame:
    """Events at irregular times; some fall exactly one window apart (edge), some share a timestamp (tie)."""
    rows = [
        (1, T0 + timedelta(hours=1), 10.0), (1, T0 + timedelta(hours=20), 5.0), (1, T0 + timedelta(days=2, hours=1), 7.0),
        (1, T0 + timedelta(days=2, hours=1), 3.0), (1, T0 + timedelta(days=3, hours=12), 1.0),
        (1, T0 + timedelta(days=4, hours=23), 2.0),
        (2, T0 + timedelta(hours=5), 100.0), (2, T0 + timedelta(days=1, hours=5), 50.0),
        (2, T0 + timedelta(days=3, hours=5), 25.0),
        (3, T0 + timedelta(days=1, hours=23, minutes=59), 4.0), (3, T0 + timedelta(days=2, hours=2), 6.0),
    ]
    return pd.DataFrame(rows, columns=["user_id", "event_timestamp", "amount"])


def write_source(path: Path, frame: pd.DataFrame) -> str:
    """The source as one Parquet file in a folder (timestamps in microseconds, as Spark writes them)."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.parquet"):
        old.unlink()
    frame = frame.copy()
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us]")
    frame.to_parquet(path / "part-0.parquet", index=False)
    return str(path)


def feature_set_body(source: str, *, name: str = "user_txn", schedule: str | None = None,
                     amount_rules: dict | None = None, online: bool = True) -> dict:
    return {
        "name": name,
        "entities": ["user"],
        "description": "transactions per user",
        "online_enabled": online,
        "materialization_schedule": schedule,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [
            {"name": "amount_x2", "data_type": "float", "transformation": "amount * 2",
             **({"validation_rules": amount_rules} if amount_rules else {})},
            {"name": "txn_count_2d", "data_type": "int", "window_size": "2d", "aggregation": "count"},
            {"name": "amount_sum_2d", "data_type": "float", "window_size": "2d", "aggregation": "sum",
             "transformation": "amount"},
            {"name": "avg_amount_2d", "data_type": "float", "transformation": "amount_sum_2d / txn_count_2d",
             "source_features": ["amount_sum_2d", "txn_count_2d"]},
        ],
    }


def create_set(store: FeatureStore, source: str, **kwargs) -> dict:
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    except Exception:  # noqa: BLE001 - already there (a second set in one test)
        pass
    return store.create_feature_set(feature_set_body(source, **kwargs))


def oracle(frame: pd.DataFrame, start: datetime = T0, end: datetime = T_END) -> list[tuple]:
    """The expected offline rows in ``[start, end)``: windows over ``(t - 2d, t]`` per user."""
    out = []
    for row in frame.itertuples(index=False):
        if not start <= row.event_timestamp < end:
            continue
        mine = frame[(frame.user_id == row.user_id) & (frame.event_timestamp > row.event_timestamp - WINDOW)
                     & (frame.event_timestamp <= row.event_timestamp)]
        count, total = len(mine), float(mine.amount.sum())
        out.append((row.user_id, row.event_timestamp, row.amount * 2, count, total, total / count))
    return sorted(out)


def offline_rows(store: FeatureStore, name: str = "user_txn", *, version: int | None = None) -> list[tuple]:
    """The Delta table's rows read with the ``deltalake`` reader (any Delta reader must see them)."""
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    table = DeltaTable(table_uri(store.settings, name), version=version).to_pandas()
    out = []
    for r in table.itertuples(index=False):
        ts = pd.Timestamp(r.event_timestamp).tz_localize(None).to_pydatetime() if pd.Timestamp(r.event_timestamp).tzinfo \
            else pd.Timestamp(r.event_timestamp).to_pydatetime()
        out.append((int(r.user_id), ts, float(r.amount_x2), int(r.txn_count_2d), float(r.amount_sum_2d),
                    float(r.avg_amount_2d)))
    return sorted(out)


def delta_version(store: FeatureStore, name: str = "user_txn") -> int:
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    return DeltaTable(table_uri(store.settings, name)).version()


def online_values(store: FeatureStore, users=(1, 2, 3), name: str = "user_txn") -> dict:
    """``user -> (event time micros, {feature: value})`` from the online store (None when absent)."""
    from fstore.storage.online.base import NULL, Codec

    codec = Codec.from_version(store.feature_set_version(name))
    keys = [codec.key_of({"user_id": u}) for u in users]
    out = {}
    for user, result in zip(users, store.online.read(codec, keys)):
        if result is None:
            out[user] = None
            continue
        micros, raws = result
        out[user] = (micros, {f: (None if raw is None or raw == NULL else codec.decoders[f](raw))
                              for f, raw in zip(codec.feature_names, raws)})
    return out


def expected_online(frame: pd.DataFrame, end: datetime = T_END) -> dict:
    """The latest oracle row per user before ``end``, as ``online_values`` shows it."""
    latest = {}
    for row in oracle(frame, T0, end):
        latest[row[0]] = row  # oracle rows are sorted by (user, time): the last one wins
    out = {}
    for user, (_, ts, x2, count, total, avg) in latest.items():
        micros = int(pd.Timestamp(ts).value // 1000)
        out[user] = (micros, {"amount_x2": x2, "txn_count_2d": count, "amount_sum_2d": total, "avg_amount_2d": avg})
    return out


def make_store(settings: Settings, spark) -> FeatureStore:
    return FeatureStore(settings).use_spark(spark)


@pytest.fixture(params=["spark", "duckdb"])
def store(request, settings, spark):
    """A store computing on Spark, then the same test on the DuckDB engine (COMPUTE_ENGINE=duckdb)."""
    s = make_store(settings.with_(compute_engine=request.param), spark)
    yield s
    s.close()


@pytest.fixture(params=["embedded-spark", "redis-spark", "embedded-duckdb", "redis-duckdb"])
def any_online_store(request, settings, spark):
    """The same test on the embedded online store and on the real Redis, computed by each engine."""
    online, engine = request.param.split("-")
    if online == "redis":
        settings = settings.with_(redis_url=request.getfixturevalue("redis_url"))
    s = make_store(settings.with_(compute_engine=engine), spark)
    yield s
    s.close()


@pytest.fixture()
def source(tmp_path) -> str:
    return write_source(tmp_path / "source" / "transactions", events())
