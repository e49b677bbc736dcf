"""A run clears the staged files of dead runs (any set's) and never those of a run that is alive.

A dead run's staging folder is made as a run killed before its commit leaves it (files under
``_staging/<write>/event_date=…/``); "alive" is a set whose lock a live lease holds.
(The full-disk case, where this matters, is tests/load/test_fault_disk_full.py.)
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fstore.compute.materialize import lock_name
from fstore.storage.offline import table_uri
from fstore.registry import runs
from fstore.store import FeatureStore
from test_materialize_support import T0, T_END, create_set, events, write_source  # noqa: F401


def _dead_write(store: FeatureStore, name: str) -> Path:
    folder = Path(table_uri(store.settings, name)) / "_staging" / "20240101T000000-0123456789ab"
    (folder / "event_date=2024-01-02").mkdir(parents=True)
    (folder / "event_date=2024-01-02" / "part-00000-dead.c000.snappy.parquet").write_bytes(b"PAR1" * 100)
    return folder


@pytest.fixture()
def store(settings, tmp_path):
    s = FeatureStore(settings.with_(compute_engine="duckdb"))
    yield s
    s.close()


def test_a_run_deletes_dead_runs_staging_and_keeps_a_live_runs(store, tmp_path):
    source = write_source(tmp_path / "source", events())
    for name in ("own", "idle", "expired", "busy"):
        create_set(store, source, name=name, online=False)
        store.materialize(name, T0, T_END)  # each set has a table folder
    dead = {name: _dead_write(store, name) for name in ("own", "idle", "expired", "busy")}
    with store.transaction() as s:
        ids = {name: runs.feature_set_row(s, name).id for name in dead}
    runs.acquire_lock(store.engine, lock_name(ids["busy"]), "a-live-run", ttl=120)
    runs.acquire_lock(store.engine, lock_name(ids["expired"]), "a-dead-run", ttl=0.001)

    assert store.materialize("own", T0, T_END)["status"] == "succeeded"

    assert not dead["own"].exists()      # the set's own: this run holds its lock
    assert not dead["idle"].exists()     # no lock: no run of it is alive
    assert not dead["expired"].exists()  # a lease nobody renewed: its holder is dead
    assert dead["busy"].exists()         # a live lease: its run may be writing there
    assert runs.lock_holder(store.engine, lock_name(ids["busy"]))["owner"] == "a-live-run"
