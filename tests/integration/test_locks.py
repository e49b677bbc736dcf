"""The registry lease lock and run records, on SQLite and on the real PostgreSQL.

The lock must hold across processes and machines: two engines (separate
connection pools) and a separate OS process race for it here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session

from fstore.core.errors import Conflict, InvalidDefinition, NotFound
from fstore.registry import runs
from fstore.registry.db import make_engine, upgrade
from fstore.registry.models import FeatureSetRow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def engine(any_registry_settings):
    upgrade(any_registry_settings)
    engine = make_engine(any_registry_settings)
    yield engine
    engine.dispose()


def _feature_set(engine, name: str = "user_stats") -> int:
    with Session(engine) as s, s.begin():
        row = FeatureSetRow(name=name, spec={"name": name}, version=1)
        s.add(row)
        s.flush()
        return row.id


def test_only_one_of_many_engines_gets_the_lock(any_registry_settings, engine):
    engines = [make_engine(any_registry_settings) for _ in range(6)]
    barrier = threading.Barrier(len(engines))
    results: list[object] = [None] * len(engines)

    def attempt(i: int) -> None:
        barrier.wait()
        results[i] = runs.try_acquire_lock(engines[i], "materialize:1", f"owner-{i}", 60)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1
    holder = runs.lock_holder(engine, "materialize:1")
    assert holder["owner"] == f"owner-{winners[0]}"
    assert all(r["owner"] == holder["owner"] for r in results if r is not None)


def test_conflict_names_the_holder_and_since_when(engine):
    runs.acquire_lock(engine, "materialize:7", "run-a", 60)
    with pytest.raises(Conflict) as info:
        runs.acquire_lock(engine, "materialize:7", "run-b", 60)
    assert "run-a" in info.value.message and "since" in info.value.message
    # a non-holder cannot release or extend it; the holder can
    assert not runs.release_lock(engine, "materialize:7", "run-b")
    assert not runs.heartbeat_lock(engine, "materialize:7", "run-b", 60)
    assert runs.heartbeat_lock(engine, "materialize:7", "run-a", 60)
    assert runs.release_lock(engine, "materialize:7", "run-a")
    assert runs.acquire_lock(engine, "materialize:7", "run-b", 60) is None


def test_an_expired_lease_is_taken_over_once(engine):
    runs.acquire_lock(engine, "materialize:3", "dead", 0.2)
    time.sleep(0.4)
    taken = runs.acquire_lock(engine, "materialize:3", "alive", 60)
    assert taken["taken_over"] and taken["owner"] == "dead"
    with pytest.raises(Conflict):
        runs.acquire_lock(engine, "materialize:3", "third", 60)
    # the dead holder's late release does not free the new holder's lock
    assert not runs.release_lock(engine, "materialize:3", "dead")
    assert runs.lock_holder(engine, "materialize:3")["owner"] == "alive"


def test_lock_inside_a_callers_session_does_not_poison_its_transaction(engine):
    fs_id = _feature_set(engine)
    runs.acquire_lock(engine, "materialize:9", "other", 60)
    with Session(engine) as s, s.begin():
        assert runs.try_acquire_lock(s, "materialize:9", "mine", 60)["owner"] == "other"
        run = runs.create_run(s, feature_set_id=fs_id, feature_set_version=1,
                              start=datetime(2024, 1, 1), end=datetime(2024, 1, 2))
    with Session(engine) as s:
        assert runs.get_run(s, run["id"])["status"] == "pending"


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from fstore.core.settings import Settings
    from fstore.registry.db import make_engine
    from fstore.registry import runs
    engine = make_engine(Settings.from_env({{"DATABASE_URL": {url!r}, "STORAGE_PATH": {path!r}}}))
    runs.acquire_lock(engine, "materialize:5", "process-1", {ttl})
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_lock_held_by_another_process_is_refused_until_it_dies_and_expires(any_registry_settings, engine, tmp_path):
    code = HOLDER.format(repo=REPO, url=any_registry_settings.database_url, path=str(tmp_path / "p"), ttl=1.5)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Conflict) as info:
            runs.acquire_lock(engine, "materialize:5", "process-2", 60)
        assert "process-1" in info.value.message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    time.sleep(1.6)  # the killed holder never released: its lease must run out
    assert runs.acquire_lock(engine, "materialize:5", "process-2", 60)["owner"] == "process-1"


def test_run_lifecycle_and_listing(engine):
    fs_id = _feature_set(engine, "a")
    other = _feature_set(engine, "b")
    start = datetime(2024, 3, 1, tzinfo=timezone(timedelta(hours=2)))
    with Session(engine) as s, s.begin():
        run = runs.create_run(s, feature_set_id=fs_id, feature_set_version=2, start=start,
                              end=datetime(2024, 3, 2), kind="full", actor="ann")
        runs.create_run(s, feature_set_id=other, feature_set_version=1, start=datetime(2024, 3, 1),
                        end=datetime(2024, 3, 2))
    assert run["start"] == "2024-02-29T22:00:00Z" and run["status"] == "pending" and run["feature_set"] == "a"
    with Session(engine) as s, s.begin():
        runs.start_run(s, run["id"])
        with pytest.raises(Conflict):
            runs.start_run(s, run["id"])
        done = runs.finish_run(s, run["id"], status="succeeded", rows_read=10, rows_written=9, rows_rejected=1,
                               online_rows=3, offline_version=4, stages={"read": 0.1}, quality={"x": {"count": 9}})
    assert done["status"] == "succeeded" and done["offline_version"] == 4 and done["duration_s"] >= 0
    with Session(engine) as s:
        assert runs.list_runs(s, None, limit=10, offset=0)["total"] == 2
        listed = runs.list_runs(s, "a", limit=10, offset=0)
        assert [r["id"] for r in listed["items"]] == [run["id"]] and listed["total"] == 1
        assert runs.list_runs(s, str(fs_id), limit=1, offset=1)["items"] == []
        with pytest.raises(NotFound):
            runs.get_run(s, "nope")
        with pytest.raises(NotFound):
            runs.list_runs(s, "missing", limit=10, offset=0)
        with pytest.raises(InvalidDefinition):
            runs.list_runs(s, None, limit=0, offset=0)


def test_a_reversed_range_is_refused_and_nothing_is_recorded(engine):
    fs_id = _feature_set(engine)
    with Session(engine) as s, s.begin():
        with pytest.raises(InvalidDefinition) as info:
            runs.create_run(s, feature_set_id=fs_id, feature_set_version=1,
                            start=datetime(2024, 1, 2), end=datetime(2024, 1, 2))
        assert info.value.field == "start"
        with pytest.raises(InvalidDefinition):
            runs.to_utc("yesterday")
    with Session(engine) as s:
        assert runs.list_runs(s, None, limit=10, offset=0)["total"] == 0


def test_watermark_never_moves_backwards(engine):
    fs_id = _feature_set(engine)
    with Session(engine) as s, s.begin():
        assert runs.advance_watermark(s, fs_id, datetime(2024, 1, 10))
        assert not runs.advance_watermark(s, fs_id, datetime(2024, 1, 5))
        assert runs.get_watermark(s, fs_id) == datetime(2024, 1, 10)


def test_compare_and_set_lets_one_claimant_win(engine):
    assert runs.compare_and_set(engine, "schedule:1", None, "2024-01-01T00:00:00")
    assert not runs.compare_and_set(engine, "schedule:1", None, "2024-01-01T00:00:00")
    assert runs.compare_and_set(engine, "schedule:1", "2024-01-01T00:00:00", "2024-01-01T01:00:00")
    assert not runs.compare_and_set(engine, "schedule:1", "2024-01-01T00:00:00", "2024-01-01T02:00:00")


def test_a_batch_job_whose_process_died_is_reported_failed(engine):
    """A running job is alive while its lease is; a pending job nobody took up fails after one lease."""
    from sqlalchemy import update

    from fstore.registry import jobs
    from fstore.registry.models import JobRow

    with Session(engine) as s, s.begin():
        alive = jobs.create_job(s, "batch_retrieval", {"n": 1})["id"]
        dead = jobs.create_job(s, "batch_retrieval", {"n": 2})["id"]
        stuck = jobs.create_job(s, "batch_retrieval", {"n": 3})["id"]
    for job_id in (alive, dead):
        assert runs.try_acquire_lock(engine, jobs.lease_name(job_id), job_id, 60) is None
        with Session(engine) as s, s.begin():
            jobs.update_job(s, job_id, status="running")
    # The dead job's process stopped renewing: move its lease into the past, as time would.
    with Session(engine) as s, s.begin():
        s.execute(update(runs.LockRow).where(runs.LockRow.name == jobs.lease_name(dead))
                  .values(expires_at=datetime(2000, 1, 1)))
        s.execute(update(JobRow).where(JobRow.id == stuck).values(created_at=datetime(2000, 1, 1)))

    with Session(engine) as s, s.begin():
        assert jobs.get_job(s, alive)["status"] == "running"
        gone = jobs.get_job(s, dead)
        assert gone["status"] == "failed" and gone["error"].startswith("abandoned: its process stopped renewing")
        assert gone["finished_at"] is not None
        listed = {j["id"]: j for j in jobs.list_jobs(s)["items"]}
        assert listed[stuck]["status"] == "failed" and listed[stuck]["error"].startswith("never started")
    with Session(engine) as s:  # recorded, not only reported
        assert s.get(JobRow, dead).status == "failed" and s.get(JobRow, alive).status == "running"


def test_keep_lease_renews_until_the_block_ends(engine):
    assert runs.try_acquire_lock(engine, "job:x", "x", 0.6) is None
    with runs.keep_lease(engine, "job:x", "x", 0.6) as lost:
        time.sleep(1.5)  # longer than the lease: only the renewals keep it
        holder = runs.lock_holder(engine, "job:x")
        assert holder is not None and not holder["expired"] and not lost.is_set()
    assert runs.release_lock(engine, "job:x", "x")
