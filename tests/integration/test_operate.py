"""Operating jobs from the CLI: progress, one-line errors, exit codes, cancelling with SIGTERM, scheduler retries.

On the DuckDB engine (no JVM to start), through click's runner or a real ``fstore`` process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fstore.cli import main
from fstore.compute.materialize import lock_name
from fstore.registry import runs
from fstore.store import FeatureStore
from test_materialize_support import events, feature_set_body, write_source

ROOT = Path(__file__).resolve().parents[2]
SLOW = textwrap.dedent("""
    import os, time
    from pathlib import Path

    def slow(df):
        marker = os.environ.get("SLOW_MARKER")
        if marker:  # only the process under test is slow
            Path(marker).write_text("computing")
            time.sleep(120)
        return df["amount"]
""")


@pytest.fixture()
def env(settings):
    return {"STORAGE_PATH": settings.storage_path, "SOURCE_ROOTS": ",".join(settings.allowed_source_roots),
            "COMPUTE_ENGINE": "duckdb"}


@pytest.fixture()
def duck(settings):
    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    yield store
    store.close()


def cli(env, *args, code=0, extra=None):
    result = CliRunner().invoke(main, list(args), env={**env, **(extra or {})}, catch_exceptions=False)
    assert "Traceback" not in result.output
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


def test_materialize_shows_progress_per_stage_as_plain_lines(duck, env, tmp_path):
    duck.create_feature_set(feature_set_body(write_source(tmp_path / "src", events())))
    result = cli(env, "materialize", "user_txn", "--start", "2024-01-01", "--end", "2024-01-06")
    lines = result.stderr.strip().splitlines()
    assert [line.split(" done")[0] for line in lines] == [f"user_txn: {s}" for s in
                                                          ("read", "compute", "validate", "offline", "online")], lines
    assert lines[-1].endswith("(100%)") and "rows" in lines[-1]
    assert lines[2].endswith("(60%)")


def test_a_failing_run_is_one_line_and_scheduler_once_exits_non_zero_after_its_retries(duck, env, tmp_path):
    path = write_source(tmp_path / "src", events())
    duck.create_feature_set(feature_set_body(path, schedule="0 0 1 1 *"))
    write_source(tmp_path / "src", events().rename(columns={"amount": "amt"}))  # the source changed shape
    failed = cli(env, "materialize", "user_txn", "--start", "2024-01-01", "--end", "2024-01-06", code=2)
    errors = [line for line in failed.stderr.splitlines() if not line.startswith("user_txn: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "amount" in errors[0], failed.stderr

    result = cli(env, "scheduler", "--once", code=8, extra={"SCHEDULER_RETRIES": "1", "SCHEDULER_RETRY_SECONDS": "0.2"})
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # the tick, then its one retry; each run one line
    assert " user_txn (up to " in lines[0] and " failed 0 rows " in lines[0] and lines[0].endswith("(retrying in 0.2s)")
    assert " failed " in lines[1] and "retrying" not in lines[1]
    assert [r["status"] for r in duck.list_runs("user_txn")["items"]] == ["failed"] * 3


def test_sigterm_cancels_the_run_and_frees_the_set_at_once(duck, env, tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "slowfeat.py").write_text(SLOW)
    sys.path.insert(0, str(tmp_path / "mods"))
    try:
        body = feature_set_body(write_source(tmp_path / "src", events()))
        body["features"].append({"name": "slow_amount", "data_type": "float", "python": "slowfeat:slow"})
        slow = FeatureStore(duck.settings.with_(python_feature_modules=("slowfeat",)))  # the operator allows it
        created = slow.create_feature_set(body)
        marker = tmp_path / "computing"
        proc_env = {**os.environ, **env, "SLOW_MARKER": str(marker), "PYTHON_FEATURE_MODULES": "slowfeat",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "mods")])}
        proc = subprocess.Popen([sys.executable, "-c", "from fstore.cli import main; main()", "materialize", "user_txn",
                                 "--start", "2024-01-01", "--end", "2024-01-06"], env=proc_env, cwd=str(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in err
        run = duck.list_runs("user_txn")["items"][0]
        assert run["status"] == "cancelled" and "SIGTERM" in run["error"]
        assert runs.lock_holder(duck.engine, lock_name(created["id"])) is None
        again = slow.materialize("user_txn", "2024-01-01", "2024-01-06")  # at once: no lease to wait for
        assert again["status"] == "succeeded"
        slow.close()
    finally:
        sys.path.remove(str(tmp_path / "mods"))
