"""Backfills: chunked runs in order, progress reports, resume after a failing chunk; online never backwards."""
from __future__ import annotations

import pytest

from fstore.compute.backfill import chunks
from fstore.core.errors import ComputeError, InvalidDefinition
from test_materialize_support import (  # noqa: F401 - fixtures
    DAY, T0, T_END, any_online_store, create_set, events, expected_online, offline_rows, online_values, oracle,
    source, store, write_source,
)

pytestmark = pytest.mark.spark


def test_chunks_cover_the_range_exactly():
    parts = chunks(T0, T0 + 2 * DAY + DAY / 2, 86400)
    assert parts == [(T0, T0 + DAY), (T0 + DAY, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 2 * DAY + DAY / 2)]


def test_a_backfill_resumes_at_the_first_chunk_not_done(store, tmp_path):
    path = tmp_path / "src"
    bad = events()
    bad.loc[(bad.user_id == 2) & (bad.amount == 25.0), "amount"] = 1000.0  # day 4 breaks the max rule
    write_source(path, bad)
    create_set(store, str(path), amount_rules={"max_value": 500, "on_violation": "fail"})

    seen: list[dict] = []
    with pytest.raises(ComputeError):
        store.backfill("user_txn", T0, T_END, chunk_seconds=86400, progress=seen.append)
    assert [(e["chunk"], e["status"]) for e in seen] == [(1, "succeeded"), (2, "succeeded"), (3, "succeeded"),
                                                         (4, "failed")]
    first_runs = {e["chunk"]: e["run_id"] for e in seen if e["status"] == "succeeded"}

    write_source(path, events())  # the source is corrected; the same backfill is asked for again
    seen.clear()
    result = store.backfill("user_txn", T0, T_END, chunk_seconds=86400, progress=seen.append)
    assert [(e["chunk"], e["status"]) for e in seen] == [(1, "skipped"), (2, "skipped"), (3, "skipped"),
                                                         (4, "succeeded"), (5, "succeeded")]
    assert {e["chunk"]: e["run_id"] for e in seen if e["status"] == "skipped"} == first_runs
    assert result["status"] == "succeeded" and result["resumed"] and result["chunks_run"] == 2
    assert seen[0]["backfill_id"] == result["id"]
    assert offline_rows(store) == oracle(events())
    kinds = {r["kind"] for r in store.list_runs("user_txn")["items"]}
    assert kinds == {"backfill"}
    statuses = sorted(r["status"] for r in store.list_runs("user_txn")["items"])
    assert statuses == ["failed"] + ["succeeded"] * 5


def test_a_finished_backfill_asked_again_runs_again(store, source):
    create_set(store, source)
    first = store.backfill("user_txn", T0, T0 + 2 * DAY, chunk_seconds=86400)
    second = store.backfill("user_txn", T0, T0 + 2 * DAY, chunk_seconds=86400)
    assert second["id"] != first["id"] and not second["resumed"] and second["chunks_run"] == 2


def test_online_values_never_move_backwards_after_a_backfill_of_an_older_range(any_online_store, source):
    store = any_online_store
    create_set(store, source)
    store.materialize("user_txn", T0, T_END)
    latest = online_values(store)
    assert latest == expected_online(events())
    store.backfill("user_txn", T0, T0 + 2 * DAY, chunk_seconds=86400)
    assert online_values(store) == latest
    assert offline_rows(store) == oracle(events())


@pytest.mark.parametrize(("chunk", "start", "end"), [(0, T0, T_END), (-5, T0, T_END), (3600, T_END, T0), (True, T0, T_END)])
def test_bad_backfill_arguments_are_refused(store, source, chunk, start, end):
    create_set(store, source)
    with pytest.raises(InvalidDefinition):
        store.backfill("user_txn", start, end, chunk_seconds=chunk)
    assert store.list_runs()["total"] == 0
