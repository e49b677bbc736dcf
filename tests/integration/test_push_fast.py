"""Push's fast path keeps every guarantee: the current definition at each push, every push audited, and the
rows computed exactly as DuckDB computes them over an Arrow view.

Real parts only: SQLite and the real PostgreSQL registries, DuckDB in process, the embedded online store,
the Flask app with API keys on. Two ``FeatureStore`` objects on one registry stand for two processes: one
changes a definition, the other's very next push must use it (its cache is checked, not told).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import date, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from fstore.api import create_app
from fstore.compute import push as push_module
from fstore.engine import duckdb as engine
from fstore.ops import audit, auth
from fstore.registry.models import AuditRow
from fstore.store import FeatureStore
from test_materialize_support import online_values, write_source
from test_push import clicks_body
from test_security_support import headers

T0 = datetime(2024, 1, 1)


@pytest.fixture()
def stores(any_registry_settings, tmp_path):
    """Two stores on one registry (as two processes would be), with the entity and the ``clicks`` set."""
    settings = any_registry_settings.with_(compute_engine="duckdb")
    source = write_source(tmp_path / "source" / "clicks", pd.DataFrame({
        "user_id": [1], "event_timestamp": [T0], "clicks": [1], "page": ["a"]}))
    first = FeatureStore(settings, auto_upgrade=True)
    first.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    first.create_feature_set(clicks_body(source))
    second = FeatureStore(settings, auto_upgrade=True)
    yield first, second, source
    second.close()
    first.close()


def online(store: FeatureStore, feature: str = "clicks:clicks_x2", user: int = 1):
    """The stored online value (read from the store itself: serving resolves names from its own snapshot)."""
    set_name, name = feature.split(":")
    return online_values(store, (user,), set_name)[user][1][name]


def push_at(store: FeatureStore, hours: int, clicks: int, user: int = 1) -> dict:
    return store.push("clicks", [{"user_id": user, "event_timestamp": T0 + timedelta(hours=hours), "clicks": clicks,
                                  "page": "p"}])


def audit_count(store: FeatureStore, action: str) -> int:
    with Session(store.engine) as s:
        return s.scalar(select(func.count()).select_from(AuditRow).where(AuditRow.action == action))


def test_a_changed_definition_is_used_by_the_very_next_push_even_when_changed_elsewhere(stores):
    first, second, source = stores
    assert push_at(first, 1, 5)["version"] == 1 and online(first) == 10  # version 1 is now cached in `first`

    second.update_feature("clicks_x2", {"transformation": "clicks * 3"}, feature_set="clicks")
    done = push_at(first, 2, 5)
    assert done["version"] == 2 and online(first) == 15  # the new SQL at once, not the cached query

    second.create_feature({"feature_set": "clicks", "name": "clicks_neg", "data_type": "int", "transformation": "-clicks"})
    assert push_at(first, 3, 7)["version"] == 3 and online(first, "clicks:clicks_neg") == -7

    # Deleted and created again under the same name (SQLite may give it the same id): version 1 once more.
    second.delete_feature_set("clicks")
    body = clicks_body(source)
    body["features"][0]["transformation"] = "clicks + 100"
    second.create_feature_set(body)
    done = push_at(first, 4, 1)
    assert done["version"] == 1 and online(first) == 101

    # An entity change moves the stamp too (the cached version holds the entity): loaded again, same answer.
    second.update_entity("user", {"description": "people"})
    assert push_at(first, 5, 2)["version"] == 1 and online(first) == 102
    assert first.feature_set_version("clicks").entities[0].description == "people"


def test_the_cache_answers_only_what_a_full_read_answers(stores):
    first, _, _ = stores
    from fstore.core.errors import NotFound
    from fstore.registry.current import current_versions

    cache = current_versions(first)
    set_id, cached = cache.get(first, "clicks")
    again_id, again = cache.get(first, "clicks")
    assert again is cached  # a hit: the same object, no second load
    assert cache.get(first, set_id)[1] is not None and cache.get(first, str(set_id))[0] == set_id
    assert cached == first.feature_set_version("clicks")
    with pytest.raises(NotFound, match="feature set 'nope' does not exist"):
        cache.get(first, "nope")


def test_every_push_is_audited_after_a_flush_and_on_close(stores):
    first, second, _ = stores
    for i in range(25):
        push_at(first, i, i)
    assert audit.flush(first.engine)
    assert audit_count(second, "push") == 25  # read through another engine: the rows are in the database
    for i in range(25, 40):
        push_at(first, i, i)
    first.close()  # flushes what is queued
    assert audit_count(second, "push") == 40


def test_every_http_push_is_audited_and_listed_without_waiting(settings, tmp_path):
    store = FeatureStore(settings.with_(compute_engine="duckdb", auth_enabled=True), auto_upgrade=True)
    source = write_source(tmp_path / "source" / "clicks", pd.DataFrame({
        "user_id": [1], "event_timestamp": [T0], "clicks": [1], "page": ["a"]}))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set(clicks_body(source))
    with store.transaction() as s:
        pusher = auth.create_key(s, owner="pusher", scopes=["push"])["key"]
        admin = auth.create_key(s, owner="root", scopes=["admin"])["key"]
    app = create_app(store=store)
    client = app.test_client()
    try:
        for i in range(12):
            row = {"user_id": 1, "event_timestamp": (T0 + timedelta(hours=i)).isoformat() + "Z", "clicks": i, "page": "p"}
            answer = client.post("/api/v1/push", json={"feature_set": "clicks", "rows": [row]}, headers=headers(pusher))
            assert answer.status_code == 200, answer.get_json()
        refused = client.post("/api/v1/push", json={"feature_set": "clicks", "rows": [{"user_id": 1}]},
                              headers=headers(pusher))
        assert refused.status_code == 422
        # Listed at once: the list flushes this process's queue first.
        listed = client.get("/api/v1/audit", headers=headers(admin), query_string={"limit": 1000}).get_json()["items"]
        requests = [r for r in listed if r["action"] == "POST /api/v1/push"]
        assert len([r for r in listed if r["action"] == "push"]) == 12
        assert len(requests) == 13 and sum(r["outcome"] == "rejected" for r in requests) == 1
        assert all(r["actor"].startswith("pusher (") for r in listed if "push" in r["action"])
    finally:
        app.extensions["fstore_security"].usage.stop()
        store.close()


def test_a_full_queue_writes_inline_and_nothing_is_dropped(settings, monkeypatch):
    store = FeatureStore(settings, auto_upgrade=True)
    audit.close(store.engine)
    monkeypatch.setattr(audit, "MAX_QUEUED", 3)
    monkeypatch.setattr(audit, "WRITE_DELAY_SECONDS", 2.0)  # the writer gathers its first batch for 0.5 s
    try:
        for i in range(20):
            audit.record_later(store.engine, actor="a", action="burst", target=str(i))
        # The writer holds one row and the queue three; the other sixteen were written inline, at once.
        assert audit_count(store, "burst") >= 16
        assert audit.flush(store.engine)
        with Session(store.engine) as s:
            assert sorted(int(t) for t in s.scalars(select(AuditRow.target).where(AuditRow.action == "burst"))) \
                == list(range(20))
    finally:
        store.close()


def test_an_idle_writer_ends_and_the_next_row_starts_another(settings, monkeypatch):
    store = FeatureStore(settings, auto_upgrade=True)
    audit.close(store.engine)
    monkeypatch.setattr(audit, "IDLE_SECONDS", 0.2)
    try:
        audit.record_later(store.engine, actor="a", action="idle", target="1")
        assert audit.flush(store.engine)
        writer = audit._WRITERS[store.engine]
        for _ in range(100):
            if writer._thread is None:
                break
            time.sleep(0.05)
        assert writer._thread is None  # ended: it holds no thread (nor its engine) while nothing is written
        audit.record_later(store.engine, actor="a", action="idle", target="2")
        assert audit.flush(store.engine) and audit_count(store, "idle") == 2
    finally:
        store.close()


def test_rows_the_registry_refuses_are_kept_then_logged_one_by_one_never_silently(tmp_path, caplog):
    broken = create_engine(f"sqlite:///{tmp_path / 'no_tables.db'}")  # no audit_log table: every batch fails
    with caplog.at_level(logging.WARNING, logger="fstore.ops.audit"):
        for i in range(3):
            audit.record_later(broken, actor="a", action="lost?", target=f"t{i}")
        assert not audit.flush(broken, timeout=0.3)  # still held, being retried
        audit.close(broken)
    lost = [r.getMessage() for r in caplog.records if "audit record NOT written" in r.getMessage()]
    assert len(lost) == 3 and all(f"target=t{i}" in m for i, m in enumerate(sorted(lost)))
    broken.dispose()


SCHEMA = pa.schema([("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us")), ("i32", pa.int32()),
                    ("f32", pa.float32()), ("f64", pa.float64()), ("flag", pa.bool_()), ("s", pa.string()),
                    ("d", pa.date32()), ("tz", pa.timestamp("us", tz="UTC"))])
FEATURES = [("i32_plus", "int", "i32 + 1"), ("f32_x", "float", "f32 * 3"), ("ratio", "double", "f64 / i32"),
            ("pick", "string", "CASE WHEN flag THEN upper(s) ELSE concat(s, '!') END"),
            ("day_of", "int", "dayofmonth(d)"), ("tz_hour", "int", "hour(tz)"), ("n", "int", "length(s)"),
            ("late", "boolean", "tz > event_timestamp"), ("both", "double", "coalesce(f64, f32, 0)")]


def typed_set(settings, folder, name: str, rows: pa.Table):
    """A DuckDB store with set ``name`` of ``FEATURES`` over ``rows`` written to ``folder``: (store, its version)."""
    folder.mkdir()
    pq.write_table(rows, folder / "part-0.parquet")
    store = FeatureStore(settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": name, "entities": ["user"], "online_enabled": True,
        "source": {"path": str(folder), "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": n, "data_type": t, "transformation": x} for n, t, x in FEATURES]})
    return store, store.feature_set_version(name)


@pytest.mark.parametrize(("extra",), [(None,), (("amount", pa.decimal128(10, 2)),)])
def test_parameter_bound_rows_compute_what_the_arrow_view_computes(settings, tmp_path, extra):
    """Every supported type, nulls included, both runs (the first builds the result schema, later ones use it);
    a decimal column takes the Arrow view instead, with the same answer."""
    schema = SCHEMA if extra is None else SCHEMA.append(pa.field(*extra))
    rows = [{"user_id": 1, "event_timestamp": T0, "i32": 7, "f32": 1.5, "f64": 2.25, "flag": True, "s": "Ab",
             "d": date(2024, 2, 29), "tz": datetime(2024, 1, 1, 5, tzinfo=timezone.utc)},
            {"user_id": 2, "event_timestamp": T0 + timedelta(hours=1), "i32": None, "f32": None, "f64": None,
             "flag": None, "s": None, "d": None, "tz": None},
            {"user_id": 3, "event_timestamp": T0 + timedelta(microseconds=1), "i32": -2, "f32": float("inf"),
             "f64": -0.0, "flag": False, "s": "ü", "d": date(1970, 1, 1), "tz": datetime(2023, 12, 31, 23, tzinfo=timezone.utc)}]
    if extra is not None:
        from decimal import Decimal
        for r, v in zip(rows, (Decimal("1.25"), None, Decimal("-3.00"))):
            r["amount"] = v
    folder = tmp_path / "typed"
    store, fsv = typed_set(settings, folder, "typed", pa.Table.from_pylist(rows, schema=schema))
    try:
        source_schema = push_module.source_schema(store, fsv)
        table = push_module.source_table(fsv, source_schema, rows)
        ids = push_module.event_ids(table, rows, has_id_column=False)
        computed = [push_module.compute_rows(store, fsv, table, ids) for _ in range(2)]
        plan = next(v for k, v in push_module._CACHE.items() if k[0] == "rows" and str(folder) in k[1])
        assert (plan["statement"] is None) == (extra is not None)
        assert (plan["schema"] is not None) == (extra is None)  # the second run fetched rows into that schema

        # The reference: the same compiled query over the rows as an Arrow view (the way push ran before).
        con = engine.connect(1)
        try:
            key = next(k for k in push_module._CACHE if k[0] == "compiled" and str(folder) in k[1])
            full = table.append_column("__fs_push_id", pa.array(ids, pa.string()))
            full = full.append_column("__fs_pushed_at", pa.array([T0] * len(rows), pa.timestamp("us")))
            src = fsv.feature_set.source
            timed = dataclasses.replace(fsv, feature_set=dataclasses.replace(
                fsv.feature_set, source=dataclasses.replace(src, created_timestamp_column="__fs_pushed_at")))
            expected = engine.run_compiled(con, timed, push_module._CACHE[key], con.from_arrow(full),
                                           settings=store.settings)
        finally:
            con.close()
        by_user = lambda t: sorted(t.to_pylist(), key=lambda r: r["user_id"])  # noqa: E731
        for got in computed:
            assert got.schema.remove_metadata() == expected.schema.remove_metadata()
            assert by_user(got.drop_columns(["created_timestamp"])) == by_user(expected.drop_columns(["created_timestamp"]))
        assert [r["pick"] for r in by_user(computed[1])][::2] == ["AB", "ü!"] and by_user(computed[1])[1]["n"] is None
    finally:
        store.close()


def test_many_rows_go_as_an_arrow_view_and_compute_what_parameters_compute(settings, tmp_path, monkeypatch):
    """Past ``PARAMETER_ROWS`` rows (a stream's micro-batch) the rows go to DuckDB as an Arrow view, not as
    parameters (10,000 rows: 5 ms against 190 ms); the values are those the parameter path gives in small pushes."""
    from fstore.engine import duckdb_rows

    templates = [{"i32": 7, "f32": 1.5, "f64": 2.25, "flag": True, "s": "Ab", "d": date(2024, 2, 29),
                  "tz": datetime(2024, 1, 1, 5, tzinfo=timezone.utc)},
                 {"i32": None, "f32": None, "f64": None, "flag": None, "s": None, "d": None, "tz": None},
                 {"i32": -2, "f32": float("inf"), "f64": -0.0, "flag": False, "s": "ü", "d": date(1970, 1, 1),
                  "tz": datetime(2023, 12, 31, 23, tzinfo=timezone.utc)}]
    count = push_module.PARAMETER_ROWS * 2 + 5
    rows = [{"user_id": i, "event_timestamp": T0 + timedelta(seconds=i), **templates[i % 3]} for i in range(count)]
    store, fsv = typed_set(settings, tmp_path / "many", "many", pa.Table.from_pylist(rows, schema=SCHEMA))
    bound = []
    real = duckdb_rows.run_rows
    monkeypatch.setattr(duckdb_rows, "run_rows", lambda con, fsv, statement, table, schema: bound.append(
        table.num_rows) or real(con, fsv, statement, table, schema))
    try:
        table = push_module.source_table(fsv, push_module.source_schema(store, fsv), rows)
        ids = push_module.event_ids(table, rows, has_id_column=False)
        whole = push_module.compute_rows(store, fsv, table, ids)
        assert bound == []  # one Arrow view, no parameters
        step = push_module.PARAMETER_ROWS
        pieces = [push_module.compute_rows(store, fsv, table.slice(i, step), ids[i:i + step]) for i in range(0, count, step)]
        assert bound == [step, step, 5]
        by_user = lambda rs: sorted(rs, key=lambda r: r["user_id"])  # noqa: E731
        values = lambda t: t.drop_columns(["created_timestamp"]).to_pylist()  # noqa: E731
        assert whole.num_rows == count
        assert by_user(values(whole)) == by_user([r for piece in pieces for r in values(piece)])
    finally:
        store.close()
