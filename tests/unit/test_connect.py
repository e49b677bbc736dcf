"""Which Spark Connect server a process uses: never a dead one, never one started for other settings, never
when told not to; a server is recorded readable by its user only."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from fstore.engine import connect, connect_server
from fstore.core.settings import Settings


def settings_in(tmp_path, **env: str) -> Settings:
    return Settings.from_env({"SPARK_CONNECT_DIR": str(tmp_path / "state"), "SPARK_MASTER": "local[2]", **env})


def record(settings: Settings, *, pid: int, fingerprint: dict | None = None) -> connect.Server:
    server = connect.Server(pid=pid, port=15999, token="t0ken", started=time.time(), log="server.log",
                            fingerprint=fingerprint if fingerprint is not None else connect.fingerprint(settings))
    connect.state_dir(settings).mkdir(parents=True)
    connect._write_private(connect.state_file(settings), json.dumps(asdict(server)))
    return server


def test_an_explicit_remote_is_used_as_given(tmp_path):
    settings = settings_in(tmp_path, SPARK_REMOTE="sc://spark.internal:15002/;token=abc", SPARK_CONNECT="off")
    assert connect.remote_url(settings) == "sc://spark.internal:15002/;token=abc"


def test_no_record_means_a_session_of_its_own(tmp_path):
    assert connect.remote_url(settings_in(tmp_path)) is None
    assert connect.status(settings_in(tmp_path))["running"] is False


def test_a_record_whose_process_is_no_server_is_not_used(tmp_path):
    settings = settings_in(tmp_path)
    record(settings, pid=os.getpid())  # alive, but not a Spark Connect server (its command line says so)
    assert connect.running(settings) is None and connect.remote_url(settings) is None
    # Nor does an explicit loopback URL borrow that record's token.
    named = settings.with_(spark_remote="sc://127.0.0.1:15999")
    assert connect.remote_url(named) == "sc://127.0.0.1:15999"
    assert connect.status(settings)["running"] is False and connect.status(settings)["used_here"] is False


def test_the_record_is_private_and_names_what_differs(tmp_path):
    settings = settings_in(tmp_path)
    server = record(settings, pid=os.getpid(), fingerprint={**connect.fingerprint(settings), "master": "local[*]",
                                                           "code": "0" * 16})
    assert connect.state_file(settings).stat().st_mode & 0o777 == 0o600
    assert connect.recorded(settings) == server
    assert connect.differences(settings, server) == ["code", "master"]
    assert server.address == "sc://localhost:15999" and "t0ken" not in json.dumps(connect.status(settings))


def test_the_fingerprint_follows_the_settings_that_matter_and_hides_the_s3_secret(tmp_path):
    base = settings_in(tmp_path)
    assert connect.fingerprint(base) == connect.fingerprint(base.with_(storage_path=str(tmp_path / "other")))
    assert connect.fingerprint(base)["master"] == "local[2]"
    assert connect.fingerprint(base.with_(max_compute_threads=1))["master"] == "local[1]"
    secret = base.with_(s3_secret_key="very-secret")
    assert "very-secret" not in json.dumps(connect.fingerprint(secret))
    assert connect.fingerprint(secret)["s3_secret_key"] != connect.fingerprint(base)["s3_secret_key"]


def test_stop_forgets_a_dead_record(tmp_path):
    settings = settings_in(tmp_path)
    record(settings, pid=os.getpid())
    stopped = connect_server.stop(settings)  # our own pid is no server: nothing is signalled, the record goes
    assert stopped is not None and stopped.pid == os.getpid()
    assert not connect.state_file(settings).exists() and connect_server.stop(settings) is None
