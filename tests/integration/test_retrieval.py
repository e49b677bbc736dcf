"""Historical retrieval end to end on each engine (Spark, DuckDB): materialized Delta offline store, exact windows, as_of, errors."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fstore.core.errors import InvalidDefinition, NotFound
from fstore.store import FeatureStore
from test_materialize_support import write_source

pytestmark = pytest.mark.spark

T0 = datetime(2024, 1, 1)
T_END = datetime(2024, 1, 8)
H = timedelta(hours=1)
TTL = timedelta(days=1)
WINDOW = timedelta(days=2)


def events() -> pd.DataFrame:
    """Transactions of users 1–3 (user 4 has none) at merchants 10/11; no two at one time for a user."""
    rows = [
        (1, 10, T0 + 1 * H, 10.0), (1, 11, T0 + 20 * H, 5.0), (1, 10, T0 + 49 * H, 7.0), (1, 10, T0 + 84 * H, None),
        (1, 11, T0 + 119 * H, 2.0),
        (2, 10, T0 + 5 * H, 100.0), (2, 10, T0 + 29 * H, 50.0), (2, 11, T0 + 77 * H, 25.0),
        (3, 11, T0 + 47 * H, 4.0), (3, 11, T0 + 50 * H, 6.0),
    ]
    return pd.DataFrame(rows, columns=["user_id", "merchant_id", "event_timestamp", "amount"])


def create_sets(store: FeatureStore, source: str) -> None:
    """The three sets over ``source``, which may not exist yet (its SQL is then checked when a run fails)."""
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_entity({"name": "merchant", "join_keys": ["merchant_id"], "value_type": "int"})
    src = {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"}
    store.create_feature_set({
        "name": "user_txn", "entities": ["user"], "ttl": "1d", "source": src,
        "features": [
            {"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
            {"name": "txn_count_2d", "data_type": "int", "window_size": "2d", "aggregation": "count"},
            {"name": "amount_sum_2d", "data_type": "float", "window_size": "2d", "aggregation": "sum",
             "transformation": "amount"},
            {"name": "avg_amount_2d", "data_type": "float", "transformation": "amount_sum_2d / txn_count_2d",
             "source_features": ["amount_sum_2d", "txn_count_2d"]},
        ],
    }, allow_missing_sources=True)
    store.create_feature_set({
        "name": "merchant_txn", "entities": ["merchant"], "source": src,
        "features": [{"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
                     {"name": "merchant_amount", "data_type": "float", "transformation": "amount"}],
    }, allow_missing_sources=True)
    store.create_feature_set({
        "name": "pair_txn", "entities": ["user", "merchant"], "source": src,
        "features": [{"name": "pair_amount", "data_type": "float", "transformation": "amount"}],
    }, allow_missing_sources=True)


def fill_offline(store: FeatureStore, name: str, start: datetime = T0, end: datetime = T_END) -> int | None:
    """Compute ``[start, end)`` of a set on Spark and commit it to the offline store (what a run's offline stage does).

    On Spark whatever the store's engine: for a DuckDB store only its retrieval is under test.
    """
    from pyspark.sql import SparkSession

    from fstore.engine.spark import compute
    from fstore.storage.offline import write_range

    spark = store.spark if store.settings.compute_engine == "spark" else SparkSession.getActiveSession()
    fsv = store.feature_set_version(name)
    return write_range(spark, store.settings, fsv, compute(spark, fsv, settings=store.settings, start=start, end=end), start, end)


@pytest.fixture()
def registered(settings, on_engine, tmp_path):
    """The three sets, defined only: enough for requests refused before any data is read (each engine)."""
    s = on_engine(settings)
    create_sets(s, write_source(tmp_path / "source", events()))
    yield s
    s.close()


@pytest.fixture()
def store(registered):
    """The three sets materialized; retrievals on each engine (the DuckDB store never touches Spark)."""
    for name in ("user_txn", "merchant_txn", "pair_txn"):
        fill_offline(registered, name)
    return registered


def labels() -> pd.DataFrame:
    """Entity rows between events, exactly at events, at the TTL edges, before any event, duplicated."""
    rows = [
        (1, 10, T0 + 1 * H, "at first event"),
        (1, 10, T0 + 1 * H - timedelta(microseconds=1), "just before"),
        (1, 11, T0 + 21 * H, "an hour after"),
        (1, 10, T0 + 44 * H, "TTL passed since 20h, window still holds both"),
        (1, 10, T0 + 20 * H + TTL, "exactly at TTL"),
        (1, 10, T0 + 20 * H + TTL + timedelta(microseconds=1), "1us past TTL"),
        (1, 10, T0 + 70 * H, "first event aged out of the 2d window"),
        (1, 10, T0 + 90 * H, "latest row has a NULL amount"),
        (2, 10, T0 + 60 * H, "window lost an event since the last one"),
        (3, 11, T0 + 48 * H, "between"),
        (4, 10, T0 + 50 * H, "no rows"),
        (1, 11, T0 + 21 * H, "an hour after"),  # duplicate
    ]
    return pd.DataFrame(rows, columns=["user_id", "merchant_id", "event_timestamp", "note"])


def oracle(frame: pd.DataFrame, entity_rows: pd.DataFrame) -> list[dict]:
    out = []
    for r in entity_rows.itertuples(index=False):
        mine = frame[frame.user_id == r.user_id]
        seen = mine[mine.event_timestamp <= r.event_timestamp]
        latest = seen.sort_values("event_timestamp").iloc[-1] if len(seen) else None
        visible = latest is not None and latest.event_timestamp >= r.event_timestamp - TTL
        window = mine[(mine.event_timestamp > r.event_timestamp - WINDOW) & (mine.event_timestamp <= r.event_timestamp)]
        total = window.amount.sum(min_count=1)
        count = len(window)
        out.append({
            "amount_x2": None if not visible or pd.isna(latest.amount) else float(latest.amount * 2),
            "txn_count_2d": count,
            "amount_sum_2d": None if pd.isna(total) else float(total),
            "avg_amount_2d": None if pd.isna(total) or count == 0 else float(total / count),
        })
    return out


def _clean(value):
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    return value


def records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    return [{c: _clean(v) for c, v in zip(columns, row)} for row in df[columns].astype(object).itertuples(index=False)]


def test_point_in_time_values_and_exact_windows(store, spark):
    entity_rows = labels()
    result = store.get_historical_features(
        entity_df=entity_rows, features=["amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d"],
        feature_sets=["user_txn"])
    df = result.to_df()
    assert list(df.columns) == ["user_id", "merchant_id", "event_timestamp", "note",
                                "amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d"]
    assert list(df.note) == list(entity_rows.note)  # every row, in order, duplicates kept
    features = ["amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d"]
    assert records(df, features) == oracle(events(), entity_rows)
    spark_rows = result.to_spark(spark).collect()  # the session given: a DuckDB store has none
    assert [r["note"] for r in spark_rows] == list(entity_rows.note)


def test_spark_entity_frame_and_offsets_normalized_to_utc(store, spark):
    plus5 = timezone(timedelta(hours=5))
    pandas_rows = pd.DataFrame({"user_id": [1, 2], "ts": [
        (T0 + 21 * H).replace(tzinfo=timezone.utc).astimezone(plus5).isoformat(), (T0 + 30 * H).isoformat() + "Z"]})
    by_pandas = store.get_historical_features(entity_df=pandas_rows, features=["user_txn:amount_x2"]).to_df()
    assert list(by_pandas.columns) == ["user_id", "ts", "user_txn__amount_x2"]
    assert list(by_pandas.user_txn__amount_x2) == [10.0, 100.0]
    assert list(by_pandas.ts) == [pd.Timestamp(T0 + 21 * H), pd.Timestamp(T0 + 30 * H)]
    spark_rows = spark.createDataFrame([(2, T0 + 30 * H, "b"), (1, T0 + 21 * H, "a")], "user_id long, ts timestamp, tag string")
    by_spark = store.get_historical_features(entity_df=spark_rows, features=["user_txn:amount_x2"]).to_df()
    assert list(by_spark.tag) == ["b", "a"] and list(by_spark.user_txn__amount_x2) == [100.0, 10.0]
    # Extra columns pass through whatever their names and types (the join's SQL casts typed NULLs to them).
    odd = spark.createDataFrame([(1, T0 + 21 * H, "x", [1.5])],
                                "user_id long, ts timestamp, `a b.c:d` string, `we``ird` array<double>")
    by_odd = store.get_historical_features(entity_df=odd, features=["user_txn:amount_x2"]).to_df()
    assert list(by_odd.columns) == ["user_id", "ts", "a b.c:d", "we`ird", "user_txn__amount_x2"]
    assert by_odd.iloc[0]["a b.c:d"] == "x" and list(by_odd.iloc[0]["we`ird"]) == [1.5]
    assert by_odd.user_txn__amount_x2.tolist() == [10.0]
    as_text = spark.createDataFrame([("2024-01-02T02:00:00+05:00", 1), ("2024-01-01T21:00:00", 1)], "ts string, user_id long")
    by_text = store.get_historical_features(entity_df=as_text, features=["user_txn:amount_x2"]).to_df()
    assert list(by_text.user_txn__amount_x2) == [10.0, 10.0]  # 21:00 UTC both, written two ways
    assert list(by_text.ts) == [pd.Timestamp(T0 + 21 * H)] * 2
    bad_text = spark.createDataFrame([("yesterday", 1)], "ts string, user_id long")
    with pytest.raises(InvalidDefinition) as info:
        store.get_historical_features(entity_df=bad_text, features=["user_txn:amount_x2"])
    assert info.value.field == "timestamp_column" and "unreadable" in info.value.message


def test_sets_keyed_by_different_entities_and_compound_keys(store):
    entity_rows = pd.DataFrame({"user_id": [1, 2, 1], "merchant_id": [10, 10, 11],
                                "event_timestamp": [T0 + 50 * H, T0 + 30 * H, T0 + 21 * H]})
    df = store.get_historical_features(
        entity_df=entity_rows,
        features=["user_txn:amount_x2", "merchant_txn:amount_x2", "merchant_amount", "pair_amount"]).to_df()
    assert list(df.columns)[3:] == ["user_txn__amount_x2", "merchant_txn__amount_x2", "merchant_amount", "pair_amount"]
    # user 1 at 50h: their 49h row (7.0); merchant 10 at 50h: 49h row; pair (1, 10) at 50h: 49h row
    assert records(df, list(df.columns)[3:]) == [
        {"user_txn__amount_x2": 14.0, "merchant_txn__amount_x2": 14.0, "merchant_amount": 7.0, "pair_amount": 7.0},
        {"user_txn__amount_x2": 100.0, "merchant_txn__amount_x2": 100.0, "merchant_amount": 50.0, "pair_amount": 50.0},
        {"user_txn__amount_x2": 10.0, "merchant_txn__amount_x2": 10.0, "merchant_amount": 5.0, "pair_amount": 5.0},
    ]


def test_as_of_reads_the_offline_store_as_it_was(store, tmp_path):
    from fstore.storage.offline import current_version

    before = current_version(store.settings, "user_txn")
    time.sleep(0.05)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    changed = events()
    changed["amount"] = changed["amount"] * 10
    write_source(tmp_path / "source", changed)
    fill_offline(store, "user_txn")
    entity_rows = pd.DataFrame({"user_id": [1], "event_timestamp": [T0 + 21 * H]})
    now = store.get_historical_features(entity_df=entity_rows, features=["user_txn:amount_x2"]).to_df()
    then = store.get_historical_features(entity_df=entity_rows, features=["user_txn:amount_x2"], as_of=before).to_df()
    at_time = store.get_historical_features(entity_df=entity_rows, features=["user_txn:amount_x2"],
                                            as_of=between.isoformat()).to_df()
    assert list(now.user_txn__amount_x2) == [100.0] and list(then.user_txn__amount_x2) == [10.0]
    assert list(at_time.user_txn__amount_x2) == [10.0]
    with pytest.raises(InvalidDefinition) as info:
        store.get_historical_features(entity_df=entity_rows.assign(merchant_id=10),
                                      features=["user_txn:amount_x2", "merchant_amount"], as_of=before)
    assert info.value.field == "as_of"


@pytest.mark.parametrize(("frame", "kwargs", "error", "field", "words"), [
    (pd.DataFrame({"user_id": [1], "when": [T0]}), {}, InvalidDefinition, "timestamp_column", "timestamp column"),
    (pd.DataFrame({"user_id": [1], "when": [T0]}), {"timestamp_column": "at"}, InvalidDefinition, "timestamp_column", "'at'"),
    (pd.DataFrame({"customer": [1], "ts": [T0]}), {}, InvalidDefinition, "user_id", "user_txn"),
    (pd.DataFrame({"user_id": [1], "ts": ["yesterday"]}), {}, InvalidDefinition, "timestamp_column", "not a timestamp"),
    (pd.DataFrame({"user_id": [1], "ts": [T0], "amount_x2": [1.0]}), {}, InvalidDefinition, "features", "already has"),
    ([{"user_id": 1}], {}, InvalidDefinition, "entity_df", "pandas or Spark"),
])
def test_bad_requests_name_the_problem(registered, frame, kwargs, error, field, words):
    with pytest.raises(error) as info:
        registered.get_historical_features(entity_df=frame, features=["amount_x2"], feature_sets=["user_txn"], **kwargs)
    assert info.value.field == field and words in info.value.message


def test_over_the_row_limit_is_refused(registered, spark):
    from fstore.core.errors import TooLarge

    limited = FeatureStore(registered.settings.with_(max_historical_rows=2)).use_spark(registered.spark)
    frame = pd.DataFrame({"user_id": [1, 2, 3], "ts": [T0, T0, T0]})
    for entity_df in (frame, spark.createDataFrame(frame)):
        with pytest.raises(TooLarge):
            limited.get_historical_features(entity_df=entity_df, features=["user_txn:amount_x2"])
    limited.close()


def test_unknown_feature_is_not_found(registered):
    with pytest.raises(NotFound):
        registered.get_historical_features(entity_df=pd.DataFrame({"user_id": [1], "ts": [T0]}), features=["nope"])
