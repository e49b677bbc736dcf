"""Computation and serving over HTTP, end to end on real Spark (and the DuckDB engine) and the real Redis:
materialize through the API (202 + run polling), then online, historical and batch retrieval."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from fstore.api import create_app
from fstore.core.settings import Settings

FINISHED = ("succeeded", "failed")


@pytest.fixture()
def source_path(tmp_path) -> str:
    path = tmp_path / "activity.parquet"
    pd.DataFrame({
        "user_id": [1, 1, 2],
        "event_timestamp": pd.to_datetime(["2024-01-02T00:00:00Z", "2024-01-05T00:00:00Z", "2024-01-03T12:00:00Z"])
        .astype("datetime64[us, UTC]"),
        "amount": [10.0, 25.5, 7.0],
        "segment": ["basic", "premium", "standard"],
    }).to_parquet(path, index=False)
    return str(path)


@pytest.fixture()
def client(on_engine, tmp_path, redis_url, source_path):
    """The API on a store computing on each engine (on DuckDB, touching Spark fails the test)."""
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "SOURCE_ROOTS": str(tmp_path),
                                  "REDIS_URL": redis_url, "MAX_HISTORICAL_ROWS": "5", "MAX_ENTITIES_PER_REQUEST": "5"})
    store = on_engine(settings)
    client = create_app(store=store).test_client()
    body = {"name": "user_activity", "entities": ["user_id"], "description": "spend",
            "source": {"path": source_path, "format": "parquet"},
            "features": [{"name": "amount", "data_type": "float", "transformation": "amount"},
                         {"name": "segment", "data_type": "string", "transformation": "segment"}]}
    response = client.post("/api/v1/feature-sets", json=body)
    assert response.status_code == 201, response.get_json()
    yield client
    store.close()


def wait_for(client, url: str, limit_s: float = 300.0) -> dict:
    """Poll a run or job until it finishes (bounded, so a stuck job fails the test instead of hanging it)."""
    deadline = time.monotonic() + limit_s
    while True:
        item = client.get(url).get_json()
        if item["status"] in FINISHED or time.monotonic() > deadline:
            return item
        time.sleep(0.5)


def test_materialize_then_serve_online_historical_and_batch(client, compute_engine, tmp_path, monkeypatch):
    if compute_engine == "duckdb":
        monkeypatch.setenv("JAVA_HOME", "/nonexistent")  # a run or job process starting a JVM fails
    response = client.post("/api/v1/feature-sets/user_activity/materialize", headers={"X-Actor": "carol"},
                           json={"start_date": "2024-01-01T02:00:00+02:00", "end_date": "2024-02-01T00:00:00Z"})
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert run["status"] in ("pending", "running") and run["start"].startswith("2024-01-01T00:00:00")
    assert response.headers["Location"] == f"/api/v1/runs/{run['id']}"
    done = wait_for(client, f"/api/v1/runs/{run['id']}")
    assert done["status"] == "succeeded", done
    assert done["rows_written"] == 3 and done["created_by"] == "carol"
    listed = client.get("/api/v1/feature-sets/user_activity/runs").get_json()
    assert [r["id"] for r in listed["items"]] == [run["id"]]
    assert client.get(f"/api/v1/feature-sets/user_activity/runs/{run['id']}").get_json()["id"] == run["id"]
    assert client.get(f"/api/v1/feature-sets/other/runs/{run['id']}").status_code == 404

    online = client.post("/api/v1/serving/online", json={"feature_sets": ["user_activity"],
                                                         "entities": {"user_id": [1, 2, 3]},
                                                         "features": ["amount", "segment"]})
    assert online.status_code == 200, online.get_json()
    answer = online.get_json()
    values = list(answer["features"].values())
    assert values == [{"amount": 25.5, "segment": "premium"}, {"amount": 7.0, "segment": "standard"},
                      {"amount": None, "segment": None}]
    assert "latency_ms" in answer["metadata"] and "cache_hit" in answer["metadata"]

    historical = client.post("/api/v1/serving/historical", json={
        "feature_sets": ["user_activity"], "features": ["amount", "segment"],
        "entity_df": {"columns": ["user_id", "event_timestamp", "label"],
                      "data": [[1, "2024-01-04T00:00:00+01:00", "a"], [2, "2024-01-01T00:00:00Z", "b"],
                               [1, "2024-01-06T00:00:00Z", "c"]]}})
    assert historical.status_code == 200, historical.get_json()
    table = historical.get_json()
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["label"], r["amount"], r["segment"]) for r in rows] == [
        ("a", 10.0, "basic"), ("b", None, None), ("c", 25.5, "premium")]
    assert rows[0]["event_timestamp"] == "2024-01-03T23:00:00Z"
    assert table["metadata"]["rows"] == 3
    assert [g["feature_set"] for g in table["metadata"]["feature_sets"]] == ["user_activity"]

    entities = tmp_path / "entities.parquet"
    pd.DataFrame({"user_id": [1, 2], "event_timestamp": pd.to_datetime(["2024-01-06", "2024-01-06"])
                  .astype("datetime64[us]")}).to_parquet(entities, index=False)
    batch = client.post("/api/v1/serving/batch", json={
        "entity_source": {"path": str(entities), "format": "parquet"}, "features": ["amount"],
        "feature_sets": ["user_activity"], "output_path": str(tmp_path / "out"), "output_format": "parquet"})
    assert batch.status_code == 202, batch.get_json()
    job = wait_for(client, f"/api/v1/serving/jobs/{batch.get_json()['id']}")
    assert job["status"] == "succeeded", job
    assert job["result"]["row_count"] == 2 and job["result"]["compute_engine"] == compute_engine
    written = pd.read_parquet(tmp_path / "out").sort_values("user_id")
    assert list(written.columns) == ["user_id", "event_timestamp", "amount"]
    assert list(written.amount) == [25.5, 7.0]


@pytest.mark.parametrize(("case", "url", "body", "status", "field"), [
    ("unknown_feature", "/api/v1/serving/online", {"entities": {"user_id": [1]}, "features": ["nope"]}, (404, 422), None),
    ("unknown_set", "/api/v1/serving/online", {"feature_sets": ["nope"], "entities": {"user_id": [1]},
                                               "features": ["amount"]}, (404, 422), None),
    ("unknown_key", "/api/v1/serving/online", {"entities": {"merchant_id": [1]}, "features": ["amount"]}, (422,), "entities"),
    ("too_many_entities", "/api/v1/serving/online", {"entities": {"user_id": list(range(6))}, "features": ["amount"]},
     (413, 422), "entities"),
    ("historical_too_many_rows", "/api/v1/serving/historical",
     {"features": ["amount"], "entity_df": {"columns": ["user_id", "event_timestamp"],
                                            "data": [[i, "2024-01-06T00:00:00Z"] for i in range(6)]}}, (413,), "entity_df"),
    ("historical_no_timestamp", "/api/v1/serving/historical",
     {"features": ["amount"], "entity_df": {"columns": ["user_id"], "data": [[1]]}}, (422,), "timestamp_column"),
    ("historical_bad_timestamp", "/api/v1/serving/historical",
     {"features": ["amount"], "entity_df": {"columns": ["user_id", "event_timestamp"], "data": [[1, "soon"]]}},
     (422,), "timestamp_column"),
    ("batch_bad_format", "/api/v1/serving/batch", {"entity_source": {"path": "/tmp/x.parquet"}, "features": ["amount"],
                                                   "output_path": "/tmp/out", "output_format": "xlsx"}, (422,), None),
    ("materialize_unknown_set", "/api/v1/feature-sets/nope/materialize",
     {"start_date": "2024-01-01", "end_date": "2024-01-02"}, (404,), None),
    ("vacuum_unknown_set", "/api/v1/feature-sets/nope/vacuum", {"dry_run": True}, (404,), None),
    ("vacuum_nothing_materialized", "/api/v1/feature-sets/user_activity/vacuum", {}, (404,), None),
    ("vacuum_negative_hours", "/api/v1/feature-sets/user_activity/vacuum", {"retain_hours": -1}, (422,), "retain_hours"),
    ("vacuum_unknown_field", "/api/v1/feature-sets/user_activity/vacuum", {"retain": 1}, (422,), None),
])
def test_serving_bad_input(client, case, url, body, status, field):
    response = client.post(url, json=body)
    assert response.status_code in status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error
    if case == "historical_too_many_rows":
        assert "/api/v1/serving/batch" in error["message"]
    assert client.get("/api/v1/feature-sets/user_activity/runs").get_json()["total"] == 0


def test_ready_checks_registry_and_redis(client):
    response = client.get("/ready")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"registry": "ok", "online_store": "ok"}


def test_ready_reports_an_unreachable_online_store(tmp_path):
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": "redis://127.0.0.1:1/0"})
    app = create_app(settings)
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["online_store"] == "unavailable" and "online store" in body["error"]["message"]
    app.extensions["fstore"].close()
