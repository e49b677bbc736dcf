"""Late data is picked up by what was read, not by event time; allowed_lateness counts what is too late; an
incremental run that finds nothing writes no Delta version (issue #30, item 2), on both engines."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fstore.storage import offline
from test_reproducible import D, T0, body, write_file

pytestmark = pytest.mark.spark

H = timedelta(hours=1)


def no_ttl(source: str) -> dict:
    """The set without a TTL: online values of 2024 are served today."""
    return {k: v for k, v in body(source).items() if k != "ttl"}


@pytest.fixture()
def store(settings, on_engine, tmp_path):
    s = on_engine(settings)
    s.source_folder = tmp_path / "source"
    write_file(s.source_folder, "part-0.parquet", [(1, T0 + i * D + 12 * H, v)
                                                   for i, v in enumerate([10.0, 20.0, 9.0, 10.0, 20.0])])
    s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    yield s
    s.close()


def _online_sum(store) -> float:
    """The online 3-day sum at day 4 noon, the last event's time (online windows are exact at the instant asked)."""
    answer = store.get_online_features(features=["sum_3d"], entities={"user_id": [1]}, at=T0 + 4 * D + 12 * H)
    return answer["features"]["1"]["sum_3d"]


def _offline_sum_at(store, ts) -> float:
    import pandas as pd

    result = store.get_historical_features(entity_df=pd.DataFrame({"user_id": [1], "event_timestamp": [ts]}),
                                           features=["spend:sum_3d"])
    return result.to_df()["spend__sum_3d"][0]


def test_a_late_event_in_a_new_file_is_processed_offline_and_online(store):
    store.create_feature_set(no_ttl(str(store.source_folder)))
    first = store.materialize_incremental("spend", end=T0 + 5 * D)
    assert first["rows_read"] == 5 and first["source_files"] == 1
    assert _online_sum(store) == 39.0  # day 4 noon: 9 + 10 + 20
    write_file(store.source_folder, "part-1.parquet", [(1, T0 + 3 * D + H, 999.0)])
    second = store.materialize_incremental("spend", end=T0 + 5 * D + H)
    assert second["status"] == "succeeded" and second["rows_read"] >= 1
    assert second["start"] == "2024-03-04T01:00:00Z" and second["late_dropped"] == 0
    assert _online_sum(store) == 1038.0  # the window of the latest event now holds the late one
    assert _offline_sum_at(store, T0 + 4 * D + 12 * H) == 1038.0


def test_events_older_than_allowed_lateness_are_counted_not_processed(store):
    store.create_feature_set({**no_ttl(str(store.source_folder)), "allowed_lateness": "2d"})
    store.materialize_incremental("spend", end=T0 + 5 * D)
    # Watermark day 5; cutoff day 3: the day-1 event is too late, the day-4 one is processed.
    write_file(store.source_folder, "part-1.parquet", [(1, T0 + 1 * D + H, 500.0), (1, T0 + 4 * D + H, 1.0)])
    run = store.materialize_incremental("spend", end=T0 + 5 * D + H)
    assert run["late_dropped"] == 1 and run["start"] == "2024-03-04T00:00:00Z"
    assert _online_sum(store) == 40.0  # 9 + 10 + 1 + 20: the 500 is not there
    assert store.get_feature_set("spend")["allowed_lateness_seconds"] == 2 * 86400


def test_an_incremental_run_that_finds_nothing_writes_no_delta_version(store):
    store.create_feature_set(no_ttl(str(store.source_folder)))
    store.materialize_incremental("spend", end=T0 + 5 * D)
    version = offline.current_version(store.settings, "spend")
    run = store.materialize_incremental("spend", end=T0 + 6 * D)
    assert run["status"] == "succeeded" and run["rows_read"] == 0 and run["offline_version"] is None
    assert offline.current_version(store.settings, "spend") == version
