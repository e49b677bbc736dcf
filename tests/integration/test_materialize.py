"""Materialization runs end to end on real Spark: Delta offline store, Redis or embedded online store."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from fstore.core.errors import AlreadyExists, ComputeError, Conflict, InvalidDefinition, NotFound
from fstore.compute.materialize import lock_name
from fstore.registry import runs
from test_materialize_support import (  # noqa: F401 - fixtures
    DAY, FEATURES, T0, T_END, any_online_store, create_set, delta_version, events, expected_online, make_store,
    offline_rows, online_values, oracle, source, store, write_source,
)

pytestmark = pytest.mark.spark


def test_a_run_writes_delta_and_the_online_store(any_online_store, source):
    store = any_online_store
    create_set(store, source)
    run = store.materialize("user_txn", T0, T_END, actor="ann")

    frame = events()
    assert run["status"] == "succeeded" and run["error"] is None and run["kind"] == "full"
    assert run["rows_read"] == len(frame) == run["rows_written"] and run["rows_rejected"] == 0
    assert run["online_rows"] == 3 and run["offline_version"] == delta_version(store)
    engine_stages = {"spark": {"read", "compute_validate"}, "duckdb": {"read_compute", "validate"}}
    assert set(run["stages"]) == engine_stages[store.settings.compute_engine] | {"offline", "online"}
    assert set(run["quality"]) >= set(FEATURES)
    assert run["start"] == "2024-01-01T00:00:00Z" and run["end"] == "2024-01-06T00:00:00Z"
    assert offline_rows(store) == oracle(frame)
    assert online_values(store) == expected_online(frame)
    assert store.get_run(run["id"]) == run
    listed = store.list_runs("user_txn")
    assert listed["total"] == 1 and listed["items"][0]["id"] == run["id"]
    assert audited_runs(store) == [("ann", "user_txn", "ok", run["id"])]


def test_the_watermark_advances_only_forwards(store, source):
    created = create_set(store, source)
    store.materialize("user_txn", T0 + 3 * DAY, T_END)
    store.materialize("user_txn", T0, T0 + DAY)
    with store.transaction() as s:
        assert runs.get_watermark(s, created["id"]) == T_END


def test_a_range_ending_in_the_future_moves_the_watermark_only_to_now(store, source):
    created = create_set(store, source)
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    store.materialize("user_txn", T0, datetime(9999, 12, 31))
    with store.transaction() as s:
        watermark = runs.get_watermark(s, created["id"])
    assert before <= watermark <= datetime.now(timezone.utc).replace(tzinfo=None)
    # so an incremental run still reads what arrives from now on
    assert store.materialize_incremental("user_txn", end=watermark + timedelta(hours=1))["status"] == "succeeded"


def test_a_materialized_feature_keeps_its_type(store, source):
    create_set(store, source)
    store.update_feature("amount_x2", {"data_type": "int"}, feature_set="user_txn")  # nothing stored yet: allowed
    store.update_feature("amount_x2", {"data_type": "float"}, feature_set="user_txn")
    store.materialize("user_txn", T0, T_END)
    with pytest.raises(InvalidDefinition, match="feature amount_x2 is materialized as float in the offline table of "
                                                "user_txn; its type cannot become string") as info:
        store.update_feature("amount_x2", {"data_type": "string"}, feature_set="user_txn")
    assert info.value.field == "data_type"
    assert store.get_feature("amount_x2", feature_set="user_txn")["data_type"] == "float"
    assert store.materialize("user_txn", T0, T_END)["status"] == "succeeded"


def test_a_deleted_set_is_not_served_and_its_name_is_not_reused_over_its_offline_table(any_online_store, source):
    from fstore.storage.online.base import Codec

    store = any_online_store
    create_set(store, source)
    store.materialize("user_txn", T0, T_END)
    codec = Codec.from_version(store.feature_set_version("user_txn"))
    keys = [codec.key_of({"user_id": u}) for u in (1, 2, 3)]
    assert all(store.online.read(codec, keys))
    store.delete_feature_set("user_txn")
    assert store.online.read(codec, keys) == [None, None, None]  # its online values went with it
    with pytest.raises(NotFound):
        store.get_online_features(features=["user_txn:amount_x2"], entities={"user_id": [1]})
    with pytest.raises(AlreadyExists, match="feature set .user_txn. was deleted, and its offline table remains at") as info:
        create_set(store, source)
    assert info.value.field == "name" and delta_version(store, "user_txn") is not None


def test_the_same_range_twice_gives_the_same_table_in_a_new_version(store, source):
    create_set(store, source)
    first = store.materialize("user_txn", T0, T_END)
    rows = offline_rows(store)
    second = store.materialize("user_txn", T0, T_END)
    assert second["offline_version"] > first["offline_version"]
    assert offline_rows(store) == rows == oracle(events())
    # the earlier version stays readable (time travel)
    assert offline_rows(store, version=first["offline_version"]) == rows


def test_a_sub_range_replaces_exactly_its_rows(store, source, tmp_path):
    create_set(store, source)
    store.materialize("user_txn", T0, T_END)
    changed = events()
    changed.loc[changed.user_id == 2, "amount"] *= 10  # the source is corrected everywhere...
    write_source(tmp_path / "source" / "transactions", changed)
    store.materialize("user_txn", T0 + DAY, T0 + 2 * DAY)  # ...but only day 2 is recomputed
    expected = [r for r in oracle(events()) if not T0 + DAY <= r[1] < T0 + 2 * DAY]
    expected += [r for r in oracle(changed) if T0 + DAY <= r[1] < T0 + 2 * DAY]
    assert offline_rows(store) == sorted(expected)


def test_timezone_aware_bounds_are_read_as_utc(store, source):
    create_set(store, source)
    plus2 = timezone(timedelta(hours=2))
    run = store.materialize("user_txn", datetime(2024, 1, 1, 2, tzinfo=plus2), datetime(2024, 1, 6, 2, tzinfo=plus2))
    assert run["start"] == "2024-01-01T00:00:00Z" and run["rows_written"] == len(events())


@pytest.mark.parametrize(("start", "end"), [(T_END, T0), (T0, T0), ("not a time", T_END)])
def test_a_bad_range_is_refused_and_nothing_recorded(store, source, start, end):
    create_set(store, source)
    with pytest.raises(InvalidDefinition) as info:
        store.materialize("user_txn", start, end)
    assert info.value.field in ("start", "end")
    assert store.list_runs()["total"] == 0


def test_an_unknown_feature_set_is_not_found(store):
    with pytest.raises(NotFound):
        store.materialize("nope", T0, T_END)


def test_a_second_run_while_one_runs_is_refused(store, source):
    created = create_set(store, source)
    # another process is running: it holds the set's lock for its recorded run
    with store.transaction() as s:
        other = runs.create_run(s, feature_set_id=created["id"], feature_set_version=1, start=T0, end=T_END,
                                status="running")
    runs.acquire_lock(store.engine, lock_name(created["id"]), other["id"], 60)
    for attempt in (lambda: store.materialize("user_txn", T0, T_END),
                    lambda: store.start_materialization("user_txn", T0, T_END)):
        with pytest.raises(Conflict) as info:
            attempt()
        assert other["id"] in info.value.message and "running since" in info.value.message
    assert store.list_runs()["total"] == 1  # the refused attempts recorded nothing
    runs.release_lock(store.engine, lock_name(created["id"]), other["id"])
    assert store.materialize("user_txn", T0, T_END)["status"] == "succeeded"


def test_two_concurrent_runs_on_postgres_one_is_refused(pg_settings, spark, source):
    from fstore.registry.db import upgrade

    upgrade(pg_settings)
    first, second = make_store(pg_settings, spark), make_store(pg_settings, spark)
    create_set(first, source)
    barrier = threading.Barrier(2)
    outcomes: list = [None, None]

    def go(i, st):
        barrier.wait()
        try:
            outcomes[i] = st.materialize("user_txn", T0, T_END)["status"]
        except Conflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=go, args=(i, st)) for i, st in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.close()
    second.close()
    assert sorted(map(type, outcomes), key=str) == sorted([str, Conflict], key=str)
    assert "already being materialized" in next(o for o in outcomes if isinstance(o, Conflict)).message


def test_validation_fail_policy_fails_the_run_and_writes_nothing(store, tmp_path):
    path = write_source(tmp_path / "src", events())
    create_set(store, path, amount_rules={"max_value": 500, "on_violation": "fail"})
    good = store.materialize("user_txn", T0, T_END)
    before_rows, before_online = offline_rows(store), online_values(store)
    bad = events()
    bad.loc[bad.index[-1], "amount"] = 1000.0  # user 3's last event: amount_x2 = 2000 > 500
    write_source(tmp_path / "src", bad)
    with pytest.raises(ComputeError):
        store.materialize("user_txn", T0, T_END + DAY)
    failed = store.list_runs("user_txn")["items"][0]
    assert failed["status"] == "failed" and failed["error"] and failed["offline_version"] is None
    assert delta_version(store) == good["offline_version"]
    assert offline_rows(store) == before_rows and online_values(store) == before_online
    with store.transaction() as s:
        assert runs.get_watermark(s, store.get_feature_set("user_txn")["id"]) == T_END
    assert runs.lock_holder(store.engine, lock_name(failed["feature_set_id"])) is None


def test_validation_drop_row_policy_counts_rejected_rows(store, tmp_path):
    path = write_source(tmp_path / "src", events())
    create_set(store, path, amount_rules={"max_value": 150, "on_violation": "drop_row"})
    run = store.materialize("user_txn", T0, T_END)
    dropped = [r for r in oracle(events()) if r[2] > 150]  # user 2's 100.0 event (x2 = 200)
    assert run["status"] == "succeeded" and run["rows_rejected"] == len(dropped) == 1
    assert run["rows_written"] == run["rows_read"] - 1
    assert offline_rows(store) == [r for r in oracle(events()) if r[2] <= 150]


def test_a_failing_source_records_a_failed_run(store, tmp_path):
    path = write_source(tmp_path / "src", events())
    create_set(store, path)
    for f in (tmp_path / "src").glob("*.parquet"):
        f.unlink()
    (tmp_path / "src").rmdir()
    with pytest.raises((NotFound, ComputeError)) as info:
        store.materialize("user_txn", T0, T_END)
    run = store.list_runs()["items"][0]
    assert run["status"] == "failed" and run["error"] == info.value.message
    assert "src" in run["error"]
    assert audited_runs(store) == [("", "user_txn", "failed", run["id"])]


def audited_runs(store):
    """The audit log's materialization rows: (actor as recorded, target, outcome, run id)."""
    from fstore.ops.audit import list_audit

    with store.transaction() as s:
        items = list_audit(s, action="materialize")["items"]
    return [(i["actor"] if i["actor"] != "anonymous" else "", i["target"], i["outcome"], i["detail"]["run_id"])
            for i in items]


def test_online_disabled_writes_only_offline(store, source):
    create_set(store, source, online=False)
    run = store.materialize("user_txn", T0, T_END)
    assert run["online_rows"] is None and "online" not in run["stages"]
    assert online_values(store) == {1: None, 2: None, 3: None}
    assert offline_rows(store) == oracle(events())


def test_a_failed_offline_write_reaches_no_online_value(store, source, monkeypatch):
    from fstore.storage import offline
    from fstore.storage import offline_arrow

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(offline, "write_range", fail)
    monkeypatch.setattr(offline_arrow, "write_range_arrow", fail)
    create_set(store, source)
    with pytest.raises(ComputeError, match="OSError: disk full"):
        store.materialize("user_txn", T0, T_END)
    assert store.list_runs("user_txn")["items"][0]["status"] == "failed"
    assert online_values(store) == {1: None, 2: None, 3: None}
    # The DuckDB engine's online rows, made ready during the offline write, are dropped with their thread.
    assert not [t for t in threading.enumerate() if t.name.startswith("fstore-online-prepare-")]


def test_a_set_storing_nothing_is_not_run_and_one_without_offline_data_says_why(store, source):
    import pandas as pd

    create_set(store, source)
    store.update_feature_set("user_txn", {"offline_enabled": False, "online_enabled": False})
    with pytest.raises(InvalidDefinition, match="offline_enabled and online_enabled both false") as info:
        store.materialize("user_txn", T0, T_END)
    assert info.value.field == "offline_enabled" and store.list_runs("user_txn")["total"] == 0
    store.update_feature_set("user_txn", {"online_enabled": True})
    assert store.materialize("user_txn", T0, T_END)["status"] == "succeeded"
    labels = pd.DataFrame({"user_id": [1], "event_timestamp": [T_END]})
    with pytest.raises(NotFound, match="its offline_enabled is false"):
        store.get_historical_features(entity_df=labels, features=["user_txn:amount_x2"]).to_df()


def test_a_pending_run_whose_job_never_started_is_closed_by_the_next_run(store, source):
    from sqlalchemy import update

    from fstore.registry.models import MaterializationRunRow

    created = create_set(store, source)
    with store.transaction() as s:
        stale = runs.create_run(s, feature_set_id=created["id"], feature_set_version=1, start=T0, end=T_END)
        fresh = runs.create_run(s, feature_set_id=created["id"], feature_set_version=1, start=T0, end=T_END)
        s.execute(update(MaterializationRunRow).where(MaterializationRunRow.id == stale["id"])
                  .values(created_at=datetime(2024, 1, 1)))
    assert store.materialize("user_txn", T0, T_END)["status"] == "succeeded"
    closed = store.get_run(stale["id"])
    assert closed["status"] == "failed" and "never started" in closed["error"]
    assert store.get_run(fresh["id"])["status"] == "pending"  # its job may still be starting
