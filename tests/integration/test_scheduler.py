"""The cron scheduler: due sets run incrementally, missed ticks caught up once, failures survived,
one run per tick even with two schedulers on one PostgreSQL registry."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.registry import runs
from fstore.registry.db import upgrade
from fstore.compute.scheduler import claim_name, claim_tick, latest_tick, run_due, run_scheduler
from test_materialize_support import (  # noqa: F401 - fixtures
    T0, T_END, create_set, events, make_store, offline_rows, oracle, source, store, write_source,
)

pytestmark = pytest.mark.spark

HOURLY = "0 * * * *"


def test_latest_tick():
    assert latest_tick(HOURLY, datetime(2024, 1, 6, 0, 30)) == datetime(2024, 1, 6, 0, 0)
    assert latest_tick(HOURLY, datetime(2024, 1, 6, 1, 0)) == datetime(2024, 1, 6, 1, 0)
    assert latest_tick("*/15 * * * *", datetime(2024, 1, 6, 1, 14, 59)) == datetime(2024, 1, 6, 1, 0)


def test_a_missed_stretch_is_caught_up_once(store, source):
    created = create_set(store, source, schedule=HOURLY)
    create_set(store, source, name="unscheduled")
    # the scheduler last ran ten hours of ticks ago
    assert claim_tick(store, created["id"], datetime(2024, 1, 5, 14))
    now = datetime(2024, 1, 6, 0, 30)
    outcomes = run_due(store, now=now)
    assert [(o["feature_set"], o["status"], o["tick"]) for o in outcomes] == [
        ("user_txn", "succeeded", "2024-01-06T00:00:00Z")]
    made = store.list_runs("user_txn")["items"]
    assert len(made) == 1 and made[0]["kind"] == "scheduled" and made[0]["end"] == "2024-01-06T00:30:00Z"
    assert offline_rows(store) == oracle(events())
    assert store.list_runs("unscheduled")["total"] == 0

    assert run_due(store, now=now + timedelta(minutes=20)) == []  # same tick: nothing to do
    later = run_due(store, now=datetime(2024, 1, 6, 1, 5))
    assert [(o["status"], o["tick"]) for o in later] == [("succeeded", "2024-01-06T01:00:00Z")]
    assert store.list_runs("user_txn")["items"][0]["start"] == "2024-01-06T00:30:00Z"


def test_a_failing_set_is_recorded_and_the_others_still_run(store, source, tmp_path):
    broken_path = write_source(tmp_path / "broken", events())
    create_set(store, broken_path, name="a_broken", schedule=HOURLY)
    create_set(store, source, name="b_fine", schedule=HOURLY)
    write_source(tmp_path / "broken", events().rename(columns={"amount": "amt"}))  # its source changed shape
    now = datetime(2024, 1, 6, 0, 30)
    outcomes = {o["feature_set"]: o for o in run_due(store, now=now)}
    assert outcomes["a_broken"]["status"] == "failed" and "amount" in outcomes["a_broken"]["error"]
    assert outcomes["b_fine"]["status"] == "succeeded"
    failed = store.list_runs("a_broken")["items"]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and failed[0]["error"]


def test_two_schedulers_on_postgres_run_a_tick_once(pg_settings, spark, source):
    upgrade(pg_settings)
    schedulers = [make_store(pg_settings, spark) for _ in range(2)]
    create_set(schedulers[0], source, schedule=HOURLY)
    barrier = threading.Barrier(2)
    outcomes: list = [None, None]

    def go(i: int) -> None:
        barrier.wait()
        outcomes[i] = run_due(schedulers[i], now=datetime(2024, 1, 6, 0, 30))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(len(o) for o in outcomes) == [0, 1]
        listed = schedulers[0].list_runs("user_txn")
        assert listed["total"] == 1 and listed["items"][0]["status"] == "succeeded"
        holder = runs.lock_holder(schedulers[0].engine, claim_name(listed["items"][0]["feature_set_id"]))
        assert holder["owner"] == "2024-01-06T00:00:00Z"
    finally:
        for s in schedulers:
            s.close()


def test_run_scheduler_once_runs_what_is_due_now(store, source):
    create_set(store, source, schedule="0 0 1 1 *")  # yearly: this year's tick was never run
    outcomes = run_scheduler(store, once=True)
    assert [o["status"] for o in outcomes] == ["succeeded"]
    assert offline_rows(store) == oracle(events())
    assert run_scheduler(store, once=True) == []  # the same tick is not run twice


def test_run_scheduler_stops_when_asked(store, source):
    stop = threading.Event()
    stop.set()
    assert run_scheduler(store, poll_seconds=1, stop=stop) == []
    with pytest.raises(InvalidDefinition):
        run_scheduler(store, once=True, poll_seconds=0)


def test_a_scheduled_run_applies_the_sets_retention_after_it(store, source):
    """Retention (issue #28): rows older than now - retention are deleted after the scheduled run commits."""
    from fstore.registry.models import utcnow

    created = create_set(store, source, schedule=HOURLY)
    cutoff = T0 + timedelta(days=2)  # between events: seconds passing before the run move no row across it
    store.update_feature_set("user_txn", {"retention": int((utcnow() - cutoff).total_seconds())})
    assert claim_tick(store, created["id"], datetime(2024, 1, 5, 14))
    [outcome] = run_due(store, now=datetime(2024, 1, 6, 0, 30))
    assert outcome["status"] == "succeeded" and "error" not in outcome["retention"]
    expected = [r for r in oracle(events()) if r[1] >= cutoff]
    assert outcome["retention"]["rows_deleted"] == len(oracle(events())) - len(expected) > 0
    assert offline_rows(store) == expected


def test_a_scheduled_run_moves_the_sets_old_days_to_cold_storage_after_it(settings, spark, source, tmp_path):
    """Tiers (issue #28): with COLD_STORAGE_PATH set, a set's days older than cold_after move after its run,
    and retrieval's rows do not change."""
    from fstore.registry.models import utcnow

    s = make_store(settings.with_(compute_engine="duckdb", cold_storage_path=str(tmp_path / "cold")), spark)
    try:
        created = create_set(s, source, schedule=HOURLY)
        boundary = T0 + timedelta(days=2)  # a day's start: the days before it move
        s.update_feature_set("user_txn", {"cold_after": int((utcnow() - boundary).total_seconds())})
        assert claim_tick(s, created["id"], datetime(2024, 1, 5, 14))
        [outcome] = run_due(s, now=datetime(2024, 1, 6, 0, 30))
        assert outcome["status"] == "succeeded" and "error" not in outcome["tiers"], outcome
        moved = len([r for r in oracle(events()) if r[1] < boundary])
        assert outcome["tiers"]["rows_moved"] == moved > 0 and outcome["tiers"]["boundary"] == "2024-01-03T00:00:00Z"
        assert len(offline_rows(s)) == len(oracle(events())) - moved  # what is left warm
    finally:
        s.close()
