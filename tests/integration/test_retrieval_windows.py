"""Windowed features exact at label time, against a pandas oracle, on real Spark."""
from __future__ import annotations

import random
from datetime import datetime, timedelta

import pandas as pd
import pytest
from pyspark.sql import functions as F

from fstore.compiler.windows import WindowSpec
from fstore.retrieval.entities import ROW, TS, prepare_entities
from fstore.retrieval.windows import exact_windows

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


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_windows_exact_at_label_time(spark, seed):
    events, labels = _case(seed)
    prepared = prepare_entities(spark, labels, None)
    frame = prepared.df.select(F.col("user_id"), F.col(TS), F.col(ROW), F.col("note"))
    source = spark.createDataFrame(events, schema="user_id int, event_timestamp timestamp, amount double")
    result = exact_windows(frame, source, keys=["user_id"], ts=TS, event_ts="event_timestamp",
                           windows=[(COUNT_30S, "c30"), (SUM_60S_BIG, "s60")],
                           lo=prepared.min_ts, hi=prepared.max_ts)
    got = result.toPandas().sort_values(ROW)
    assert len(got) == len(labels)
    rows = [(int(r.user_id), r.note, int(r.c30), None if pd.isna(r.s60) else float(r.s60)) for r in got.itertuples()]
    assert rows == _oracle(events, labels)


def test_count_drops_events_that_aged_out(spark):
    """Two events, then a label 31 s after the first: the 30 s count is 1, not the 2 stored at the last event."""
    events = pd.DataFrame([{"user_id": 1, "event_timestamp": BASE, "amount": 1.0},
                           {"user_id": 1, "event_timestamp": BASE + timedelta(seconds=10), "amount": 1.0}])
    labels = pd.DataFrame([{"user_id": 1, "ts": BASE + timedelta(seconds=31), "note": "x"}])
    prepared = prepare_entities(spark, labels, None)
    source = spark.createDataFrame(events, schema="user_id long, event_timestamp timestamp, amount double")
    result = exact_windows(prepared.df.select("user_id", TS, ROW, "note"), source, keys=["user_id"], ts=TS,
                           event_ts="event_timestamp", windows=[(COUNT_30S, "c30")])
    assert [r.c30 for r in result.collect()] == [1]
