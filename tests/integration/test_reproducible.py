"""Saved training sets and ``as_of`` give the same rows later, windows included, on both engines.

The attack (issue #30, item 1): save a training set with a 3-day sum, let new days and one late event inside a
saved row's window arrive in a new source file and be materialized, then re-create it and ask ``as_of`` the
version read: windows used to be recomputed from today's source (39.0 came back as 1038.0).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.spark

T0 = datetime(2024, 3, 1)
D = timedelta(days=1)


def write_file(folder: Path, name: str, rows: list[tuple[int, datetime, float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "amount"])
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us]")
    frame.to_parquet(folder / name, index=False)


def body(source: str) -> dict:
    return {
        "name": "spend", "entities": ["user"], "ttl": "30d",
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [
            {"name": "amount", "data_type": "float", "transformation": "amount"},
            {"name": "sum_3d", "data_type": "float", "window_size": "3d", "aggregation": "sum",
             "transformation": "amount"},
            {"name": "half_sum_3d", "data_type": "float", "transformation": "sum_3d / 2", "source_features": ["sum_3d"]},
        ],
    }


@pytest.fixture()
def store(settings, on_engine, tmp_path):
    s = on_engine(settings)
    source = tmp_path / "source"
    # Days 0..4: 10, 20, 9, 10, 20 for user 1 (one event a day at noon).
    write_file(source, "part-0.parquet", [(1, T0 + i * D + timedelta(hours=12), v)
                                          for i, v in enumerate([10.0, 20.0, 9.0, 10.0, 20.0])])
    s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    s.create_feature_set(body(str(source)))
    s.materialize("spend", T0, T0 + 5 * D)
    s.source_folder = source
    yield s
    s.close()


LABELS = pd.DataFrame({"user_id": [1, 1, 1], "event_timestamp": [T0 + 4 * D, T0 + 4 * D + timedelta(hours=13),
                                                                  T0 + 2 * D + timedelta(hours=13)]})
FEATURES = ["amount", "sum_3d", "half_sum_3d"]


def _late_data_arrives(store) -> None:
    """New days, and one late event (999 at day 3, 01:00) inside the first label row's window, in a new file."""
    write_file(store.source_folder, "part-1.parquet",
               [(1, T0 + 3 * D + timedelta(hours=1), 999.0), (1, T0 + 5 * D + timedelta(hours=12), 1.0),
                (1, T0 + 6 * D + timedelta(hours=12), 2.0)])
    store.materialize("spend", T0, T0 + 7 * D)


def test_recreate_returns_the_saved_rows_after_late_data_and_new_days(store):
    saved = store.get_historical_features(entity_df=LABELS, features=FEATURES, save_as="ts1").to_df()
    # Day 4 00:00: window (day 1, day 4] holds 20 + 9 + 10 = 39.
    assert saved.sum_3d.tolist() == [39.0, 39.0, 39.0]
    _late_data_arrives(store)
    live = store.get_historical_features(entity_df=LABELS, features=FEATURES).to_df()
    assert live.sum_3d.tolist()[0] == 1038.0  # today's answer sees the late event
    again = store.recreate_training_set("ts1")
    pd.testing.assert_frame_equal(again.to_df(), saved)
    assert again.meta["notes"] == []


def test_recreate_says_when_the_definition_changed_and_keeps_the_saved_one(store):
    saved = store.get_historical_features(entity_df=LABELS, features=FEATURES, save_as="ts2").to_df()
    store.update_feature("half_sum_3d", {"transformation": "sum_3d / 4"}, feature_set="spend")
    again = store.recreate_training_set("ts2")
    pd.testing.assert_frame_equal(again.to_df(), saved)
    assert any("version 2 now" in note and "saved with version 1" in note for note in again.meta["notes"])


def test_recreate_on_the_other_engine_reads_the_pinned_events(store, on_engine):
    saved = store.get_historical_features(entity_df=LABELS, features=FEATURES, save_as="ts3").to_df()
    _late_data_arrives(store)
    other = on_engine(store.settings, on="duckdb" if store.settings.compute_engine == "spark" else "spark")
    try:
        pd.testing.assert_frame_equal(other.recreate_training_set("ts3").to_df(), saved)
    finally:
        other.close()


def test_as_of_a_version_gives_that_versions_windows(store):
    first = store.get_historical_features(entity_df=LABELS, features=FEATURES).to_df()
    _late_data_arrives(store)
    pinned = store.get_historical_features(entity_df=LABELS, features=FEATURES, as_of=0).to_df()
    pd.testing.assert_frame_equal(pinned, first)


def test_save_as_with_as_of_pins_the_events_that_version_read(store):
    """A set saved ``as_of`` an old version copies the events that version's run read, not today's source:
    its windows equal the unsaved ``as_of`` answer, and its re-creation gives them again."""
    first = store.get_historical_features(entity_df=LABELS, features=FEATURES).to_df()
    _late_data_arrives(store)
    saved = store.get_historical_features(entity_df=LABELS, features=FEATURES, as_of=0, save_as="ts4").to_df()
    assert saved.sum_3d.tolist() == [39.0, 39.0, 39.0]  # not 1038.0: the late event came after version 0
    pd.testing.assert_frame_equal(saved, first)
    pd.testing.assert_frame_equal(store.recreate_training_set("ts4").to_df(), saved)


def test_recreate_a_set_with_a_python_feature(settings, on_engine, tmp_path, monkeypatch):
    """Python features come from the offline version the set pinned: re-created equal after the source moved on."""
    import sys
    import textwrap

    (tmp_path / "h30_pyfeatures.py").write_text(textwrap.dedent("""
        def tripled(df):
            return df["amount"] * 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    s = on_engine(settings.with_(python_feature_modules=("h30_pyfeatures",)))
    try:
        source = tmp_path / "source"
        write_file(source, "part-0.parquet", [(1, T0 + i * D + timedelta(hours=12), v)
                                              for i, v in enumerate([10.0, 20.0, 9.0, 10.0, 20.0])])
        s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        definition = body(str(source))
        definition["features"].append({"name": "tripled", "data_type": "float", "python": "h30_pyfeatures:tripled"})
        s.create_feature_set(definition)
        s.materialize("spend", T0, T0 + 5 * D)
        features = FEATURES + ["tripled"]
        saved = s.get_historical_features(entity_df=LABELS, features=features, save_as="py1").to_df()
        assert saved.tripled.tolist() == [30.0, 60.0, 27.0]
        s.source_folder = source
        _late_data_arrives(s)
        pd.testing.assert_frame_equal(s.recreate_training_set("py1").to_df(), saved)
    finally:
        s.close()
        sys.modules.pop("h30_pyfeatures", None)



def test_offline_tables_keep_their_whole_log_so_pinned_versions_stay_readable(store):
    """Delta's writers delete commits older than 30 days (``delta.logRetentionDuration``) at a checkpoint unless the
    table turns it off (``delta.enableExpiredLogCleanup``); a training set pinning an old version could then never be
    read again. Every offline table turns it off, whichever engine and writer made it, and a table made before
    that (here: the property removed) gets it back at its next commit."""
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    uri = table_uri(store.settings, "spend")
    assert DeltaTable(uri).metadata().configuration.get("delta.enableExpiredLogCleanup") == "false"
    DeltaTable(uri).alter.set_table_properties({"delta.enableExpiredLogCleanup": "true"})
    _late_data_arrives(store)
    assert DeltaTable(uri).metadata().configuration.get("delta.enableExpiredLogCleanup") == "false"
