"""Windowed features exact at label time, against a pandas oracle, on real Spark and on DuckDB."""
from __future__ import annotations

import random
from datetime import datetime, timedelta

import pandas as pd
import pytest
from pyspark.sql import functions as F

from fstore.compiler.windows import WindowSpec
from fstore.serving.retrieval.entities import ROW, TS, prepare_entities
from fstore.serving.retrieval.windows import exact_windows

pytestmark = pytest.mark.spark

BASE = datetime(2024, 5, 1)
COUNT_30S = WindowSpec(function="count", size_seconds=30)
SUM_60S_BIG = WindowSpec(function="sum", size_seconds=60, value="amount", filter="amount > 5")


def _case(seed: int):
    rng = random.Random(seed)
    events = []
    for user in (1, 2):  # user 3 has no events
        for _ in range(rng.randint(3, 15)):
            events.append({"user_id": user, "event_timestamp": BASE + timedelta(seconds=rng.randint(0, 120)),
                           "amount": float(rng.randint(0, 10))})
    labels = []
    for _ in range(40):
        if rng.random() < 0.3:
            event = rng.choice(events)["event_timestamp"]
            # at an event, exactly one window after it (outside), 1 µs less (inside)
            ts = rng.choice([event, event + timedelta(seconds=30), event + timedelta(seconds=30) - timedelta(microseconds=1)])
        else:
            ts = BASE + timedelta(seconds=rng.randint(-10, 200), microseconds=rng.choice([0, 250_000]))
        labels.append({"user_id": rng.choice([1, 2, 3]), "ts": ts, "note": f"n{rng.randint(0, 9)}"})
    return pd.DataFrame(events), pd.DataFrame(labels)


def _oracle(events: pd.DataFrame, labels: pd.DataFrame) -> list[tuple]:
    out = []
    for row in labels.itertuples(index=False):
        mine = events[events.user_id == row.user_id]
        in30 = mine[(mine.event_timestamp > row.ts - timedelta(seconds=30)) & (mine.event_timestamp <= row.ts)]
        in60 = mine[(mine.event_timestamp > row.ts - timedelta(seconds=60)) & (mine.event_timestamp <= row.ts)
                    & (mine.amount > 5)]
        out.append((row.user_id, row.note, len(in30), float(in60.amount.sum()) if len(in60) else None))
    return out


def windows_at_labels(request, engine: str, events: pd.DataFrame, labels: pd.DataFrame, windows, *,
                      bounded: bool = True) -> pd.DataFrame:
    """``exact_windows`` of ``engine`` over the label rows (``user_id``, ``ts``, ``note``), in label order."""
    if engine == "duckdb":
        from fstore.engine.duckdb import connect
        from fstore.serving.retrieval.entities import prepare_local
        from fstore.serving.retrieval.plan import arrow_to_pandas
        from fstore.serving.retrieval.historical_duckdb import exact_windows as duckdb_windows
        from fstore.serving.retrieval.historical_duckdb import label_table

        prepared = prepare_local(labels, None)
        con = connect()
        try:
            result = duckdb_windows(con, label_table(prepared).select(["user_id", TS, ROW, "note"]),
                                    events.astype({"user_id": "int32"}), keys=["user_id"], ts=TS,
                                    event_ts="event_timestamp", windows=windows,
                                    lo=prepared.min_ts if bounded else None, hi=prepared.max_ts if bounded else None)
            return arrow_to_pandas(result.order(ROW).to_arrow_table())
        finally:
            con.close()
    spark = request.getfixturevalue("spark")
    prepared = prepare_entities(spark, labels, None)
    frame = prepared.df.select(F.col("user_id"), F.col(TS), F.col(ROW), F.col("note"))
    source = spark.createDataFrame(events, schema="user_id int, event_timestamp timestamp, amount double")
    result = exact_windows(frame, source, keys=["user_id"], ts=TS, event_ts="event_timestamp", windows=windows,
                           lo=prepared.min_ts if bounded else None, hi=prepared.max_ts if bounded else None)
    return result.toPandas().sort_values(ROW)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_windows_exact_at_label_time(request, compute_engine, seed):
    events, labels = _case(seed)
    got = windows_at_labels(request, compute_engine, events, labels, [(COUNT_30S, "c30"), (SUM_60S_BIG, "s60")])
    assert len(got) == len(labels)
    rows = [(int(r.user_id), r.note, int(r.c30), None if pd.isna(r.s60) else float(r.s60)) for r in got.itertuples()]
    assert rows == _oracle(events, labels)


def test_count_drops_events_that_aged_out(request, compute_engine):
    """Two events, then a label 31 s after the first: the 30 s count is 1, not the 2 stored at the last event."""
    events = pd.DataFrame([{"user_id": 1, "event_timestamp": BASE, "amount": 1.0},
                           {"user_id": 1, "event_timestamp": BASE + timedelta(seconds=10), "amount": 1.0}])
    labels = pd.DataFrame([{"user_id": 1, "ts": BASE + timedelta(seconds=31), "note": "x"}])
    got = windows_at_labels(request, compute_engine, events, labels, [(COUNT_30S, "c30")], bounded=False)
    assert list(got.c30) == [1]
