"""`fstore serve`: gunicorn started from the user's folder, with the environment's settings."""
from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_serve_keeps_the_working_folder_and_reads_workers_from_the_environment(tmp_path, free_port, run_server):
    env = {**os.environ, "STORAGE_PATH": "relative_store", "WEB_CONCURRENCY": "1", "PORT": str(free_port),
           "HOST": "127.0.0.1", "COMPUTE_ENGINE": "duckdb"}
    for name in ("DATABASE_URL", "REDIS_URL", "AUTH_ENABLED"):
        env.pop(name, None)
    process = run_server([sys.executable, str(REPO / "cli.py"), "serve"], free_port, cwd=tmp_path, env=env)
    # Bound to loopback, so no key is needed; the entity lands in ./relative_store of the user's folder.
    connection = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
    connection.request("POST", "/api/v1/entities", json.dumps({"name": "user", "join_keys": ["user_id"]}),
                       {"Content-Type": "application/json"})
    assert connection.getresponse().status == 201
    assert any((tmp_path / "relative_store").iterdir())
    assert len(_children(process.pid)) == 1  # WEB_CONCURRENCY=1 worker


def test_serve_on_granian_answers_online_as_the_library_does_and_stops_on_sigterm(tmp_path, free_port, run_server,
                                                                                    redis_url):
    """`fstore serve --server granian`: two workers; a pushed value answered online, equal to the library's
    answer; errors in fstore's JSON shape; every worker's requests in one scrape; SIGTERM stops it all."""
    import signal
    import time

    import pandas as pd

    from fstore.core.settings import Settings
    from fstore.store import FeatureStore
    from test_materialize_support import write_source

    env = {**os.environ, "STORAGE_PATH": str(tmp_path / "store"), "SOURCE_ROOTS": str(tmp_path), "REDIS_URL": redis_url,
           "COMPUTE_ENGINE": "duckdb", "WEB_CONCURRENCY": "2", "PORT": str(free_port), "HOST": "127.0.0.1"}
    for name in ("DATABASE_URL", "AUTH_ENABLED", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    store = FeatureStore(Settings.from_env({k: env[k] for k in ("STORAGE_PATH", "SOURCE_ROOTS", "REDIS_URL", "COMPUTE_ENGINE")}),
                         auto_upgrade=True)
    source = write_source(tmp_path / "source" / "clicks", pd.DataFrame({
        "user_id": [1], "event_timestamp": [pd.Timestamp("2024-01-01")], "clicks": [1]}))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "clicks", "entities": ["user"], "ttl": "3650d",
                              "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
                              "features": [{"name": "clicks_x2", "data_type": "int", "transformation": "clicks * 2"}]})
    store.push("clicks", [{"user_id": 7, "event_timestamp": "2024-01-02T00:00:00Z", "clicks": 21}], to="online")
    ask = {"features": ["clicks:clicks_x2"], "entities": {"user_id": [7, 8]}}
    expected = store.get_online_features(**ask)
    store.close()

    process = run_server([sys.executable, str(REPO / "cli.py"), "serve", "--server", "granian"], free_port,
                         cwd=tmp_path, env=env)
    deadline = time.monotonic() + 60
    while len(_descendants(process.pid)) < 2 and time.monotonic() < deadline:  # both workers up
        time.sleep(0.2)
    connection = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
    for _ in range(20):
        connection.request("POST", "/api/v1/serving/online", json.dumps(ask), {"Content-Type": "application/json"})
        response = connection.getresponse()
        got = json.loads(response.read())
        assert response.status == 200, got
        assert got["features"] == expected["features"] == {"7": {"clicks:clicks_x2": 42}, "8": {"clicks:clicks_x2": None}}
        assert got["statuses"] == expected["statuses"]
    connection.request("POST", "/api/v1/serving/online", b"{not json", {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 400 and "error" in json.loads(response.read())
    # a second client (its own connection, perhaps the other worker): the scrape adds up every worker's counts
    other = http.client.HTTPConnection("127.0.0.1", free_port, timeout=10)
    for _ in range(5):
        other.request("POST", "/api/v1/serving/online", json.dumps(ask), {"Content-Type": "application/json"})
        assert other.getresponse().read()
    connection.request("GET", "/monitoring/metrics")
    scrape = connection.getresponse().read().decode()
    served = sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
                 if line.startswith("fstore_http_requests_total{") and "/api/v1/serving/online" in line
                 and 'status="200"' in line)
    assert served == 25, [line for line in scrape.splitlines() if line.startswith("fstore_http_requests_total{")]
    import tempfile

    folders = list(Path(tempfile.gettempdir()).glob(f"fstore-metrics-{process.pid}-*"))
    assert len(folders) == 1 and any(folders[0].iterdir())  # the workers' shared metrics folder
    workers = _descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
    assert not folders[0].exists()  # the metrics folder it made is gone with it
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # and so are its workers


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found
