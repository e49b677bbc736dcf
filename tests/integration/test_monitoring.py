"""Monitoring over real runs: a real materialization (Spark, Delta, real Redis) feeds statistics,
freshness and the Prometheus text; real online requests feed usage."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fstore.ops import auth
from fstore.api import create_app
from fstore.store import FeatureStore
from test_materialize_support import T0, T_END, create_set, events, write_source
from test_security_support import headers


@pytest.fixture(scope="module")
def monitored(spark, tmp_path_factory):
    """A set materialized once for real over [T0, T_END) into Delta and the real Redis; an app with auth on.

    Module-scoped: one real run serves every test here (tests that add runs count relative to it).
    """
    import redis

    from fstore.core.settings import Settings

    redis_url = os.environ.get("FSTORE_TEST_REDIS", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("FSTORE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis is not reachable: {exc}")
        pytest.skip(f"Redis is not reachable: {exc}")
    tmp_path = tmp_path_factory.mktemp("monitoring")
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "SOURCE_ROOTS": str(tmp_path),
                                  "REDIS_URL": redis_url, "AUTH_ENABLED": "true"})
    store = FeatureStore(settings, auto_upgrade=True).use_spark(spark)
    create_set(store, write_source(tmp_path / "src", events()), schedule="0 * * * *",
               amount_rules={"max_value": 150})
    run = store.materialize("user_txn", T0, T_END, actor="test")
    with store.transaction() as s:
        admin = auth.create_key(s, owner="ops", scopes=["admin"])["key"]
        reader = auth.create_key(s, owner="model", scopes=["serve_online", "read_registry"])["key"]
    app = create_app(store=store)
    yield store, app, app.test_client(), run, {"admin": admin, "reader": reader}
    app.extensions["fstore_security"].usage.stop()
    store.close()
    client.flushdb()
    client.close()


def succeeded_runs(store) -> int:
    return sum(r["status"] == "succeeded" for r in store.list_runs("user_txn", limit=100)["items"])


def samples(text: str) -> dict[tuple, float]:
    """``(name, sorted labels) -> value`` from Prometheus text, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_text_parses_and_counts_requests(monitored):
    store, _, client, run, keys = monitored
    h = headers(keys["admin"])
    before = samples(client.get("/monitoring/metrics", headers=h).get_data(as_text=True))
    for _ in range(3):
        assert client.get("/api/v1/entities", headers=h).status_code == 200
    client.get("/api/v1/entities")  # a 401
    response = client.get("/monitoring/metrics", headers=h)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    after = samples(response.get_data(as_text=True))
    ok = ("fstore_http_requests_total", (("endpoint", "/api/v1/entities"), ("method", "GET"), ("status", "200")))
    denied = ("fstore_http_requests_total", (("endpoint", "/api/v1/entities"), ("method", "GET"), ("status", "401")))
    assert after[ok] - before.get(ok, 0) == 3
    assert after[denied] - before.get(denied, 0) == 1
    errors = ("fstore_http_errors_total", (("code", "unauthorized"), ("endpoint", "/api/v1/entities")))
    assert after[errors] - before.get(errors, 0) == 1
    count = ("fstore_http_request_duration_seconds_count", (("endpoint", "/api/v1/entities"), ("method", "GET")))
    assert after[count] - before.get(count, 0) == 4
    # Run figures come from the registry's run table.
    fs = (("feature_set", "user_txn"),)
    finished = [r for r in store.list_runs("user_txn", limit=100)["items"] if r["status"] == "succeeded"]
    assert after[("fstore_materialization_runs_total", (("feature_set", "user_txn"), ("status", "succeeded")))] == len(finished)
    assert after[("fstore_materialization_rows_total", (("feature_set", "user_txn"), ("kind", "written")))] == sum(
        r["rows_written"] for r in finished)
    assert after[("fstore_materialization_duration_seconds_total", fs)] == pytest.approx(sum(r["duration_s"] for r in finished))
    assert after[("fstore_feature_set_late", fs)] == 0
    assert after[("fstore_feature_set_offline_lag_seconds", fs)] > 0


def test_online_latency_cache_and_usage_are_recorded(monitored):
    store, app, client, _, keys = monitored
    h = headers(keys["reader"])
    body = {"features": ["user_txn:amount_x2", "txn_count_2d"], "entities": {"user_id": [1, 2, 99]}}
    serving = ("fstore_serving_latency_seconds_count", (("endpoint", "online"), ("feature_set", "user_txn")))
    # the metrics are the process's: other tests in this process may have served a set of that name before
    before = samples(client.get("/monitoring/metrics", headers=headers(keys["admin"])).get_data(as_text=True)).get(serving, 0)
    for _ in range(4):
        response = client.post("/api/v1/serving/online", headers=h, json=body)
        assert response.status_code == 200, response.get_json()
    assert client.post("/api/v1/serving/online", headers=h, json={"features": ["nope:x"], "entities": {"user_id": [1]}}
                       ).status_code in (404, 422)  # errors are not usage
    text = client.get("/monitoring/metrics", headers=headers(keys["admin"])).get_data(as_text=True)
    values = samples(text)
    assert values[serving] - before == 4

    admin = headers(keys["admin"])
    start = (T0 - timedelta(days=1)).isoformat()
    by_feature = client.get("/monitoring/usage", headers=admin,
                            query_string={"level": "feature", "start_date": "2020-01-01T00:00:00Z"}).get_json()
    items = {(i["feature_set"], i["feature"]): i for i in by_feature["items"]}
    assert set(items) == {("user_txn", "amount_x2"), ("user_txn", "txn_count_2d")}, by_feature
    for item in items.values():
        assert item["requests"] == 4 and item["entities"] == 12
        assert item["coverage"] == round(8 / 12, 4)  # users 1 and 2 have values, 99 does not
        assert item["latency_ms"]["p50"] is not None and item["latency_ms"]["p99"] >= item["latency_ms"]["p50"]
        assert item["api_key"] == keys["reader"][: auth.PREFIX_LENGTH]
    by_key = client.get("/monitoring/usage", headers=admin, query_string={"level": "key", "start_date": start}).get_json()
    assert [(i["api_key"], i["requests"]) for i in by_key["items"]] == [(keys["reader"][:12], 4)]
    by_set = client.get("/monitoring/usage", headers=admin,
                        query_string={"level": "feature_set", "granularity": "hour", "start_date": start}).get_json()
    assert [(i["feature_set"], i["requests"]) for i in by_set["items"]] == [("user_txn", 4)]
    assert by_set["items"][0]["cache_hit_rate"] == 0 and by_set["items"][0]["period"].endswith(":00:00Z")
    bad = client.get("/monitoring/usage", headers=admin, query_string={"start_date": "last week"})
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "start_date"
    # A set filter naming no set is a 404 naming it, not an empty answer that reads as "no usage".
    typo = client.get("/monitoring/usage", headers=admin, query_string={"feature_set": "user_tx", "start_date": start})
    assert typo.status_code == 404 and "user_tx" in typo.get_json()["error"]["message"]
    assert typo.get_json()["error"]["field"] == "feature_set"


def test_statistics_come_from_the_runs_quality_reports(monitored):
    store, _, client, run, keys = monitored
    response = client.get("/monitoring/statistics?days=7", headers=headers(keys["admin"]))
    assert response.status_code == 200
    [entry] = response.get_json()["items"]
    runs_before = succeeded_runs(store)
    assert entry["feature_set"] == "user_txn" and entry["runs"] == runs_before
    features = {f["feature"]: f for f in entry["features"]}
    assert set(features) == {"amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d"}
    amount = features["amount_x2"]
    expected = run["quality"]["amount_x2"]
    assert amount["count"] == expected["count"] and amount["min"] == expected["min"] and amount["max"] == expected["max"]
    assert amount["violations"] >= 1  # 200.0 (user 2's 100 × 2) breaks max_value 150
    if runs_before == 1:
        assert amount["change"]["mean"] == 0 and entry["rows_written"] == run["rows_written"]
    # A second run of part of the range: the change over the period is the difference of the two reports.
    second = store.materialize("user_txn", T0, T0 + timedelta(days=2), actor="test")
    again = client.get("/monitoring/statistics?days=7", headers=headers(keys["admin"])).get_json()["items"][0]
    amount = {f["feature"]: f for f in again["features"]}["amount_x2"]
    assert again["runs"] == runs_before + 1 and amount["runs"] == runs_before + 1
    assert amount["change"]["mean"] == pytest.approx(second["quality"]["amount_x2"]["mean"] - expected["mean"])
    assert client.get("/monitoring/statistics?days=0", headers=headers(keys["admin"])).status_code == 422
    typo = client.get("/monitoring/statistics?feature_set=user_tx", headers=headers(keys["admin"]))
    assert typo.status_code == 404 and "user_tx" in typo.get_json()["error"]["message"]
    one = client.get("/monitoring/statistics?feature_set=user_txn", headers=headers(keys["admin"])).get_json()["items"]
    assert [i["feature_set"] for i in one] == ["user_txn"]


def test_freshness_reads_offline_online_and_runs(monitored):
    store, _, client, run, keys = monitored
    response = client.get("/monitoring/data-freshness", headers=headers(keys["reader"]))
    assert response.status_code == 200
    [item] = response.get_json()["items"]
    newest = max(events().event_timestamp).isoformat()
    assert item["offline_newest_event"].startswith(newest)
    assert item["online_newest_event"].startswith(newest)
    assert item["last_success_at"] == max(r["finished_at"] for r in store.list_runs("user_txn", limit=100)["items"])
    assert item["late"] is False and item["schedule"] == "0 * * * *"
    from fstore.ops.monitoring import data_freshness
    from fstore.registry.models import utcnow

    later = data_freshness(store, now=utcnow() + timedelta(hours=3))
    assert later["items"][0]["late"] is True


def test_cli_monitor_commands(monitored, monkeypatch):
    from click.testing import CliRunner

    from fstore.cli import main

    store = monitored[0]
    monkeypatch.setenv("STORAGE_PATH", store.settings.storage_path)
    monkeypatch.setenv("REDIS_URL", store.settings.redis_url)
    runner = CliRunner()
    stats = runner.invoke(main, ["monitor", "statistics", "--days", "3"])
    assert stats.exit_code == 0 and "amount_x2" in stats.output, stats.output
    fresh = runner.invoke(main, ["monitor", "freshness"])
    assert fresh.exit_code == 0 and "user_txn" in fresh.output, fresh.output
    usage = runner.invoke(main, ["monitor", "usage", "--level", "key", "--json"])
    assert usage.exit_code == 0 and '"items"' in usage.output
    bad = runner.invoke(main, ["monitor", "usage", "--start-date", "soon"])
    assert bad.exit_code == 2 and "start_date" in bad.output


def test_metrics_add_up_across_worker_processes(tmp_path):
    """What gunicorn does: several processes write to one PROMETHEUS_MULTIPROC_DIR; any one renders the sum."""
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    worker = textwrap.dedent("""
        import sys
        from fstore.ops import metrics
        for _ in range(int(sys.argv[1])):
            metrics.observe_request("/api/v1/serving/online", "POST", 200, 0.001)
        metrics.observe_online("user_txn", 0.002, cache_hit=sys.argv[1] == "2")
    """)
    for n in ("2", "5"):
        subprocess.run([sys.executable, "-c", worker, n], env=env, check=True, cwd=os.getcwd(), timeout=60)
    render = "from fstore.ops import metrics; import sys; sys.stdout.write(metrics.render()[0].decode())"
    text = subprocess.run([sys.executable, "-c", render], env=env, check=True, capture_output=True, text=True,
                          timeout=60).stdout
    values = samples(text)
    key = ("fstore_http_requests_total", (("endpoint", "/api/v1/serving/online"), ("method", "POST"), ("status", "200")))
    assert values[key] == 7
    assert values[("fstore_online_cache_total", (("feature_set", "user_txn"), ("result", "hit")))] == 1
    assert values[("fstore_online_cache_total", (("feature_set", "user_txn"), ("result", "miss")))] == 1
