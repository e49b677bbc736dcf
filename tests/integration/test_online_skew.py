"""The skew monitor: sampled online answers compared with historical retrieval at the same instant.

The issue's case (user 1: events 40, 35 and 10 days ago, amounts 100, 10, 1; 30-day sum and count) now
answers the same both ways, so the rate is 0. A row written online beside the offline truth (what a
store whose windows never aged looked like: sum 11, count 2) is caught: rate > 0, in the Prometheus
metric, in ``/monitoring/statistics`` and by ``fstore monitor skew NAME --sample N``.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from click.testing import CliRunner

from fstore.ops import metrics
from fstore.api import create_app
from fstore.cli import main
from fstore.serving.skew import SkewMonitor, monitor_for
from fstore.serving.skew_check import check_skew
from test_materialize_support import write_source

pytestmark = pytest.mark.spark

NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
DAY = timedelta(days=1)
FEATURES = ["sum_30d", "cnt_30d", "amount"]


def make_set(store, tmp_path, name: str) -> None:
    events = pd.DataFrame([(1, NOW - 40 * DAY, 100.0), (1, NOW - 35 * DAY, 10.0), (1, NOW - 10 * DAY, 1.0),
                           (2, NOW - 5 * DAY, 3.0), (2, NOW - DAY, 4.0), (3, NOW - 45 * DAY, 9.0)],
                          columns=["user_id", "event_timestamp", "amount"])
    source = write_source(tmp_path / "source" / name, events)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": name, "entities": ["user"], "online_enabled": True,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": "sum_30d", "data_type": "float", "window_size": "30d", "aggregation": "sum",
                      "transformation": "amount"},
                     {"name": "cnt_30d", "data_type": "int", "window_size": "30d", "aggregation": "count"},
                     {"name": "amount", "data_type": "float", "transformation": "amount"}]})
    store.materialize(name, NOW - 60 * DAY, NOW - timedelta(seconds=1))


def counts(name: str) -> tuple[int, int]:
    entry = metrics.skew_totals().get(name, {"compared": 0, "skewed": 0})
    return int(entry["compared"]), int(entry["skewed"])


def age_never(store, name: str) -> None:
    """User 1's row as the old online store kept it: the window as of its last event, newer than the offline row."""
    fsv = store.feature_set_version(name)
    store.online.write_rows(fsv, [{"user_id": 1, "event_timestamp": NOW - 10 * DAY + timedelta(seconds=1),
                                   "sum_30d": 11.0, "cnt_30d": 2, "amount": 1.0}])


@pytest.fixture(params=["embedded", "redis"])
def online_settings(request, settings):
    if request.param == "redis":
        return settings.with_(redis_url=request.getfixturevalue("redis_url"))
    return settings


def test_sampled_requests_are_compared_in_the_background(on_engine, online_settings, tmp_path, compute_engine):
    name = f"skew_{compute_engine}"
    store = on_engine(online_settings.with_(online_skew_sample=1.0))
    make_set(store, tmp_path, name)
    asked = {"features": [f"{name}:{f}" for f in FEATURES], "entities": {"user_id": [1, 2, 3, 4]}}
    before = counts(name)
    answer = store.get_online_features(**asked)
    assert answer["features"]["1"][f"{name}:sum_30d"] == 1.0 and answer["features"]["1"][f"{name}:cnt_30d"] == 1
    monitor = monitor_for(store)
    assert monitor.join(120) and monitor.errors == 0
    compared, skewed = counts(name)
    assert (compared - before[0], skewed - before[1]) == (4, 0)

    age_never(store, name)
    answer = store.get_online_features(**asked)
    assert answer["features"]["1"][f"{name}:sum_30d"] == 11.0  # the planted skew is really served
    assert monitor.join(120) and monitor.errors == 0
    compared, skewed = counts(name)
    assert (compared - before[0], skewed - before[1]) == (8, 1)

    client = create_app(store=store.__class__(store.settings.with_(auth_enabled=False)).use_spark(store.spark)).test_client()
    text = client.get("/monitoring/metrics").get_data(as_text=True)
    assert f'fstore_online_skew_rate{{feature_set="{name}"}}' in text
    assert f'fstore_online_skew_rows_total{{feature_set="{name}",result="skewed"}}' in text
    stats = client.get("/monitoring/statistics").get_json()["online_skew"]
    item = next(i for i in stats["items"] if i["feature_set"] == name)
    assert item["skewed"] >= 1 and 0 < item["skew_rate"] < 1 and stats["sample"] == 1.0


def test_off_by_default_and_a_full_queue_never_waits(settings, spark):
    from fstore.store import FeatureStore

    store = FeatureStore(settings).use_spark(spark)
    assert settings.online_skew_sample == 0.0 and monitor_for(store) is None
    monitor = SkewMonitor(store, 1.0, queue_size=1)
    monitor.stop()  # the worker ends: nothing takes from the queue any more
    monitor._thread.join(5)
    assert monitor.offer(["f"], [{"user_id": 1}], ["1"], None, {}, 0)
    assert not monitor.offer(["f"], [{"user_id": 1}], ["1"], None, {}, 0) and monitor.dropped == 1
    assert not SkewMonitor(store, 0.0).offer(["f"], [{"user_id": 1}], ["1"], None, {}, 0)


def test_monitor_skew_command(settings, spark, tmp_path):
    from fstore.store import FeatureStore

    duck = settings.with_(compute_engine="duckdb")
    store = FeatureStore(duck).use_spark(spark)
    make_set(store, tmp_path, "skew_cli")
    assert check_skew(store, "skew_cli", sample=10)["skew_rate"] == 0.0
    env = {"STORAGE_PATH": duck.storage_path, "DATABASE_URL": duck.database_url, "COMPUTE_ENGINE": "duckdb",
           "SOURCE_ROOTS": ",".join(duck.allowed_source_roots)}
    run = CliRunner().invoke(main, ["monitor", "skew", "skew_cli", "--sample", "10"], env=env, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "0 of 3 entities skewed, skew rate 0.0000" in run.stdout
    age_never(store, "skew_cli")
    run = CliRunner().invoke(main, ["--json", "monitor", "skew", "skew_cli", "--sample", "2"], env=env,
                             catch_exceptions=False)
    data = json.loads(run.stdout)
    assert data["compared"] == 2 and data["skewed"] <= 1
    run = CliRunner().invoke(main, ["monitor", "skew", "skew_cli", "--sample", "10"], env=env, catch_exceptions=False)
    assert "1 of 3 entities skewed, skew rate 0.3333" in run.stdout
    assert "sum_30d" in run.stdout and "cnt_30d" in run.stdout and "amount" not in run.stdout.split("rate")[1]
