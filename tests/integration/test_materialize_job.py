"""The job process: background runs started by the library, and a run killed in the middle of its write."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from fstore.compute.materialize import JOB_SCRIPT, job_log_path, settings_env
from test_materialize_support import (  # noqa: F401 - fixtures
    T0, T_END, create_set, events, offline_rows, online_values, expected_online, oracle, source, store,
    write_source,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _wait_for(predicate, what: str, limit: float = 300.0):
    """Poll until ``predicate()`` is truthy (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def test_start_materialization_returns_at_once_and_the_job_finishes_it(store, source):
    create_set(store, source)
    run = store.start_materialization("user_txn", T0, T_END, actor="api")
    assert run["status"] == "pending" and run["created_by"] == "api"
    done = _wait_for(lambda: (r := store.get_run(run["id"]))["status"] in ("succeeded", "failed") and r,
                     "the background run")
    log_file = job_log_path(store.settings, run["id"])
    assert done["status"] == "succeeded", log_file.read_text()
    assert done["rows_written"] == len(events()) and done["offline_version"] is not None
    assert offline_rows(store) == oracle(events())
    assert online_values(store) == expected_online(events())
    # the run row is committed just before the process prints its one-line summary
    line = _wait_for(lambda: next((x for x in log_file.read_text().splitlines() if x.startswith("{")), None),
                     "the job's summary line")
    summary = json.loads(line)
    assert summary["id"] == run["id"] and summary["status"] == "succeeded"


def test_the_job_cli_reports_a_failure_with_its_exit_code(store, source):
    create_set(store, source)
    env = {**os.environ, **settings_env(store.settings)}
    proc = subprocess.run([sys.executable, str(JOB_SCRIPT), "--feature-set", "missing", "--start", "2024-01-01",
                           "--end", "2024-01-02"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "failed" and out["error"]["code"] == "not_found" and "missing" in out["error"]["message"]


def _daily(days: int, factor: float = 1.0) -> pd.DataFrame:
    """Two users, one event a day for ``days`` days: one table partition (event date) per day."""
    rows = [(user, T0 + timedelta(days=d, hours=user), float(d % 7) * factor) for d in range(days) for user in (1, 2)]
    return pd.DataFrame(rows, columns=["user_id", "event_timestamp", "amount"])


def _new_data_files(root: Path, since: float) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        if "_delta_log" in folder:
            continue
        found.extend(Path(folder) / f for f in files
                     if f.endswith(".parquet") and (Path(folder) / f).stat().st_mtime >= since)
    return found


def test_a_run_killed_during_its_write_leaves_the_previous_version_intact(store, tmp_path):
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    # Enough event-date partitions (one file each) that the job's write is caught in the middle: Spark's
    # write of 300 takes seconds; pyarrow writes faster, so the DuckDB job gets more.
    days = 300 if store.settings.compute_engine == "spark" else 1200
    end = T0 + timedelta(days=days)
    path = tmp_path / "daily"
    write_source(path, _daily(days))
    create_set(store, str(path))
    first = store.materialize("user_txn", T0, end)
    before = offline_rows(store)
    assert len(before) == 2 * days

    write_source(path, _daily(days, factor=10.0))  # new data, to be written by a job we kill
    root = Path(table_uri(store.settings, "user_txn"))
    env = {**os.environ, **settings_env(store.settings)}
    started = time.time()
    proc = subprocess.Popen([sys.executable, str(JOB_SCRIPT), "--feature-set", "user_txn", "--start", T0.isoformat(),
                             "--end", end.isoformat(), "--lock-ttl", "3"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: proc.poll() is not None or len(_new_data_files(root, started)) >= 5,
                  "the job's Spark write to start")
        assert proc.poll() is None, "the job ended before it could be killed mid-write"
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its JVM, with no chance to clean up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _new_data_files(root, started)  # it had started writing...
    assert DeltaTable(str(root)).version() == first["offline_version"]  # ...but committed nothing
    assert offline_rows(store) == before

    killed = next(r for r in store.list_runs("user_txn")["items"] if r["id"] != first["id"])
    assert killed["status"] == "running"  # its process is gone; the lease will tell

    time.sleep(3.2)  # the killed run's lease (3 s) must run out before another run may take the set
    again = store.materialize("user_txn", T0, end)
    assert again["status"] == "succeeded" and again["offline_version"] == first["offline_version"] + 1
    abandoned = store.get_run(killed["id"])
    assert abandoned["status"] == "failed" and "abandoned" in abandoned["error"]
    assert [r[2] for r in offline_rows(store)] == [r[2] * 10 for r in before]


@pytest.mark.parametrize("env", [
    {"STORAGE_PATH": "/data/x"},
    {"STORAGE_PATH": "/data/y", "DATABASE_URL": "postgresql://u@h/db", "REDIS_URL": "redis://h:6379/2",
     "STORAGE_FORMAT": "parquet", "SPARK_MASTER": "spark://m:7077", "MAX_COMPUTE_THREADS": "3", "REDIS_TIMEOUT": "0.5"},
    {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_ENDPOINT": "http://minio:9000", "S3_ACCESS_KEY": "k",
     "S3_SECRET_KEY": "s", "STORAGE_PATH": "fs"},
    {"STORAGE_PATH": "/data/z", "SOURCE_ROOTS": "/data/z,/lake,s3a://raw/in", "PYTHON_FEATURE_MODULES": ""},
    {"STORAGE_PATH": "/data/z", "PYTHON_FEATURE_MODULES": "acme.features,acme.more"},
])
def test_the_job_process_sees_the_same_settings(env):
    from fstore.core.settings import Settings

    settings = Settings.from_env(env)
    assert Settings.from_env(settings_env(settings)) == settings


def test_the_job_cli_runs_incrementally(store, source):
    create_set(store, source)
    env = {**os.environ, **settings_env(store.settings)}
    proc = subprocess.run([sys.executable, str(JOB_SCRIPT), "--feature-set", "user_txn", "--incremental",
                           "--end", "2024-01-06T00:00:00Z"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded" and out["start"] == "2024-01-01T01:00:00Z" and out["rows_written"] == len(events())
    assert store.get_run(out["id"])["kind"] == "incremental"
    assert offline_rows(store) == oracle(events())
