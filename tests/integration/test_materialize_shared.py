"""``materialize_many``: sets over one source share one read of it, with results identical to one run per set,
and a set that fails leaves the others' results (on Spark and DuckDB)."""
from __future__ import annotations

import pandas as pd
import pytest

from fstore.core.settings import Settings
from tests.conftest import store_env
from test_materialize_support import (  # noqa: F401 - fixtures
    DAY, T0, T_END, create_set, delta_version, events, make_store, online_values, source, store, write_source,
)

pytestmark = pytest.mark.spark

START = T0 + 2 * DAY  # windows straddle the start: the shared read must hold every set's look-back


def add_sets(store, path: str) -> list[str]:
    """Three sets over one source with different look-backs (2-day windows, a 1-day window, none)."""
    create_set(store, path, name="a")
    create_set(store, path, name="b")
    store.create_feature_set({
        "name": "c", "entities": ["user"],
        "source": {"path": path, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": "amount_neg", "data_type": "float", "transformation": "-amount"},
                     {"name": "txn_count_1d", "data_type": "int", "window_size": "1d", "aggregation": "count"}]})
    return ["a", "b", "c"]


def offline_frame(store, name: str) -> pd.DataFrame:
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    frame = DeltaTable(table_uri(store.settings, name)).to_pandas()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def pinned(store, name: str) -> dict | None:
    """The source files the set's last run recorded as read."""
    from fstore.registry import runs

    with store.transaction() as s:
        return runs.last_source_read(s, store.get_feature_set(name)["id"])


def count_source_reads(monkeypatch, engine: str) -> list[int]:
    """Count the engine's source reads (the real reader still does the work)."""
    import importlib

    module = importlib.import_module(f"fstore.engine.{engine}")
    real, calls = module.read_source, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "read_source", counted)
    return calls


def test_sets_over_one_source_read_it_once_and_match_one_run_each(store, tmp_path, spark, monkeypatch):
    path = write_source(tmp_path / "src", events())
    names = add_sets(store, path)
    alone = make_store(Settings.from_env({**store_env(tmp_path / "alone"), "SOURCE_ROOTS": str(tmp_path)}).with_(
        compute_engine=store.settings.compute_engine), spark)
    try:
        add_sets(alone, path)
        expected = [alone.materialize(name, START, T_END) for name in names]
        reads = count_source_reads(monkeypatch, store.settings.compute_engine)
        shared = store.materialize_many(names, START, T_END, actor="ann")
        assert len(reads) == 1  # one scan for three sets (alone: each reads it to compute, then again for its online windows)
        assert [r["status"] for r in shared] == ["succeeded"] * 3
        assert len({r["id"] for r in shared}) == 3 and [r["created_by"] for r in shared] == ["ann"] * 3
        for mine, theirs, name in zip(shared, expected, names):
            assert mine["rows_written"] == theirs["rows_written"] > 0 and mine["online_rows"] == theirs["online_rows"]
            assert mine["source_files"] == theirs["source_files"] == 1
            assert pinned(store, name) == pinned(alone, name) is not None  # each run records the files it read
            assert mine["offline_version"] == delta_version(store, name) == 0
            pd.testing.assert_frame_equal(offline_frame(store, name), offline_frame(alone, name))
            assert online_values(store, name=name) == online_values(alone, name=name)
    finally:
        alone.close()


def test_a_failing_set_leaves_the_others_written_and_says_why(store, tmp_path):
    path = write_source(tmp_path / "src", events())
    create_set(store, path, name="a")
    create_set(store, path, name="bad", amount_rules={"max_value": 50, "on_violation": "fail"})  # user 2: 200 > 50
    create_set(store, path, name="c")
    out = store.materialize_many(["a", "bad", "missing", "c"], T0, T_END)

    assert [r["status"] for r in out] == ["succeeded", "failed", "refused", "succeeded"]
    failed = out[1]
    assert failed["id"] and "amount_x2" in failed["error"] and failed["offline_version"] is None
    assert store.get_run(failed["id"])["status"] == "failed"
    assert out[2]["id"] is None and "missing" in out[2]["error"]
    for record, name in ((out[0], "a"), (out[3], "c")):
        assert record["rows_written"] == len(events()) and delta_version(store, name) == record["offline_version"]
        assert all(v is not None for v in online_values(store, name=name).values())
    assert all(v is None for v in online_values(store, name="bad").values())
    assert [r["status"] for r in store.list_runs("bad")["items"]] == ["failed"]


def test_the_cli_materializes_several_sets_and_exits_non_zero_when_one_is_refused(settings, tmp_path):
    import json

    from click.testing import CliRunner

    from fstore.cli import main
    from fstore.store import FeatureStore

    path = write_source(tmp_path / "src", events())
    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    create_set(store, path, name="a")
    create_set(store, path, name="b")
    store.close()
    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url, "SOURCE_ROOTS": str(tmp_path),
           "COMPUTE_ENGINE": "duckdb", "REDIS_URL": ""}
    result = CliRunner().invoke(main, ["materialize", "a", "nope", "b", "--start", "2024-01-01", "--end", "2024-01-06",
                                       "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 5, result.output
    records = json.loads(result.stdout)
    assert [(r["feature_set"], r["status"]) for r in records] == [("a", "succeeded"), ("nope", "refused"),
                                                                   ("b", "succeeded")]
    assert records[0]["rows_written"] == records[2]["rows_written"] == len(events())
