"""Issue #20, part 4: a server, CLI processes and a job process writing one SQLite registry lose nothing.

The attack that split the registry: a source naming the registry file made DuckDB open and close it
inside the server, which dropped the server's SQLite locks; the next CLI process then deleted the
write-ahead log the server still wrote to, so the server's later writes reached no one and a key
revoked with the CLI kept working. Here the attack is tried against a real server (refused before
anything opens the file), then every kind of process writes at once, and a fresh process must see
every write, and the server must refuse the key the CLI revoked.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SERVER_WRITES, CLI_WORKERS, CLI_WRITES, JOB_RUNS = 20, 2, 4, 3

DEFS = """
entities:
  - {name: user, join_keys: [user_id], value_type: int}
feature_sets:
  - name: clicks
    entities: [user]
    source: {path: %s, event_timestamp_column: ts}
    features:
      - {name: n2, data_type: float, transformation: n * 2}
"""

COUNT = """
import json
from sqlalchemy import select
from fstore.registry.models import ApiKeyRow
from fstore.core.settings import Settings
from fstore.store import FeatureStore

store = FeatureStore(Settings.from_env())
entities = [e["name"] for e in store.list_entities(limit=500)["items"]]
runs = [r["status"] for r in store.list_runs("clicks", limit=500)["items"]]
with store.transaction() as s:
    owners = [o for o in s.scalars(select(ApiKeyRow.owner))]
print(json.dumps({"entities": entities, "runs": runs, "owners": owners}))
"""


def _request(port: int, method: str, path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, json.dumps(body) if body is not None else None,
                       {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _cli(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), *args, "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def _fresh_count(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", COUNT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_server_cli_and_job_processes_writing_one_sqlite_registry_lose_nothing(tmp_path, free_port, run_server):
    events = tmp_path / "events"
    events.mkdir()
    pd.DataFrame({"user_id": [1, 2, 1, 2], "n": [1.0, 2.0, 3.0, 4.0],
                  "ts": [datetime(2024, 1, d, 12) for d in (1, 2, 3, 3)]}) \
        .astype({"ts": "datetime64[us]"}).to_parquet(events / "part-0.parquet")
    (tmp_path / "defs.yaml").write_text(DEFS % events)
    env = {**os.environ, "STORAGE_PATH": str(tmp_path / "store"), "SOURCE_ROOTS": str(tmp_path),
           "COMPUTE_ENGINE": "duckdb", "AUTH_ENABLED": "true", "WEB_CONCURRENCY": "2", "PORT": str(free_port),
           "HOST": "127.0.0.1", "PYTHONPATH": str(REPO)}
    for name in ("DATABASE_URL", "REDIS_URL", "PYTHON_FEATURE_MODULES"):
        env.pop(name, None)
    _cli(env, "apply", str(tmp_path / "defs.yaml"))
    admin = _cli(env, "keys", "create", "--owner", "ops", "--scopes", "admin")["key"]
    victim = _cli(env, "keys", "create", "--owner", "victim", "--scopes", "read_registry")
    registry = tmp_path / "store" / "registry.db"
    server = run_server([sys.executable, str(REPO / "cli.py"), "serve"], free_port, cwd=tmp_path, env=env)

    # The attack: the registry (and its WAL) named as a source. Refused before anything opens the file.
    for path in (str(registry), f"{registry}-wal", f"file://{registry}"):
        for fmt in ("parquet", "csv"):
            status, body = _request(free_port, "POST", "/api/v1/feature-sets", admin, {
                "name": "split", "entities": ["user"], "source": {"path": path, "format": fmt, "event_timestamp_column": "ts"},
                "features": [{"name": "x", "data_type": "int", "transformation": "1"}]})
            assert status == 422 and "registry database" in body["error"]["message"], (path, fmt, body)

    failures: list[str] = []

    def server_writes() -> None:
        for i in range(SERVER_WRITES):
            status, body = _request(free_port, "POST", "/api/v1/entities", admin,
                                    {"name": f"srv_{i}", "join_keys": [f"k{i}"]})
            if status != 201:
                failures.append(f"server write {i}: {status} {body}")

    def cli_writes(worker: int) -> None:
        for i in range(CLI_WRITES):
            try:
                _cli(env, "keys", "create", "--owner", f"cli_{worker}_{i}", "--scopes", "read_registry")
            except AssertionError as exc:
                failures.append(f"cli write {worker}/{i}: {exc}")

    def job_runs() -> None:
        for day in range(1, JOB_RUNS + 1):
            done = subprocess.run([sys.executable, str(REPO / "jobs" / "materialize.py"), "--feature-set", "clicks",
                                   "--start", f"2024-01-0{day}T00:00:00Z", "--end", f"2024-01-0{day + 1}T00:00:00Z"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                failures.append(f"job run {day}: {done.stdout} {done.stderr}")

    threads = [threading.Thread(target=server_writes), threading.Thread(target=job_runs)] + \
        [threading.Thread(target=cli_writes, args=(w,)) for w in range(CLI_WORKERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.monotonic() - started
    assert not failures, failures

    expected_entities = {"user"} | {f"srv_{i}" for i in range(SERVER_WRITES)}
    expected_owners = {"ops", "victim"} | {f"cli_{w}_{i}" for w in range(CLI_WORKERS) for i in range(CLI_WRITES)}
    seen = _fresh_count(env)  # while the server still runs: its writes reach other processes
    assert set(seen["entities"]) == expected_entities and set(seen["owners"]) == expected_owners
    assert seen["runs"].count("succeeded") == JOB_RUNS, seen["runs"]

    # A key revoked with the CLI stops working on the server (its cache keeps a key at most seconds).
    assert _request(free_port, "GET", "/api/v1/entities", victim["key"])[0] == 200
    _cli(env, "keys", "revoke", victim["prefix"])
    deadline = time.monotonic() + 30
    while _request(free_port, "GET", "/api/v1/entities", victim["key"])[0] != 401:
        assert time.monotonic() < deadline, "the server still accepts a key the CLI revoked"
        time.sleep(0.5)
    status, _ = _request(free_port, "POST", "/api/v1/entities", admin, {"name": "after_revoke", "join_keys": ["z"]})
    assert status == 201

    # After the server stops, every write it made is still there (none lived only in a detached WAL).
    server.terminate()
    server.wait(timeout=60)
    final = _fresh_count(env)
    assert set(final["entities"]) == expected_entities | {"after_revoke"}
    assert set(final["owners"]) == expected_owners and final["runs"].count("succeeded") == JOB_RUNS
    print(f"{SERVER_WRITES} server, {CLI_WORKERS * CLI_WRITES} CLI and {JOB_RUNS} job writes in {elapsed:.1f} s")
