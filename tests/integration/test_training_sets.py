"""Training sets: saved with their versions, listed, shown, re-created exactly after the offline store changed (both engines)."""
from __future__ import annotations

import pandas as pd
import pytest

from fstore.ops.audit import list_audit
from fstore.core.errors import AlreadyExists, InvalidDefinition, NotFound
from fstore.store import FeatureStore
from test_retrieval import fill_offline, H, T0, T_END, create_sets, events, labels, write_source

pytestmark = pytest.mark.spark

FEATURES = ["user_txn:amount_x2", "txn_count_2d", "avg_amount_2d", "merchant_amount"]


@pytest.fixture(params=[("sqlite", "spark"), ("postgres", "spark"), ("sqlite", "duckdb")], ids="-".join)
def registry_and_engine(request) -> tuple[str, str]:
    """Both registries on Spark, and the DuckDB engine on SQLite (the registry does not depend on the engine)."""
    return request.param


@pytest.fixture()
def compute_engine(registry_and_engine) -> str:
    return registry_and_engine[1]


@pytest.fixture()
def store(request, registry_and_engine, on_engine, tmp_path):
    settings = request.getfixturevalue("settings" if registry_and_engine[0] == "sqlite" else "pg_settings")
    s = on_engine(settings, auto_upgrade=True)
    create_sets(s, write_source(tmp_path / "source", events()))
    for name in ("user_txn", "merchant_txn"):
        fill_offline(s, name)
    yield s
    s.close()


def test_save_list_show_and_recreate_after_the_offline_store_changed(store, tmp_path):
    entity_rows = labels()
    first = store.get_historical_features(entity_df=entity_rows, features=FEATURES, save_as="churn_2024", actor="ann")
    original = first.to_df()
    saved = store.get_training_set("churn_2024")
    assert saved["name"] == "churn_2024" and saved["entity_count"] == len(entity_rows) and saved["created_by"] == "ann"
    assert saved["status"] == "ready"
    by_set = {g["feature_set"]: g for g in saved["groups"]}
    assert set(by_set) == {"user_txn", "merchant_txn"}
    assert by_set["user_txn"]["offline_version"] == saved["offline_versions"]["user_txn"] is not None
    assert by_set["user_txn"]["feature_versions"]["txn_count_2d"] == 1
    assert saved["output_path"].endswith("training_sets/churn_2024/data")
    written = pd.read_parquet(saved["output_path"])
    assert len(written) == len(entity_rows) and list(written.columns) == list(original.columns)
    listed = store.list_training_sets()
    assert listed["total"] == 1 and listed["items"][0]["name"] == "churn_2024"
    with store.transaction() as s:  # saving is audited, with what it read
        trail = list_audit(s, action="save_training_set")["items"]
    assert [(r["actor"], r["target"], r["outcome"]) for r in trail] == [("ann", "churn_2024", "ok")]
    assert trail[0]["detail"]["entity_count"] == len(entity_rows)
    assert trail[0]["detail"]["offline_versions"] == saved["offline_versions"]

    # The offline store moves on: amounts are corrected and both sets re-materialized.
    changed = events()
    changed["amount"] = changed["amount"] + 1000
    write_source(tmp_path / "source", changed)
    for name in ("user_txn", "merchant_txn"):
        fill_offline(store, name)
    assert not store.get_historical_features(entity_df=entity_rows, features=["user_txn:amount_x2"]).to_df() \
        .user_txn__amount_x2.equals(original.user_txn__amount_x2)

    again = store.recreate_training_set("churn_2024").to_df()
    # Row features come from the pinned Delta versions: identical.
    pd.testing.assert_frame_equal(again[["user_id", "merchant_id", "event_timestamp", "note", "user_txn__amount_x2",
                                         "merchant_amount"]],
                                  original[["user_id", "merchant_id", "event_timestamp", "note", "user_txn__amount_x2",
                                            "merchant_amount"]])
    assert list(again.columns) == list(original.columns)


def test_recreate_is_identical_when_nothing_changed(store, on_engine):
    entity_rows = labels()
    original = store.get_historical_features(entity_df=entity_rows, features=FEATURES, save_as="same").to_df()
    pd.testing.assert_frame_equal(store.recreate_training_set("same").to_df(), original)
    # The other engine re-creates it from the same folders and record, to the same frame.
    other = on_engine(store.settings, on="duckdb" if store.settings.compute_engine == "spark" else "spark")
    pd.testing.assert_frame_equal(other.recreate_training_set("same").to_df(), original)
    other.close()


def test_a_training_set_of_a_deleted_feature_set_says_so(store):
    store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"], save_as="orphan").to_df()
    store.delete_feature_set("user_txn")
    with pytest.raises(NotFound, match="training set orphan reads version 1 of feature set user_txn, which no longer "
                                       r"exists \(the set was deleted\)"):
        store.recreate_training_set("orphan")


def test_names_are_checked_before_any_work(store):
    entity_rows = pd.DataFrame({"user_id": [1], "merchant_id": [10], "ts": [T0 + H]})
    store.get_historical_features(entity_df=entity_rows, features=FEATURES, save_as="taken")
    with pytest.raises(AlreadyExists):
        store.get_historical_features(entity_df=entity_rows, features=FEATURES, save_as="taken")
    with pytest.raises(InvalidDefinition) as info:
        store.get_historical_features(entity_df=entity_rows, features=FEATURES, save_as="no spaces")
    assert info.value.field == "save_as"
    assert store.list_training_sets()["total"] == 1
    with pytest.raises(NotFound):
        store.get_training_set("missing")
    with pytest.raises(NotFound):
        store.recreate_training_set("missing")


def _data_files(root) -> set:
    from pathlib import Path

    return {p for p in Path(root).rglob("*.parquet") if "_delta_log" not in p.parts and "_staging" not in p.parts}


def test_vacuum_keeps_what_training_sets_and_the_current_version_read_and_deletes_the_rest(store):
    from pathlib import Path

    from deltalake import DeltaTable

    from fstore.storage import offline
    from fstore.core.errors import Conflict
    from fstore.compute.materialize import lock_name
    from fstore.registry import runs

    original = store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"],
                                             save_as="pinned").to_df()
    pinned = store.get_training_set("pinned")["offline_versions"]["user_txn"]
    fill_offline(store, "user_txn")  # a new version replacing every file of the pinned one
    unpinned = offline.current_version(store.settings, "user_txn")
    fill_offline(store, "user_txn")  # and again: the files of `unpinned` are now read by no one
    root = offline.table_uri(store.settings, "user_txn")
    before = _data_files(root)

    dead_run = Path(root) / "_staging" / "20260101T000000-deadbeef0000" / "event_date=2024-01-05"
    dead_run.mkdir(parents=True)
    (dead_run / "part-00000.parquet").write_bytes(b"written by a run killed before its commit")

    dry = store.vacuum_offline("user_txn", retain_hours=0, dry_run=True)
    assert dry["files"] > 1 and dry["dry_run"] is True and _data_files(root) == before and dead_run.exists()
    done = store.vacuum_offline("user_txn", retain_hours=0, actor="ops")
    assert done["files"] == dry["files"] and done["kept_versions"] == [pinned]
    assert len(_data_files(root)) == len(before) - (done["files"] - 1)
    assert not (Path(root) / "_staging" / "20260101T000000-deadbeef0000").exists()

    assert all(Path(f).exists() for f in DeltaTable(root).file_uris())  # the current version is whole
    assert all(Path(f).exists() for f in DeltaTable(root, version=pinned).file_uris())
    assert not all(Path(f).exists() for f in DeltaTable(root, version=unpinned).file_uris())
    pd.testing.assert_frame_equal(store.recreate_training_set("pinned").to_df(), original)
    # Within the default retention nothing just removed is touched.
    assert store.vacuum_offline("user_txn")["files"] == 0

    with store.transaction() as s:
        lock = lock_name(runs.feature_set_row(s, "user_txn").id)
    assert runs.try_acquire_lock(store.engine, lock, "a-running-run", 60) is None
    try:
        with pytest.raises(Conflict, match="being materialized"):
            store.vacuum_offline("user_txn", retain_hours=0)
    finally:
        runs.release_lock(store.engine, lock, "a-running-run")
    with pytest.raises(NotFound):
        store.vacuum_offline("no_such_set")
    with pytest.raises(InvalidDefinition, match="retain_hours"):
        store.vacuum_offline("user_txn", retain_hours=-1)
