"""The product spec's own examples, replayed verbatim against a real server process.

A newcomer copies the spec's requests (shared/spec/feature-store-2.0.md) after `make demo`:
the bodies below are the spec's, character for character, except the one placeholder it
asks the reader to fill (`"feature_set_id": "feature-set-uuid"`). Each answer is checked
against the example data (`fstore.definitions.examples`), value by value, not only by status code.
The server runs on COMPUTE_ENGINE=duckdb with the real Redis; materialization runs in the
server's job process as it would for a user.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fstore.definitions.examples import write_example_sources

REPO = Path(__file__).resolve().parents[2]

SPEC_FEATURE_SET = {
    "name": "user_profile",
    "description": "User demographic and behavioral features",
    "owner": "data-team",
    "entities": ["user"],
    "source_type": "batch",
    "offline_enabled": True,
    "online_enabled": True,
    "materialization_schedule": "0 */6 * * *",
}
SPEC_USER_AGE = {
    "name": "user_age",
    "feature_set_id": "feature-set-uuid",
    "description": "User age in years",
    "data_type": "int",
    "transformation": "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))",
    "validation_rules": {"min_value": 0, "max_value": 150},
}
SPEC_ACCOUNT_BALANCE = {"name": "account_balance", "data_type": "float", "default_value": 0.0}
SPEC_USER_SEGMENT = {"name": "user_segment", "data_type": "string", "allowed_values": ["premium", "standard", "basic"]}
SPEC_MATERIALIZE = {"start_date": "2024-01-01T00:00:00", "end_date": "2024-01-31T23:59:59"}
SPEC_ONLINE = {
    "feature_sets": ["user_profile", "user_activity"],
    "entities": {"user": ["user_123", "user_456"]},
    "features": ["user_age", "purchase_count", "last_login"],
}
SPEC_HISTORICAL = {
    "feature_sets": ["user_profile"],
    "entity_df": {
        "columns": ["user_id", "event_timestamp"],
        "data": [["user_123", "2024-01-01T10:00:00"], ["user_456", "2024-01-01T11:00:00"]],
    },
    "features": ["user_age", "purchase_count"],
}
SPEC_MONITORING = ("/monitoring/metrics", "/monitoring/statistics?days=7", "/monitoring/data-freshness",
                   "/monitoring/usage?start_date=2024-01-01")


class Client:
    """JSON over HTTP to the server under test: (status, parsed body or text)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        return status, (json.loads(raw) if "json" in kind else raw.decode())


def profile_row(users_path: str, user: str, at: str) -> dict:
    """The example source's profile snapshot of ``user`` visible at ``at`` (the newest not after it)."""
    frame = pq.read_table(users_path).to_pandas()
    rows = frame[(frame.user_id == user) & (frame.updated_at <= pd.Timestamp(at, tz="UTC"))]
    return rows.sort_values("updated_at").iloc[-1].to_dict()


def iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture()
def spec_server(tmp_path, free_port, run_server, redis_url):
    storage = tmp_path / "store"
    data = write_example_sources(storage / "example_sources")
    env = {**os.environ, "STORAGE_PATH": str(storage), "REDIS_URL": redis_url, "COMPUTE_ENGINE": "duckdb",
           "WEB_CONCURRENCY": "1", "PORT": str(free_port), "HOST": "127.0.0.1", "PYTHONPATH": str(REPO)}
    for name in ("DATABASE_URL", "AUTH_ENABLED"):
        env.pop(name, None)
    run_server([sys.executable, str(REPO / "cli.py"), "serve"], free_port, cwd=tmp_path, env=env)
    return Client(free_port), env, data


def wait_for_run(client: Client, run_id: str) -> dict:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status, run = client.call("GET", f"/api/v1/runs/{run_id}")
        assert status == 200, run
        if run["status"] in ("succeeded", "failed"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def apply(env: dict, cwd: Path, path: Path) -> str:
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "apply", str(path)],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_spec_requests_work_verbatim(spec_server, tmp_path):
    client, env, data = spec_server
    # the spec names entity `user` without creating it: conf/examples declares it (string ids in user_id)
    apply(env, tmp_path, REPO / "conf" / "examples" / "entities.yaml")

    # 1-2. create the feature set and its features with the spec's bodies
    status, created = client.call("POST", "/api/v1/feature-sets", SPEC_FEATURE_SET)
    assert status == 201, created
    assert (created["name"], created["owner"], created["entities"]) == ("user_profile", "data-team", ["user"])
    status, age = client.call("POST", "/api/v1/features", {**SPEC_USER_AGE, "feature_set_id": created["id"]})
    assert status == 201, age
    assert age["feature_set"] == "user_profile" and age["validation_rules"]["max_value"] == 150
    for body in (SPEC_ACCOUNT_BALANCE, SPEC_USER_SEGMENT):  # the spec's "Basic Features"
        status, feature = client.call("POST", "/api/v1/features", {**body, "feature_set_id": "user_profile"})
        assert status == 201, feature
    assert feature["transformation"] == "user_segment"
    assert feature["validation_rules"]["allowed_values"] == ["premium", "standard", "basic"]
    status, refused = client.call("POST", "/api/v1/features", {
        **SPEC_USER_SEGMENT, "name": "segment2", "feature_set_id": "user_profile",
        "validation_rules": {"allowed_values": ["premium"]}})
    assert status == 422 and "allowed_values" in refused["error"]["message"], refused

    # conf/examples holds the same definitions plus the source and the spec's other features:
    # applying it over the spec's requests leaves those unchanged
    applied = apply(env, tmp_path, REPO / "conf" / "examples")
    for feature in ("user_age", "account_balance", "user_segment"):
        assert f"unchanged        feature      user_profile:{feature}" in applied, applied
    # the source now readable, a column that is not in it is refused when a feature names none
    status, refused = client.call("POST", "/api/v1/features", {"name": "no_such_column", "data_type": "float",
                                                              "feature_set_id": "user_profile"})
    assert status == 422 and "no_such_column" in refused["error"]["message"], refused

    # 3. materialize January with the spec's body
    for name in ("user_profile", "user_activity"):
        status, run = client.call("POST", f"/api/v1/feature-sets/{name}/materialize", SPEC_MATERIALIZE)
        assert status == 202, run
        run = wait_for_run(client, run["id"])
        assert run["status"] == "succeeded", run
    assert run["rows_written"] > 0
    status, run = client.call("GET", "/api/v1/feature-sets/user_profile/runs")
    profile_run = run["items"][0]
    assert profile_run["rows_written"] == data.users * 31  # one snapshot per user and day of January

    # 4. online, verbatim: the values of the last snapshot materialized (2024-01-31 00:00)
    status, online = client.call("POST", "/api/v1/serving/online", SPEC_ONLINE)
    assert status == 200, online
    assert set(online["features"]) == {"user_123", "user_456"}
    for user, age_then in (("user_123", 28), ("user_456", 35)):
        row = profile_row(data.users_path, user, "2024-01-31T23:59:59")
        got = online["features"][user]
        assert got["user_age"] == age_then
        assert got["purchase_count"] == row["purchase_count"] > 0
        assert got["last_login"].rstrip("Z") == iso(row["last_login"])  # ISO 8601
        assert got["last_login"] < "2024-02-01"
    assert online["metadata"]["latency_ms"] >= 0 and "cache_hit" in online["metadata"]

    # 5. historical, verbatim: the snapshot of 2024-01-01 00:00 is the newest before 10:00 / 11:00
    status, history = client.call("POST", "/api/v1/serving/historical", SPEC_HISTORICAL)
    assert status == 200, history
    assert history["columns"] == ["user_id", "event_timestamp", "user_age", "purchase_count"]
    expected = [[u, profile_row(data.users_path, u, t)["purchase_count"]] for u, t in SPEC_HISTORICAL["entity_df"]["data"]]
    assert [[r[0], r[3]] for r in history["data"]] == expected
    assert [r[2] for r in history["data"]] == [28, 35]

    # the spec's monitoring calls, verbatim
    answers = {path: client.call("GET", path) for path in SPEC_MONITORING}
    assert all(status == 200 for status, _ in answers.values()), answers
    assert "fstore_" in answers["/monitoring/metrics"][1]
    freshness = {item["feature_set"]: item for item in answers["/monitoring/data-freshness"][1]["items"]}
    assert freshness["user_profile"]["offline_newest_event"].startswith("2024-01-31")
    statistics = answers["/monitoring/statistics?days=7"][1]["items"]
    assert any(item.get("feature_set") == "user_profile" for item in statistics), statistics
    usage = answers["/monitoring/usage?start_date=2024-01-01"][1]["items"]
    assert sum(item["requests"] for item in usage) >= 1, usage

    # the spec's SDK call: `entities=` with a column named `timestamp`, bare feature names back
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    store = FeatureStore(Settings.from_env({k: env[k] for k in ("STORAGE_PATH", "REDIS_URL", "COMPUTE_ENGINE")}))
    try:
        train_df = pd.DataFrame({"user_id": ["user_123", "user_456"], "timestamp": pd.to_datetime(
            ["2024-01-01T10:00:00", "2024-01-01T11:00:00"]), "label": [1, 0]})
        features_df = store.get_historical_features(entities=train_df[["user_id", "timestamp"]],
                                                    features=["user_age", "purchase_count"]).to_df()
        assert list(features_df.columns) == ["user_id", "timestamp", "user_age", "purchase_count"]
        assert features_df[["user_id", "purchase_count"]].values.tolist() == expected
    finally:
        store.close()


def test_alembic_upgrade_head_with_database_url(pg_settings, tmp_path):
    """The spec's `alembic upgrade head`, run from the repository with DATABASE_URL set, builds the schema."""
    from sqlalchemy import create_engine, text

    from fstore.registry.db import HEAD_REVISION

    env = {**os.environ, "DATABASE_URL": pg_settings.database_url, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = create_engine(pg_settings.database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
            assert connection.execute(text("SELECT count(*) FROM feature_sets")).scalar() == 0
    finally:
        engine.dispose()


def test_a_set_without_source_holds_features_and_says_so_when_materialized(settings):
    """Deliberate: the spec creates `user_profile` with no source, then adds features to it, so a set's
    features never require a source at definition time; `PATCH source: null` is accepted for the same
    reason, and materializing a set with no source is refused with a message that names it."""
    from datetime import datetime

    from fstore.core.errors import FStoreError
    from fstore.store import FeatureStore

    store = FeatureStore(settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    try:
        store.apply(str(REPO / "conf" / "examples" / "entities.yaml"))
        data = write_example_sources(Path(settings.storage_path) / "example_sources", users=10, purchases=50)
        store.create_feature_set(SPEC_FEATURE_SET)
        store.create_feature({**SPEC_USER_AGE, "feature_set_id": "user_profile"})
        store.update_feature_set("user_profile", {"source": {"path": data.users_path,
                                                             "event_timestamp_column": "updated_at"}})
        january = (datetime(2024, 1, 1), datetime(2024, 2, 1))
        assert store.materialize("user_profile", *january)["rows_written"] == 10 * 31
        changed = store.update_feature_set("user_profile", {"source": None})
        assert changed["source"] is None and changed["features"] == ["user_age"]
        with pytest.raises(FStoreError, match="feature set user_profile has no source to"):
            store.materialize("user_profile", *january)
    finally:
        store.close()
