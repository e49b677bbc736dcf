"""Wide retrievals (issue #33): many sets of many features over one source, bounded plans, both engines.

The case that ran out of heap in Spark's planner, made small: 3 feature sets of 60 features each over one
source (one set with a TTL, one with an exact window and a composite over it), retrieved twice in a row on
Spark and once on DuckDB, each answer checked against a pandas oracle, and the Spark plan's size checked to
grow linearly with the number of sets (the chained plan grew with its square).
"""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fstore.store import FeatureStore
from test_materialize_support import write_source
from test_retrieval import fill_offline

pytestmark = pytest.mark.spark

T0 = datetime(2024, 1, 1)
T_END = datetime(2024, 1, 11)
SETS, PER_SET, USERS = 3, 60, 12
TTL = timedelta(days=1)


def source_rows() -> pd.DataFrame:
    """200 events of 12 users over 10 days, one per (user, second), 60 float columns."""
    rng = np.random.default_rng(33)
    frame = pd.DataFrame({"user_id": rng.integers(0, USERS, 200),
                          "event_timestamp": [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 9 * 86400, 200)]})
    frame = frame.drop_duplicates(["user_id", "event_timestamp"]).reset_index(drop=True)
    values = rng.standard_normal((len(frame), PER_SET))
    values[rng.random(values.shape) < 0.05] = np.nan  # NULLs in some rows
    return pd.concat([frame, pd.DataFrame(values, columns=[f"c{i}" for i in range(PER_SET)])], axis=1)


def label_rows() -> pd.DataFrame:
    rng = np.random.default_rng(34)
    return pd.DataFrame({"user_id": rng.integers(0, USERS + 2, 150),  # two users without any event
                         "event_timestamp": [T0 + timedelta(seconds=int(s)) for s in rng.integers(-3600, 10 * 86400, 150)]})


def define(store: FeatureStore, source: str, sets: int = SETS, per_set: int = PER_SET) -> None:
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    src = {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"}
    for s in range(sets):
        features = [{"name": f"c{i}", "data_type": "float", "transformation": f"c{i}"} for i in range(per_set)]
        body = {"name": f"w{s}", "entities": ["user"], "source": src, "features": features}
        if s == 0:
            body["ttl"] = "1d"
        if s == 2:  # an exact window, and a composite over it recomputed at the label time
            features[-2] = {"name": "n_2d", "data_type": "int", "window_size": "2d", "aggregation": "count"}
            features[-1] = {"name": "n_2d_x2", "data_type": "int", "transformation": "n_2d * 2",
                            "source_features": ["n_2d"]}
        store.create_feature_set(body)


def refs(store: FeatureStore, sets: int = SETS) -> list[str]:
    return [f"w{s}:{f.name}" for s in range(sets) for f in store.feature_set_version(f"w{s}").features]


def oracle(events: pd.DataFrame, labels: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Brute force, per label row: the latest event at or before it (w0: not older than the TTL), the
    2-day count in ``(t - 2d, t]`` and twice it."""
    out = []
    for row in labels.itertuples(index=False):
        mine = events[(events.user_id == row.user_id) & (events.event_timestamp <= row.event_timestamp)]
        latest = mine.sort_values("event_timestamp").iloc[-1] if len(mine) else None
        values = {}
        for name in columns:
            s, feature = name.split("__", 1)
            if feature == "n_2d":
                values[name] = int((mine.event_timestamp > row.event_timestamp - timedelta(days=2)).sum())
            elif feature == "n_2d_x2":
                values[name] = 2 * int((mine.event_timestamp > row.event_timestamp - timedelta(days=2)).sum())
            elif latest is None or (s == "w0" and latest.event_timestamp < row.event_timestamp - TTL):
                values[name] = None
            else:
                values[name] = latest[feature]
        out.append(values)
    return pd.DataFrame(out, columns=columns)


def same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    for name in expected.columns:
        left = pd.to_numeric(got[name], errors="coerce").astype(float).to_numpy()
        right = pd.to_numeric(expected[name], errors="coerce").astype(float).to_numpy()
        np.testing.assert_array_equal(np.isnan(left), np.isnan(right), err_msg=name)
        np.testing.assert_allclose(left[~np.isnan(left)], right[~np.isnan(right)], err_msg=name, rtol=0, atol=1e-12)


def plan_lines(result) -> int:
    """The number of nodes of a Spark result's analysed plan."""
    return result.spark_df._jdf.queryExecution().analyzed().treeString().count("\n")


@pytest.fixture()
def wide(settings, spark, tmp_path):
    events = source_rows()
    store = FeatureStore(settings.with_(compute_engine="spark")).use_spark(spark)
    define(store, write_source(tmp_path / "source", events))
    for s in range(SETS):
        fill_offline(store, f"w{s}", T0, T_END)
    return store, events


def test_wide_retrieval_twice_on_spark_matches_oracle_and_duckdb(wide, settings):
    store, events = wide
    labels = label_rows()
    wanted = refs(store)
    expected = oracle(events, labels, [r.replace(":", "__") for r in wanted])
    for _ in range(2):  # the second call is the one that ran out of heap
        result = store.get_historical_features(entity_df=labels, features=wanted)
        got = result.to_df()
        assert len(got) == len(labels)
        pd.testing.assert_frame_equal(got[["user_id", "event_timestamp"]],
                                      labels.assign(event_timestamp=labels.event_timestamp.astype("datetime64[ns]")))
        same(got.drop(columns=["user_id", "event_timestamp"]), expected)
    duck = FeatureStore(settings.with_(compute_engine="duckdb"))
    same(duck.get_historical_features(entity_df=labels, features=wanted).to_df().drop(
        columns=["user_id", "event_timestamp"]), expected)


def test_spark_plan_grows_linearly_with_sets(wide):
    """A second set sharing the join keys adds one branch to the shared as-of pass, less than a whole
    one-set plan (chained, the second set's pass held the first set's whole plan as its label side, and
    each set's union carried every column before it: the optimizer's time and memory grew with the square)."""
    store, _ = wide
    labels = label_rows()
    offline_only = [r for r in refs(store, 2)]  # w0, w1: point-in-time features only
    one = plan_lines(store.get_historical_features(entity_df=labels, features=offline_only[:PER_SET]))
    two = plan_lines(store.get_historical_features(entity_df=labels, features=offline_only))
    again = plan_lines(store.get_historical_features(entity_df=labels, features=offline_only))
    assert again == two  # nothing accumulates between calls
    # One shared as-of pass: a second set adds its own read and one union branch, not another pass.
    assert two - one < one, (one, two)


def test_every_matches_the_entity_frame_path(settings, on_engine, tmp_path):
    """``start``/``end``/``every`` without entity rows: every user with a row at or before each daily instant,
    the same values as asking those rows explicitly; written to ``output_path`` as well."""
    events = source_rows()
    store = on_engine(settings)
    define(store, write_source(tmp_path / "source", events), sets=3, per_set=4)
    for s in range(3):
        fill_offline(store, f"w{s}", T0, T_END)
    start, end = T0 + timedelta(hours=12), T0 + timedelta(days=5, hours=12)
    out = tmp_path / "snapshots"
    result = store.get_historical_features(feature_sets=["w0", "w1", "w2"], start=start, end=end, every="1d",
                                           output_path=str(out))
    got = result.to_df()
    instants = [start + timedelta(days=d) for d in range(5)]
    first = events.groupby("user_id").event_timestamp.min()
    pairs = sorted((u, t) for t in instants for u, f in first.items() if f <= t)
    assert sorted(zip(got.user_id, got.event_timestamp)) == pairs
    wanted = [r for r in refs(store, 3)]
    assert list(got.columns) == ["user_id", "event_timestamp", *[r.replace(":", "__") for r in wanted]]
    frame = pd.DataFrame(pairs, columns=["user_id", "event_timestamp"])
    explicit = store.get_historical_features(entity_df=frame, features=wanted).to_df()
    order = ["user_id", "event_timestamp"]
    got = got.sort_values(order, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, explicit.sort_values(order, kind="stable").reset_index(drop=True),
                                  check_dtype=False)
    written = pd.read_parquet(out).sort_values(order, kind="stable").reset_index(drop=True)
    written["event_timestamp"] = written.event_timestamp.dt.tz_localize(None) if written.event_timestamp.dt.tz \
        else written.event_timestamp
    pd.testing.assert_frame_equal(written, got, check_dtype=False)


def test_every_through_cli_and_rest(settings, spark, tmp_path):
    """The CLI's ``get-snapshot-features`` and ``POST /api/v1/serving/snapshots`` give the SDK's rows; with
    ``output_path`` the endpoint writes them as Delta instead of answering them."""
    from click.testing import CliRunner
    from deltalake import DeltaTable

    from fstore.api import create_app
    from fstore.cli import main

    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    define(store, write_source(tmp_path / "source", source_rows()), sets=2, per_set=3)
    for s in range(2):
        fill_offline(store, f"w{s}", T0, T_END)
    ask = {"feature_sets": ["w0", "w1"], "start": "2024-01-02T00:00:00Z", "end": "2024-01-08T00:00:00Z", "every": "2d"}
    sdk = store.get_historical_features(**ask).to_df()
    assert len(sdk) > USERS and sdk.event_timestamp.nunique() == 3

    client = create_app(store=store).test_client()
    answer = client.post("/api/v1/serving/snapshots", json=ask)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["columns"] == list(sdk.columns) and body["metadata"]["rows"] == len(sdk)
    assert [row[0] for row in body["data"]] == sdk.user_id.tolist()
    written = client.post("/api/v1/serving/snapshots",
                          json={**ask, "output_path": str(tmp_path / "rest-out"), "output_format": "delta"})
    assert written.status_code == 200, written.get_json()
    assert written.get_json()["rows"] == len(sdk) and written.get_json()["instants"] == 3
    assert DeltaTable(str(tmp_path / "rest-out")).to_pandas().shape == sdk.shape

    out = tmp_path / "cli.parquet"
    env = {"STORAGE_PATH": settings.storage_path, "SOURCE_ROOTS": str(tmp_path), "COMPUTE_ENGINE": "duckdb"}
    result = CliRunner().invoke(main, ["get-snapshot-features", "--feature-sets", "w0,w1", "--start", ask["start"],
                                       "--end", ask["end"], "--every", "2d", "--output", str(out)],
                                env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_parquet(out), sdk, check_dtype=False)
