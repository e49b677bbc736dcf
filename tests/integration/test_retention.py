"""Retention (issue #28, part 1): a set's offline rows older than ``retention`` are deleted, on both engines.

The cutoff is ``now - retention``; a row whose event time is exactly the cutoff is KEPT (only rows strictly
older are deleted). Training sets saved before keep re-creating the same frame (their pinned version's files
survive the vacuum), and the run names them.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.core.errors import InvalidDefinition
from test_retrieval import H, T0, create_sets, fill_offline, labels, write_source, events

NOW = datetime(2026, 12, 7, 12, 0, 0)
CUTOFF = T0 + 49 * H  # user 1 has an event exactly here


@pytest.fixture()
def store(on_engine, settings, tmp_path):
    s = on_engine(settings, auto_upgrade=True)
    create_sets(s, write_source(tmp_path / "source", events()))
    fill_offline(s, "user_txn")
    yield s
    s.close()


def _table(store, version=None) -> pd.DataFrame:
    from fstore.storage import offline

    table = DeltaTable(offline.table_uri(store.settings, "user_txn"), version=version)
    return table.to_pandas().sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


def _ts(frame: pd.DataFrame) -> pd.Series:
    ts = pd.to_datetime(frame["event_timestamp"])
    return ts.dt.tz_convert(None) if ts.dt.tz is not None else ts


def test_retention_deletes_exactly_the_older_rows_and_training_sets_still_recreate(store):
    from fstore.storage import offline

    original = store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"],
                                             save_as="before").to_df()
    pinned = store.get_training_set("before")["offline_versions"]["user_txn"]
    fill_offline(store, "user_txn")  # a version pinned by no one, whose files the delete removes
    store.update_feature_set("user_txn", {"retention": int((NOW - CUTOFF).total_seconds())})
    assert store.get_feature_set("user_txn")["retention_seconds"] == int((NOW - CUTOFF).total_seconds())
    full = _table(store)
    older = _ts(full) < CUTOFF
    assert older.sum() > 0 and (~older).sum() > 0 and (_ts(full) == CUTOFF).sum() == 1
    version = offline.current_version(store.settings, "user_txn")

    [dry] = store.apply_retention("user_txn", dry_run=True, now=NOW)
    assert dry["dry_run"] is True and dry["rows_to_delete"] == older.sum() and dry["rows_deleted"] == 0
    assert dry["training_sets"] == [{"name": "before", "version": pinned, "rows_older": int(older.sum())}]
    assert offline.current_version(store.settings, "user_txn") == version
    pd.testing.assert_frame_equal(_table(store), full)

    [done] = store.apply_retention("user_txn", retain_hours=0, now=NOW, actor="ops")
    assert done["rows_deleted"] == older.sum() and done["version_before"] == version < done["version"]
    # The vacuum deleted the files of the version before the delete; the pinned version's stay.
    assert done["training_sets"] == dry["training_sets"] and done["vacuum"]["files"] > 0
    kept = _table(store)
    pd.testing.assert_frame_equal(kept, full[~older].reset_index(drop=True))
    assert _ts(kept).min() == CUTOFF  # the row exactly at the cutoff is kept

    root = offline.table_uri(store.settings, "user_txn")
    assert not all(Path(f).exists() for f in DeltaTable(root, version=version).file_uris())
    assert all(Path(f).exists() for f in DeltaTable(root, version=pinned).file_uris())
    pd.testing.assert_frame_equal(store.recreate_training_set("before").to_df(), original)
    # Historical retrieval of today's data no longer sees the deleted rows.
    today = store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"]).to_df()
    assert today.user_txn__amount_x2.isna().sum() > original.user_txn__amount_x2.isna().sum()

    # Nothing older left: a second run (of every set declaring a retention) deletes nothing.
    [again] = store.apply_retention(None, retain_hours=0, now=NOW)
    assert again["feature_set"] == "user_txn" and again["rows_to_delete"] == again["rows_deleted"] == 0
    pd.testing.assert_frame_equal(_table(store), kept)


def test_a_bad_retention_is_refused_naming_the_field(store):
    with pytest.raises(InvalidDefinition, match="retention") as refused:
        store.update_feature_set("user_txn", {"retention": "forever"})
    assert refused.value.field == "retention"
    with pytest.raises(InvalidDefinition) as refused:
        store.update_feature_set("user_txn", {"retention_seconds": -5})
    assert refused.value.field == "retention_seconds"
    with pytest.raises(InvalidDefinition, match="declares no retention"):
        store.apply_retention("user_txn", now=NOW)
    assert store.apply_retention(now=NOW) == []  # no set declares one
    store.update_feature_set("user_txn", {"retention": "400d"})
    assert store.get_feature_set("user_txn")["retention_seconds"] == 400 * 86400
    store.update_feature_set("user_txn", {"retention": None})
    assert "retention_seconds" not in store.get_feature_set("user_txn")
