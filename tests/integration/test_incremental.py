"""Incremental runs from the watermark give exactly what one full recomputation gives."""
from __future__ import annotations

from datetime import timedelta

import pytest

from fstore.core.settings import Settings
from test_materialize_support import (  # noqa: F401 - fixtures
    DAY, T0, T_END, create_set, events, expected_online, make_store, offline_rows, online_values, oracle, source,
    store,
)

pytestmark = pytest.mark.spark


@pytest.mark.parametrize("cuts", [
    # boundaries inside 2-day windows, one exactly on an event (user 1's tie at day 2 01:00), one on a window edge
    (T0 + DAY + timedelta(hours=12), T0 + 2 * DAY + timedelta(hours=1), T0 + 3 * DAY + timedelta(hours=5)),
    (T0 + timedelta(hours=6),),
])
def test_incremental_runs_equal_one_full_run(settings, spark, source, tmp_path, cuts):
    full = make_store(Settings.from_env({"STORAGE_PATH": str(tmp_path / "full"), "SOURCE_ROOTS": str(tmp_path)}), spark)
    incremental = make_store(settings, spark)
    try:
        create_set(full, source)
        full.materialize("user_txn", T0, T_END)
        create_set(incremental, source)
        made = [incremental.materialize_incremental("user_txn", end=cut) for cut in (*cuts, T_END)]

        # the first run starts at the source's earliest event; each next one at the previous end
        assert made[0]["start"] == "2024-01-01T01:00:00Z"
        assert [m["start"] for m in made[1:]] == [m["end"] for m in made[:-1]]
        assert all(m["status"] == "succeeded" and m["kind"] == "incremental" for m in made)
        assert sum(m["rows_written"] for m in made) == len(events())
        assert offline_rows(incremental) == offline_rows(full) == oracle(events())
        assert online_values(incremental) == online_values(full) == expected_online(events())

        again = incremental.materialize_incremental("user_txn", end=T_END)
        assert again["status"] == "skipped" and again["id"] is None
        assert incremental.list_runs("user_txn")["total"] == len(made)
    finally:
        full.close()
        incremental.close()


def test_an_empty_source_is_skipped_not_failed(store, tmp_path):
    from test_materialize_support import write_source

    path = write_source(tmp_path / "empty", events().iloc[0:0])
    create_set(store, path)
    result = store.materialize_incremental("user_txn", end=T_END)
    assert result["status"] == "skipped" and "no rows" in result["reason"]
    assert store.list_runs()["total"] == 0
