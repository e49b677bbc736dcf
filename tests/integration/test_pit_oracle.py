"""The point-in-time join against a brute-force pandas oracle, on real Spark and on DuckDB.

Random small data built to hit every edge: many rows per entity, ties on event
time with different created times, feature rows exactly at the label time and
after it, TTL edges (exactly at the TTL and 1 µs past it), entities without
rows, duplicate entity rows, compound keys and NULL feature values. Of feature rows
equal on event and created time, the last one read wins on both engines (the
oracle's stable sort keeps the input order; DuckDB is given it as ``position``).
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta

import pandas as pd
import pytest

from fstore.serving.retrieval.entities import ROW, TS, prepare_entities
from fstore.serving.retrieval.pit import as_of_join

pytestmark = pytest.mark.spark

BASE = datetime(2024, 3, 1)
TTL = 50  # seconds
US = timedelta(microseconds=1)


def random_case(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature rows and entity rows over compound keys (user, merchant)."""
    rng = random.Random(seed)
    users, merchants = [1, 2, 3, 4], ["a", "b"]
    rows = []
    for user in users[:3]:  # user 4 has no feature rows at all
        for merchant in merchants:
            for _ in range(rng.randint(0, 12)):
                event = BASE + timedelta(seconds=rng.randint(0, 40) * 5)  # coarse grid: many ties
                created = event + timedelta(seconds=rng.randint(0, 3))
                value = None if rng.random() < 0.2 else rng.randint(0, 1000)
                label = None if rng.random() < 0.2 else rng.choice(["x", "y", "z"])
                rows.append({"user": user, "merchant": merchant, "event_timestamp": event,
                             "created_timestamp": created, "f_int": value, "f_str": label})
    features = pd.DataFrame(rows, columns=["user", "merchant", "event_timestamp", "created_timestamp", "f_int", "f_str"])
    entity_rows = []
    for _ in range(60):
        user, merchant = rng.choice(users), rng.choice(merchants)
        kind = rng.random()
        if kind < 0.3 and rows:
            # Exactly at an event time, or exactly at / just past the TTL of one.
            event = rng.choice(rows)["event_timestamp"]
            ts = rng.choice([event, event + timedelta(seconds=TTL), event + timedelta(seconds=TTL) + US, event - US])
        else:
            ts = BASE + timedelta(seconds=rng.randint(-20, 260), microseconds=rng.choice([0, 0, 1, 500_000]))
        entity_rows.append({"user": user, "merchant": merchant, "ts": ts, "extra": rng.randint(0, 9)})
    entity_rows += entity_rows[:5]  # duplicates
    return features, pd.DataFrame(entity_rows)


def oracle(features: pd.DataFrame, entities: pd.DataFrame) -> pd.DataFrame:
    """Brute force: for each entity row, the latest visible feature row by (event, created)."""
    out = []
    for row in entities.itertuples(index=False):
        candidates = features[(features.user == row.user) & (features.merchant == row.merchant)
                              & (features.event_timestamp <= row.ts)]
        f_int = f_str = None
        if len(candidates):
            best = candidates.sort_values(["event_timestamp", "created_timestamp"]).iloc[-1]
            if best.event_timestamp >= row.ts - timedelta(seconds=TTL):
                f_int = None if pd.isna(best.f_int) else int(best.f_int)
                f_str = best.f_str
        out.append({"user": row.user, "merchant": row.merchant, "ts": row.ts, "extra": row.extra,
                    "f_int": f_int, "f_str": f_str})
    return pd.DataFrame(out)


def duckdb_join(features: pd.DataFrame, entities: pd.DataFrame) -> pd.DataFrame:
    from fstore.engine.duckdb import connect
    from fstore.serving.retrieval.entities import prepare_local
    from fstore.serving.retrieval.plan import arrow_to_pandas
    from fstore.serving.retrieval.historical_duckdb import as_of_join, label_table

    con = connect()
    try:
        labels = label_table(prepare_local(entities, None))
        rows = features.astype({"f_int": "Int64"}).assign(read_order=range(len(features)))
        joined = as_of_join(con, labels, rows, keys=["user", "merchant"], ts=TS,
                            features=[("f_int", "f_int"), ("f_str", "f_str")], ttl_seconds=TTL, position="read_order")
        result = arrow_to_pandas(joined.order(ROW).to_arrow_table())
    finally:
        con.close()
    return result[["user", "merchant", "ts", "extra", "f_int", "f_str"]]


def join(request, engine: str, features: pd.DataFrame, entities: pd.DataFrame,
         broadcast_keys: bool = False) -> pd.DataFrame:
    """The as-of join of ``features`` to ``entities`` on ``engine``, in entity order (Spark only started for Spark)."""
    if engine == "duckdb":
        return duckdb_join(features, entities)
    return spark_join(request.getfixturevalue("spark"), features, entities, broadcast_keys)


def spark_join(spark, features: pd.DataFrame, entities: pd.DataFrame, broadcast_keys: bool = False) -> pd.DataFrame:
    prepared = prepare_entities(spark, entities, None)
    rows = spark.createDataFrame(features.astype({"f_int": "Int64"}),
                                 schema="user long, merchant string, event_timestamp timestamp, "
                                        "created_timestamp timestamp, f_int long, f_str string")
    joined = as_of_join(prepared.df, rows, keys=["user", "merchant"], ts=TS,
                        features=[("f_int", "f_int"), ("f_str", "f_str")], ttl_seconds=TTL,
                        broadcast_keys=broadcast_keys)
    result = joined.toPandas().sort_values(ROW).reset_index(drop=True)
    return result[["user", "merchant", "ts", "extra", "f_int", "f_str"]]


def _as_records(df: pd.DataFrame) -> list[tuple]:
    return [tuple(None if (v is None or (not isinstance(v, str) and pd.isna(v))) else v for v in row)
            for row in df.astype(object).itertuples(index=False)]


@pytest.mark.parametrize(("seed", "broadcast_keys"),
                         [(1, False), (2, False), (3, True), (4, False), (5, True), (6, True), (7, True)])
def test_as_of_join_matches_oracle(request, compute_engine, seed, broadcast_keys):
    features, entities = random_case(seed)
    expected = oracle(features, entities)
    got = join(request, compute_engine, features, entities, broadcast_keys)
    assert len(got) == len(entities)
    assert _as_records(got) == _as_records(expected)


def test_null_in_latest_row_stays_null(request, compute_engine):
    """An older non-null value must not show through a newer NULL."""
    features = pd.DataFrame([
        {"user": 1, "merchant": "a", "event_timestamp": BASE, "created_timestamp": BASE, "f_int": 7, "f_str": "old"},
        {"user": 1, "merchant": "a", "event_timestamp": BASE + timedelta(seconds=10),
         "created_timestamp": BASE + timedelta(seconds=10), "f_int": None, "f_str": None},
    ])
    entities = pd.DataFrame([{"user": 1, "merchant": "a", "ts": BASE + timedelta(seconds=5), "extra": 0},
                             {"user": 1, "merchant": "a", "ts": BASE + timedelta(seconds=20), "extra": 1}])
    got = join(request, compute_engine, features, entities)
    assert _as_records(got[["f_int", "f_str"]]) == [(7, "old"), (None, None)]


def test_tie_on_event_time_latest_created_wins(request, compute_engine):
    features = pd.DataFrame([
        {"user": 1, "merchant": "a", "event_timestamp": BASE, "created_timestamp": BASE + timedelta(seconds=2),
         "f_int": 2, "f_str": "second"},
        {"user": 1, "merchant": "a", "event_timestamp": BASE, "created_timestamp": BASE + timedelta(seconds=1),
         "f_int": 1, "f_str": "first"},
        {"user": 1, "merchant": "a", "event_timestamp": BASE + US, "created_timestamp": BASE,
         "f_int": 3, "f_str": "later"},
        # Equal on event and created time: the one read last wins.
        {"user": 1, "merchant": "a", "event_timestamp": BASE + 2 * US, "created_timestamp": BASE,
         "f_int": 5, "f_str": "read first"},
        {"user": 1, "merchant": "a", "event_timestamp": BASE + 2 * US, "created_timestamp": BASE,
         "f_int": 4, "f_str": "read last"},
    ])
    entities = pd.DataFrame([{"user": 1, "merchant": "a", "ts": BASE, "extra": 0},
                             {"user": 1, "merchant": "a", "ts": BASE + 2 * US, "extra": 1}])
    got = join(request, compute_engine, features, entities)
    assert _as_records(got[["f_int", "f_str"]]) == [(2, "second"), (4, "read last")]
