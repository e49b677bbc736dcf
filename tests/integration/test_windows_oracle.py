"""Every window aggregation against a brute-force pandas oracle on random data, on real Spark and on DuckDB.

Windows are ``(t - size, t]`` per entity: an event exactly ``size`` before is outside, ``size - 1µs`` before is
inside, events at the same instant are all inside. Data includes those edges, ties, nulls, a filter that empties
some windows, and a second entity key so partitions never mix.
"""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import pandas as pd
import pytest

from fstore.compiler import aggregate_expression, compile_feature_set
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion

pytestmark = pytest.mark.spark

SIZE_S = 10
SIZE = timedelta(seconds=SIZE_S)
T0 = datetime(2024, 2, 28, 23, 59, 50)
AGGS = ("count", "sum", "avg", "min", "max", "stddev", "count_distinct", "last")


def random_events(seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    us = timedelta(microseconds=1)
    rows = []
    for user in ("u1", "u2", "u3"):
        base = T0 + timedelta(seconds=rng.randint(0, 3))
        offsets = [timedelta(0), timedelta(0), SIZE - us, SIZE, SIZE + us, 2 * SIZE, 2 * SIZE - us, 3 * SIZE]
        offsets += [timedelta(microseconds=rng.randint(0, 4 * SIZE_S * 1_000_000)) for _ in range(12)]
        offsets += [offsets[rng.randrange(len(offsets))] for _ in range(4)]  # more ties
        for off in offsets:
            value = None if rng.random() < 0.2 else float(rng.randint(0, 4))
            rows.append({"user_id": user, "region": rng.choice(["eu", "us"]), "ts": base + off, "amount": value,
                         "kind": rng.choice(["a", "b"])})
    df = pd.DataFrame(rows)
    df["rid"] = range(len(df))
    return df


def oracle(events: pd.DataFrame, at_user: str, at_region: str, at: datetime, fn: str, *, column: bool, filtered: bool):
    w = events[(events.user_id == at_user) & (events.region == at_region) & (events.ts > at - SIZE) & (events.ts <= at)]
    if filtered:
        w = w[w.kind == "a"]
    if fn == "count" and not column:
        return len(w)
    vals = w[w.amount.notna()]
    if fn == "count":
        return len(vals)
    if fn == "count_distinct":
        return vals.amount.nunique()
    if vals.empty:
        return None
    if fn == "sum":
        return vals.amount.sum()
    if fn == "avg":
        return vals.amount.mean()
    if fn == "min":
        return vals.amount.min()
    if fn == "max":
        return vals.amount.max()
    if fn == "stddev":
        return vals.amount.std(ddof=1) if len(vals) > 1 else None
    latest = vals.sort_values(["ts", "amount"]).iloc[-1]  # latest event; ties → the greatest value
    return latest.amount


def features() -> list[dict]:
    out = [{"name": "rid", "data_type": "int", "transformation": "rid"},
           {"name": "n_events", "data_type": "int", "window_size": "10s", "aggregation": "count"},
           {"name": "n_events_pg", "data_type": "int", "dialect": "postgres", "transformation":
            "COUNT(*) OVER (PARTITION BY user_id, region ORDER BY ts RANGE BETWEEN INTERVAL '10 seconds' PRECEDING AND CURRENT ROW)"},
           {"name": "sum_pg_filtered", "data_type": "float", "dialect": "postgres", "transformation":
            "SUM(amount) FILTER (WHERE kind = 'a') OVER (PARTITION BY region, user_id ORDER BY ts "
            "RANGE BETWEEN INTERVAL '10 seconds' PRECEDING AND CURRENT ROW)"}]
    for fn in AGGS:
        out.append({"name": f"{fn}_amount", "data_type": "int" if fn.startswith("count") else "float",
                    "transformation": "amount", "window_size": "10s", "aggregation": fn})
        out.append({"name": f"{fn}_amount_a", "data_type": "int" if fn.startswith("count") else "float",
                    "transformation": "amount", "window_size": "10s", "aggregation": fn, "window_filter": "kind = 'a'"})
    return out


def make_fsv(path: str) -> FeatureSetVersion:
    return FeatureSetVersion(
        feature_set=FeatureSet.from_dict({"name": "w", "entities": ["user", "region"],
                                          "source": {"path": path, "event_timestamp_column": "ts"}}),
        version=1,
        entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}), Entity.from_dict({"name": "region"})),
        features=tuple(Feature.from_dict(f, feature_set="w") for f in features()),
    )


def same(got, want) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None or (isinstance(got, float) and math.isnan(got))
    return got is not None and not (isinstance(got, float) and math.isnan(got)) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("seed", [1, 2])
def test_every_aggregation_matches_the_oracle_at_every_event(spark, compute_rows, tmp_path, seed):
    events = random_events(seed)
    path = str(tmp_path / "events")
    spark.createDataFrame(events).write.parquet(path)
    fsv = make_fsv(path)
    assert compile_feature_set(fsv).lookback_seconds == SIZE_S
    got = compute_rows(fsv).set_index("rid")
    assert len(got) == len(events)
    wrong = []
    for e in events.itertuples():
        row = got.loc[e.rid]
        at = (e.user_id, e.region, e.ts)
        checks = {"n_events": oracle(events, *at, "count", column=False, filtered=False),
                  "n_events_pg": oracle(events, *at, "count", column=False, filtered=False),
                  "sum_pg_filtered": oracle(events, *at, "sum", column=True, filtered=True)}
        for fn in AGGS:
            checks[f"{fn}_amount"] = oracle(events, *at, fn, column=True, filtered=False)
            checks[f"{fn}_amount_a"] = oracle(events, *at, fn, column=True, filtered=True)
        for name, want in checks.items():
            value = row[name]
            value = None if pd.isna(value) else value.item() if hasattr(value, "item") else value
            if not same(value, want):
                wrong.append((e.rid, name, value, want))
    assert wrong == []
    # the edges are really in the data: an event exactly SIZE after another, and one SIZE - 1µs after
    u1 = events[events.user_id == "u1"].ts
    assert any((u1 == t + SIZE).any() for t in u1) and any((u1 == t + SIZE - timedelta(microseconds=1)).any() for t in u1)
    # the empty-window cases are covered too (a filter that keeps nothing)
    assert (got["count_amount_a"] == 0).any() and got["sum_amount_a"].isna().any()


def test_aggregate_expression_at_label_time(spark, tmp_path):
    """The retrieval building block: label rows unioned with event rows, counted only as frame positions."""
    events = random_events(7)
    path = str(tmp_path / "events")
    spark.createDataFrame(events).write.parquet(path)
    fsv = make_fsv(path)
    labels = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "region": ["eu", "us", "eu", "us"],
                           "ts": [T0 + timedelta(seconds=15), T0 + SIZE * 3 + timedelta(seconds=5),
                                  T0 + timedelta(seconds=40), T0 + timedelta(days=1)]})
    ev = spark.createDataFrame(events).selectExpr("user_id", "region", "ts AS event_timestamp", "amount", "kind",
                                                  "true AS is_event", "-1 AS label_id")
    lb = spark.createDataFrame(labels.assign(label_id=range(len(labels)))).selectExpr(
        "user_id", "region", "ts AS event_timestamp", "CAST(NULL AS DOUBLE) AS amount", "CAST(NULL AS STRING) AS kind",
        "false AS is_event", "label_id")
    exprs = {name: aggregate_expression(fsv, name, event_flag="is_event")
             for name in ("n_events", "sum_pg_filtered", "last_amount", "count_distinct_amount_a", "stddev_amount")}
    out = ev.unionByName(lb).selectExpr("*", *[f"{sql} AS {name}" for name, sql in exprs.items()])
    got = out.where("NOT is_event").toPandas().set_index("label_id")
    for lid, lab in labels.iterrows():
        at = (lab.user_id, lab.region, lab.ts)
        want = {"n_events": oracle(events, *at, "count", column=False, filtered=False),
                "sum_pg_filtered": oracle(events, *at, "sum", column=True, filtered=True),
                "last_amount": oracle(events, *at, "last", column=True, filtered=False),
                "count_distinct_amount_a": oracle(events, *at, "count_distinct", column=True, filtered=True),
                "stddev_amount": oracle(events, *at, "stddev", column=True, filtered=False)}
        for name, value in want.items():
            g = got.loc[lid, name]
            assert same(None if pd.isna(g) else float(g), value), (lid, name, g, value)


def test_ranges_computed_apart_equal_the_whole(spark, compute_rows, tmp_path):
    """Incremental runs rely on this: [a, b) + [b, c) = [a, c), because each range reads its windows' look-back."""
    events = random_events(3)
    path = str(tmp_path / "events")
    spark.createDataFrame(events).write.parquet(path)
    fsv = make_fsv(path)
    a, b, c = T0, T0 + timedelta(seconds=17, microseconds=1), T0 + timedelta(days=1)
    whole = compute_rows(fsv, start=a, end=c).sort_values("rid").reset_index(drop=True)
    parts = pd.concat([compute_rows(fsv, start=a, end=b), compute_rows(fsv, start=b, end=c)])
    parts = parts.sort_values("rid").reset_index(drop=True)
    assert len(whole) == len(events) and 0 < (parts.event_timestamp < b).sum() < len(parts)
    pd.testing.assert_frame_equal(parts, whole)
