"""Spark Connect: `fstore spark up` starts one warm server; CLI processes find it and compute there, row for row as
in process. One server for the module (started and stopped through the CLI, checked gone by its pid)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from fstore.core.settings import Settings
from test_materialize_support import (  # noqa: F401 - fixtures
    T0, T_END, create_set, events, expected_online, make_store, offline_rows, online_values, oracle, write_source,
)

pytestmark = [pytest.mark.spark, pytest.mark.topology]

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "cli.py")]


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`fstore spark up` on a free loopback port, its record in a folder of its own; `fstore spark down` after."""
    state = tmp_path_factory.mktemp("spark-connect")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update({"SPARK_CONNECT_DIR": str(state), "SPARK_CONNECT": "auto", "SPARK_MASTER": "local[2]",
                "PYTHONPATH": str(ROOT), "SPARK_LOG_LEVEL": "error"})
    up = run(["--json", "spark", "up", "--port", str(port)], env)
    assert up.returncode == 0, up.stderr[-3000:]
    status = json.loads(up.stdout)
    assert status["running"] and status["used_here"] and status["port"] == port, status
    assert (state / "server.json").stat().st_mode & 0o077 == 0  # the token is this user's alone
    try:
        yield SimpleNamespace(env=env, port=port, pid=status["pid"], state=state)
    finally:
        down = run(["spark", "down"], env, timeout=120)
        deadline = time.monotonic() + 60
        while not _gone(status["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = _gone(status["pid"])
        if not stopped:
            os.kill(status["pid"], signal.SIGKILL)  # never leave it running, even when the test fails
        assert down.returncode == 0 and stopped, down.stderr[-2000:]
        assert not (state / "server.json").exists()


def store_env(base: dict, store: Path, roots: Path, **extra: str) -> dict:
    return {**base, "STORAGE_PATH": str(store), "SOURCE_ROOTS": str(roots), **extra}


def test_the_cli_materializes_over_the_server_it_finds_as_in_process(server, spark, tmp_path):
    source = write_source(tmp_path / "source" / "transactions", events())
    here = make_store(Settings.from_env(store_env({}, tmp_path / "here", tmp_path)), spark)
    there_env = store_env(server.env, tmp_path / "there", tmp_path)
    there = make_store(Settings.from_env(there_env), spark)  # definitions only: the run goes through the CLI
    for store in (here, there):
        create_set(store, source)

    done = run(["--debug", "--json", "materialize", "user_txn", "--start", T0.isoformat(), "--end", T_END.isoformat()],
               there_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"using the Spark Connect server at sc://localhost:{server.port}" in done.stderr
    remote_run = json.loads(done.stdout)
    local_run = here.materialize("user_txn", T0, T_END, actor="test")

    assert remote_run["status"] == local_run["status"] == "succeeded"
    assert remote_run["rows_written"] == local_run["rows_written"] == len(events())
    assert offline_rows(there) == offline_rows(here) == oracle(events())
    assert online_values(there) == online_values(here) == expected_online(events())
    here.close()
    there.close()


def test_historical_retrieval_over_the_named_server_equals_in_process(server, spark, tmp_path):
    source = write_source(tmp_path / "source" / "transactions", events())
    env = store_env(server.env, tmp_path / "store", tmp_path, SPARK_CONNECT="off",
                    SPARK_REMOTE=f"sc://127.0.0.1:{server.port}")
    store = make_store(Settings.from_env(store_env({}, tmp_path / "store", tmp_path)), spark)
    create_set(store, source)
    store.materialize("user_txn", T0, T_END, actor="test")
    entities = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, 4, 2],
                             "event_timestamp": pd.to_datetime(["2024-01-01 12:00", "2024-01-03 02:00", "2024-01-02 05:00",
                                                                "2024-01-02 00:00", "2024-01-09 00:00", "2024-01-03 00:00",
                                                                "2023-12-31 00:00"])})
    entities.to_parquet(tmp_path / "entities.parquet", index=False)
    features = "user_txn:amount_x2,user_txn:txn_count_2d,user_txn:amount_sum_2d,user_txn:avg_amount_2d"

    # SPARK_REMOTE names the recorded server on loopback without its token: the recorded token is used.
    done = run(["get-historical-features", "--entities", str(tmp_path / "entities.parquet"), "--features", features,
                "--output", str(tmp_path / "remote.parquet")], env)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = pd.read_parquet(tmp_path / "remote.parquet")
    local = store.get_historical_features(entity_df=entities, features=features.split(","), actor="test").to_df()
    assert len(remote) == len(entities)
    pd.testing.assert_frame_equal(remote.reset_index(drop=True), local.reset_index(drop=True), check_dtype=False)
    store.close()


def test_a_process_with_other_settings_is_not_served(server):
    shown = run(["--json", "spark", "status"], {**server.env, "SPARK_MASTER": "local[1]"})
    status = json.loads(shown.stdout)
    assert status["running"] and not status["used_here"] and status["differs_from_here"] == ["master"]
    off = json.loads(run(["--json", "spark", "status"], {**server.env, "SPARK_CONNECT": "off"}).stdout)
    assert off["running"] and not off["used_here"] and off["differs_from_here"] == []


def test_the_server_refuses_a_client_without_its_token(server):
    probe = ("from pyspark.sql import SparkSession\n"
             f"SparkSession.builder.remote('sc://127.0.0.1:{server.port}').getOrCreate().range(1).count()\n")
    env = {k: v for k, v in server.env.items() if k != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "No authentication token provided" in done.stderr
