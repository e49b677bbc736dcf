"""Cost tracking over real runs: each figure checked against what the kernel and the files say.

A run's CPU seconds are at most the CPU its process used meanwhile by ``/proc/<pid>/stat`` (DuckDB: this
process; Spark: the driver JVM, where a local master's tasks run) and more than nothing; its bytes written equal
the on-disk sizes of the files its Delta commit added; its bytes read the sizes of the source files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition
from fstore.storage.offline_table import table_uri
from fstore.store import FeatureStore
from tests.conftest import over_connect
from test_materialize_support import T0, T_END, create_set, source, store  # noqa: F401 - fixtures

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat (fields 14 and 15, after the command in parentheses)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def added_file_bytes(settings, name: str, version: int) -> int:
    """The on-disk sizes of the files Delta commit ``version`` added (its log read here, sizes from the disk)."""
    uri = table_uri(settings, name)
    log = Path(uri) / "_delta_log" / f"{version:020d}.json"
    paths = [json.loads(line)["add"]["path"] for line in log.read_text().splitlines() if '"add"' in line]
    assert paths, "the commit added no file"
    from urllib.parse import unquote

    return sum(os.path.getsize(Path(uri) / unquote(p)) for p in paths)


def source_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


def test_a_runs_cost_is_plausible_against_proc(store, source):
    """Both engines: CPU > 0 and <= the process's own CPU delta; bytes written = the commit's files on disk;
    bytes read = the source's files; peak memory > 0 and <= the process's peak RSS; Spark: shuffle bytes."""
    create_set(store, source)
    engine = store.settings.compute_engine
    if engine == "spark":
        if over_connect(store.spark):
            pytest.skip("over Spark Connect the tasks run in the server: CPU is not measured here (documented)")
        pid = store.spark._jvm.java.lang.ProcessHandle.current().pid()
    else:
        pid = os.getpid()
    before = proc_cpu_seconds(pid)
    run = store.materialize("user_txn", T0, T_END)
    used = proc_cpu_seconds(pid) - before
    cost = run["cost"]
    assert cost["engine"] == engine and not cost["unmeasured"]
    # /proc counts whole clock ticks: allow one tick on each reading
    assert 0 < cost["cpu_seconds"] <= used + 2 / TICK, (cost, used)
    assert cost["bytes_written"] == added_file_bytes(store.settings, "user_txn", run["offline_version"]) > 0
    assert cost["bytes_read"] == source_bytes(source) > 0
    assert 0 < cost["peak_memory_bytes"] <= proc_peak_rss(pid)
    if engine == "spark":
        assert cost["spark_stages"] > 0 and cost["executor_run_seconds"] > 0
        assert cost["shuffle_write_bytes"] > 0 and cost["shuffle_read_bytes"] > 0  # the windows shuffle by user
    else:
        assert cost["shuffle_write_bytes"] is None and cost["peak_memory_source"] == "ru_maxrss"
    # recorded on the run, as the registry returns it
    assert store.get_run(run["id"])["cost"] == cost


@pytest.fixture()
def redis_store(settings, source, redis_url):
    """A DuckDB store on the real Redis (FSTORE_TEST_REDIS, emptied), its set materialized once."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    store = FeatureStore(settings.with_(compute_engine="duckdb", redis_url=redis_url,
                                        cost_prices=(("cpu_hour", 0.05), ("gb_month_offline", 0.023),
                                                     ("gb_month_online", 5.0))))
    create_set(store, source)
    run = store.materialize("user_txn", T0, T_END)
    yield store, client, run
    store.close()
    client.close()


def test_cost_report_per_set_totals_and_money(redis_store):
    """Online memory = Redis's own MEMORY USAGE of the set's keys; offline bytes = the current version's files;
    money from COST_PRICES; the REST view, the Prometheus text and the CLI give the same figures."""
    from deltalake import DeltaTable

    store, client, run = redis_store
    keys = list(client.scan_iter(match="fs:user_txn:*"))
    report = store.cost_report(7)
    [item] = report["items"]
    assert item["feature_set"] == "user_txn" and item["runs"] == item["runs_measured"] == 1
    assert item["cpu_seconds"] == run["cost"]["cpu_seconds"] > 0
    assert item["online_keys"] == len(keys) == 3
    assert item["online_bytes"] == sum(client.memory_usage(k) for k in keys) > 0  # every key sampled
    table = DeltaTable(table_uri(store.settings, "user_txn"))
    assert item["offline_bytes"] == sum(os.path.getsize(u.removeprefix("file://")) for u in table.file_uris()) > 0
    money = item["money"]
    assert money["cpu"] == pytest.approx(item["cpu_seconds"] / 3600 * 0.05, abs=1e-6)
    assert money["online_memory"] == pytest.approx(item["online_bytes"] / 2**30 * 5.0 * 7 / 30, abs=1e-6)
    assert report["total"]["bytes_written"] == item["bytes_written"] == run["cost"]["bytes_written"]

    client_app = create_app(store=store)
    http = client_app.test_client()
    try:
        answer = http.get("/monitoring/cost?days=7").get_json()
        assert answer["items"][0]["online_keys"] == 3 and answer["total"]["cpu_seconds"] == item["cpu_seconds"]
        assert http.get("/monitoring/cost?days=0").status_code in (400, 422)
        text = http.get("/monitoring/metrics").get_data(as_text=True)
    finally:
        client_app.extensions["fstore_security"].usage.stop()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("fstore_run_cpu_seconds_total", (("feature_set", "user_txn"),))] == pytest.approx(item["cpu_seconds"])
    assert values[("fstore_run_bytes_total", (("feature_set", "user_txn"), ("kind", "written")))] == item["bytes_written"]
    assert values[("fstore_feature_set_online_keys", (("feature_set", "user_txn"),))] == 3


def test_embedded_online_bytes_share_the_file(settings, source):
    """The embedded store: a set's online bytes are the SQLite file's bytes shared by the set's data; one set
    alone takes the whole file."""
    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    try:
        create_set(store, source)
        store.materialize("user_txn", T0, T_END)
        item = store.cost_report(1)["items"][0]
        path = store.settings.embedded_online_path
        files = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
        assert item["online_keys"] == 3 and item["online_bytes"] == files > 0
    finally:
        store.close()


def test_cost_prices_name_the_variable():
    from fstore.core.settings import Settings

    with pytest.raises(InvalidDefinition, match="COST_PRICES") as info:
        Settings.from_env({"COST_PRICES": '{"cpu_hour": "free"}'})
    assert info.value.field == "COST_PRICES"


def test_a_key_limited_to_one_set_sees_no_other_sets_cost_or_use(settings, source):
    """Cost and unused reports name feature sets: a key granted one set reads only that set's, never another
    tenant's names or figures."""
    from fstore.ops import auth
    from test_materialize_support import feature_set_body

    store = FeatureStore(settings.with_(compute_engine="duckdb", auth_enabled=True), auto_upgrade=True)
    try:
        create_set(store, source)
        store.create_feature_set({**feature_set_body(source), "name": "tenant_b_secret"})
        with store.transaction() as s:
            key = auth.create_key(s, owner="tenant-a", scopes=["read_registry"], feature_sets=["user_txn"])["key"]
            admin = auth.create_key(s, owner="ops", scopes=["admin"])["key"]
        http = create_app(store=store).test_client()
        def get(path: str, who: str):
            answer = http.get(path, headers={"Authorization": f"Bearer {who}"})
            assert answer.status_code == 200, (path, answer.get_json())
            return answer

        assert "tenant_b_secret" in get("/monitoring/cost?days=7", admin).get_data(as_text=True)  # the filter is real
        assert "tenant_b_secret" not in get("/monitoring/cost?days=7", key).get_data(as_text=True)
        # unused: features younger than the period are not judged, so compare what each key had checked
        everything, seen = (get("/monitoring/unused?days=1", who).get_json() for who in (admin, key))
        assert seen["features_checked"] * 2 == everything["features_checked"] > 0
    finally:
        store.close()
