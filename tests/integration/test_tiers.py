"""Tiers (issue #28, part 2): old offline days move to a cold Delta table; every reader sees the same rows.

A set declaring ``cold_after`` has its whole days older than that moved from the warm table (STORAGE_PATH)
to the cold one (COLD_STORAGE_PATH), on both engines: historical retrieval before and after a move gives the
same frame, and a training set saved before the move re-creates the same bytes. A move that dies between its
two commits leaves each row readable once, and the next apply finishes it.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.core.errors import InvalidDefinition
from test_retrieval import H, T0, create_sets, events, fill_offline, labels, write_source

NOW = datetime(2026, 12, 7, 12, 0, 0)
BOUNDARY = T0 + 72 * H  # days before 2024-01-04 are cold
COLD_AFTER = int((NOW - BOUNDARY).total_seconds())  # boundary_for(NOW) is the start of BOUNDARY's day
FEATURES = ["user_txn:amount_x2", "user_txn:txn_count_2d", "user_txn:avg_amount_2d"]


@pytest.fixture()
def store(on_engine, settings, tmp_path):
    s = on_engine(settings.with_(cold_storage_path=str(tmp_path / "cold")), auto_upgrade=True)
    create_sets(s, write_source(tmp_path / "source", events()))
    fill_offline(s, "user_txn")
    s.update_feature_set("user_txn", {"cold_after": COLD_AFTER})
    yield s
    s.close()


def _rows(uri: str, version: int | None = None) -> pd.DataFrame:
    frame = DeltaTable(uri, version=version).to_pandas()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.tz_convert(None)
    columns = ["user_id", "event_timestamp", "amount_x2", "txn_count_2d"]
    return frame[columns].sort_values(columns[:2]).reset_index(drop=True)


def _uris(store) -> tuple[str, str]:
    from fstore.storage import cold, offline

    return offline.table_uri(store.settings, "user_txn"), cold.cold_uri(store.settings, "user_txn")


def _digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).values.tobytes()).hexdigest()


def _retrieve(store, save_as: str | None = None) -> pd.DataFrame:
    return store.get_historical_features(entity_df=labels(), features=FEATURES, save_as=save_as).to_df()


def test_retrieval_and_training_sets_read_across_warm_and_cold_identically(store):
    warm_uri, cold_uri = _uris(store)
    everything = _rows(warm_uri)
    before = _retrieve(store, save_as="before")
    assert before.user_txn__amount_x2.notna().sum() > 0

    [dry] = store.apply_tiers("user_txn", dry_run=True, now=NOW)
    older = everything.event_timestamp < BOUNDARY
    assert dry["rows_to_move"] == older.sum() > 0 and (~older).sum() > 0 and dry["boundary"].startswith("2024-01-04")
    [moved] = store.apply_tiers("user_txn", now=NOW, actor="ops")
    assert moved["rows_moved"] == older.sum()
    # Warm's log keeps the commit naming the cold version (no expired-log cleanup on a tiered table).
    assert DeltaTable(warm_uri).metadata().configuration["delta.enableExpiredLogCleanup"] == "false"
    # Exactly the old days left warm, for the cold table; together the same rows.
    pd.testing.assert_frame_equal(_rows(warm_uri), everything[~older].reset_index(drop=True))
    pd.testing.assert_frame_equal(_rows(cold_uri), everything[older].reset_index(drop=True))

    after = _retrieve(store, save_as="after")
    pd.testing.assert_frame_equal(after, before)
    assert _digest(store.recreate_training_set("before").to_df()) == _digest(before)
    assert _digest(store.recreate_training_set("after").to_df()) == _digest(before)
    # An as_of of the version before the move reads it whole (warm only), the one after it across both tiers.
    old = store.get_historical_features(entity_df=labels(), features=FEATURES, as_of=moved["warm_version_before"])
    new = store.get_historical_features(entity_df=labels(), features=FEATURES, as_of=moved["warm_version"])
    pd.testing.assert_frame_equal(old.to_df(), before)
    pd.testing.assert_frame_equal(new.to_df(), before)

    # Nothing older left: a second apply moves nothing and makes no commit.
    [again] = store.apply_tiers(None, now=NOW)
    assert again["rows_moved"] == 0 and again["warm_version"] == moved["warm_version"]
    # A new run of the whole range lands in warm; a later apply moves its old days again, still no doubles.
    fill_offline(store, "user_txn", BOUNDARY, BOUNDARY + 24 * H)
    [later] = store.apply_tiers("user_txn", now=NOW + timedelta(days=1))
    assert later["rows_moved"] == (everything.event_timestamp.between(BOUNDARY, BOUNDARY + 24 * H, "left")).sum()
    pd.testing.assert_frame_equal(_retrieve(store), before)


def test_a_move_that_dies_between_its_two_commits_neither_loses_nor_doubles_rows(store):
    from fstore.storage import cold

    warm_uri, cold_uri = _uris(store)
    everything = _rows(warm_uri)
    before = _retrieve(store)
    # The first commit of a move only (cold append), as when the process is killed before the warm delete.
    half = cold.copy_older(store.settings, "user_txn", BOUNDARY)
    assert half["rows_moved"] > 0 and len(_rows(cold_uri)) == half["rows_moved"]
    pd.testing.assert_frame_equal(_rows(warm_uri), everything)  # warm still holds them: read from there, once
    pd.testing.assert_frame_equal(_retrieve(store), before)

    [done] = store.apply_tiers("user_txn", now=NOW)
    assert done["recovered"] == {"from_version": half["cold_version"], "to_version": None}
    assert done["rows_moved"] == half["rows_moved"]
    both = pd.concat([_rows(warm_uri), _rows(cold_uri)]).sort_values(["user_id", "event_timestamp"])
    pd.testing.assert_frame_equal(both.reset_index(drop=True), everything)  # each row once, in one tier
    pd.testing.assert_frame_equal(_retrieve(store), before)

    # A second half move on top of a finished one is undone back to the version warm names.
    fill_offline(store, "user_txn", BOUNDARY, BOUNDARY + 24 * H)
    named = done["cold_version"]
    cold.copy_older(store.settings, "user_txn", BOUNDARY + 24 * H)
    pd.testing.assert_frame_equal(_retrieve(store), before)
    [again] = store.apply_tiers("user_txn", now=NOW + timedelta(days=1))
    assert again["recovered"]["to_version"] == named and again["rows_moved"] > 0
    pd.testing.assert_frame_equal(_retrieve(store), before)


def test_retention_cuts_both_tiers(store):
    warm_uri, cold_uri = _uris(store)
    everything = _rows(warm_uri)
    store.apply_tiers("user_txn", now=NOW)
    cutoff = T0 + 49 * H
    store.update_feature_set("user_txn", {"retention": int((NOW - cutoff).total_seconds())})
    [dry] = store.apply_retention("user_txn", dry_run=True, now=NOW)
    assert dry["rows_to_delete"] == (everything.event_timestamp < cutoff).sum() > 0
    [done] = store.apply_retention("user_txn", now=NOW, retain_hours=0)
    assert done["rows_deleted"] == dry["rows_to_delete"]
    kept = pd.concat([_rows(warm_uri), _rows(cold_uri)]).sort_values(["user_id", "event_timestamp"])
    pd.testing.assert_frame_equal(kept.reset_index(drop=True),
                                  everything[everything.event_timestamp >= cutoff].reset_index(drop=True))


def test_tiers_are_refused_without_a_cold_path_or_a_cold_after(on_engine, settings, tmp_path):
    s = on_engine(settings, auto_upgrade=True)
    try:
        create_sets(s, write_source(tmp_path / "source", events()))
        with pytest.raises(InvalidDefinition, match="declares no cold_after") as err:
            s.apply_tiers("user_txn")
        assert err.value.field == "cold_after"
        s.update_feature_set("user_txn", {"cold_after": "90d"})
        assert s.get_feature_set("user_txn")["cold_after_seconds"] == 90 * 86400
        with pytest.raises(InvalidDefinition, match="COLD_STORAGE_PATH"):
            s.apply_tiers("user_txn")
    finally:
        s.close()


def test_the_cold_store_is_no_way_around_source_confinement(store, tmp_path):
    """Cold tables are fstore's own: a source may not read their log, an output may not be written there."""
    from fstore.definitions.guard import check_read_path, check_write_path

    store.apply_tiers("user_txn", now=NOW)
    confined = store.settings.with_(source_roots=(str(tmp_path),))
    cold_root = store.settings.cold_storage_path
    with pytest.raises(InvalidDefinition, match="internal files"):
        check_read_path(confined, f"{cold_root}/user_txn/_delta_log", field="source.path")
    with pytest.raises(InvalidDefinition, match="the cold offline store"):
        check_write_path(confined, f"{cold_root}/user_txn/out", field="output_path")
    # Outside SOURCE_ROOTS the cold tier is refused as any other place is.
    elsewhere = store.settings.with_(source_roots=(str(tmp_path / "source"),))
    with pytest.raises(InvalidDefinition, match="SOURCE_ROOTS"):
        check_read_path(elsewhere, f"{cold_root}/user_txn", field="source.path")


def test_the_cli_applies_and_dry_runs(store):
    import json

    from click.testing import CliRunner

    from fstore.cli import main

    warm_uri, cold_uri = _uris(store)
    everything = _rows(warm_uri)
    env = {"STORAGE_PATH": store.settings.storage_path, "DATABASE_URL": store.settings.database_url,
           "SOURCE_ROOTS": ",".join(store.settings.allowed_source_roots), "COMPUTE_ENGINE": "duckdb",
           "COLD_STORAGE_PATH": store.settings.cold_storage_path}
    dry = CliRunner().invoke(main, ["tiers", "apply", "user_txn", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    [report] = json.loads(dry.output)
    # By the real clock (later than NOW), at least the days before BOUNDARY are past cold_after.
    assert report["dry_run"] is True and report["rows_to_move"] >= (everything.event_timestamp < BOUNDARY).sum() > 0
    pd.testing.assert_frame_equal(_rows(warm_uri), everything)
    text = CliRunner().invoke(main, ["tiers", "apply"], env=env)  # every set declaring cold_after
    assert text.exit_code == 0 and f"user_txn: moved {report['rows_to_move']} row(s)" in text.output, text.output
    assert len(_rows(cold_uri)) == report["rows_to_move"]
    unset = CliRunner().invoke(main, ["tiers", "apply", "user_txn"], env={**env, "COLD_STORAGE_PATH": ""})
    assert unset.exit_code != 0 and "COLD_STORAGE_PATH" in unset.output


def test_a_run_rewriting_days_already_cold_is_refused(store):
    """Re-materializing cold days would leave their cold copies beside the new warm rows (read twice): refused."""
    from fstore.core.errors import Conflict

    warm_uri, _ = _uris(store)
    store.apply_tiers("user_txn", now=NOW)
    warm = _rows(warm_uri)
    with pytest.raises(Conflict, match="overlaps days already moved to cold storage"):
        fill_offline(store, "user_txn")
    pd.testing.assert_frame_equal(_rows(warm_uri), warm)
    fill_offline(store, "user_txn", BOUNDARY)  # from the first warm day on: allowed
