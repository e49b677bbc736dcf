"""Running the warm Spark: ``fstore spark up`` / ``down`` start and stop the Spark Connect server that
``fstore.engine.connect`` records and processes find (see that module for the why and the rules).

The server is pyspark's bundled ``SparkConnectServer`` run by pyspark's ``spark-submit`` in a session of its
own, with a local session's configuration (``session.session_conf``), on loopback, behind a token; it is
warmed up (a Delta write and a ``mapInArrow``) before ``start`` returns.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from fstore.core.errors import Conflict, InvalidDefinition, Unavailable
from fstore.core.settings import Settings
from fstore.engine.connect import (
    DEFAULT_PORT, FSTORE_ROOT, HOST, SERVER_CLASS, TOKEN_ENV, Server, _alive, _listening, _write_private, differences,
    fingerprint, master, recorded, running, state_dir, state_file,
)

log = logging.getLogger(__name__)


def server_conf(settings: Settings, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The server driver's Spark settings: a local session's (``session_conf``, ``extra`` included), on
    loopback, at ``port``."""
    from fstore.engine.session import session_conf

    conf = session_conf(settings, extra, master=master(settings))
    conf.update({
        "spark.master": master(settings),
        "spark.app.name": "fstore-spark-connect",
        "spark.connect.grpc.binding.address": HOST,
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": HOST,
        "spark.driver.bindAddress": HOST,
        # An operation whose client is gone (a job killed by SIGKILL) is interrupted after this, so a killed
        # run's write cannot outlive its lock's lease (materialize.LOCK_TTL_SECONDS, 120 s): ≤ 60 + 10 s.
        "spark.connect.execute.manager.detachedTimeout": "60s",
        "spark.connect.execute.manager.maintenanceInterval": "10s",
    })
    # The server is long-lived: its log keeps warnings (a local session's keeps errors only).
    conf["spark.driver.extraJavaOptions"] = (conf.get("spark.driver.extraJavaOptions", "") + " -Dfstore.spark.level=warn").strip()
    return conf


def _spark_submit() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit"


def _server_env(token: str) -> dict[str, str]:
    """The server's environment: its Python workers run this interpreter and import this fstore."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "PYSPARK_GATEWAY_PORT",
                        "PYSPARK_GATEWAY_SECRET")}
    path = [str(FSTORE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update({"PYSPARK_PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join(path), "SPARK_LOCAL_IP": HOST,
                TOKEN_ENV: token})
    return env


def start(settings: Settings, *, port: int = DEFAULT_PORT, timeout: float = 180, warm_up: bool = True,
          extra: dict[str, str] | None = None) -> Server:
    """Start a Spark Connect server for ``settings`` on 127.0.0.1:``port`` and record it; returns it.
    ``extra``: Spark settings of its driver beyond a local session's (as ``get_spark`` takes them).

    A server already recorded and running for the same settings is returned as it is; one running for
    other settings, or another program on the port, is a ``Conflict``."""
    from fstore.engine.spark_env import ensure_java

    if settings.spark_remote:
        raise InvalidDefinition("SPARK_REMOTE is set: this process uses that Spark Connect server; unset it to "
                                "start one with fstore spark up", field="SPARK_REMOTE")
    if not 1 <= port <= 65535:
        raise InvalidDefinition(f"port {port} is out of range [1, 65535]", field="port")
    current = running(settings)
    if current is not None:
        differ = differences(settings, current)
        if differ:
            raise Conflict(f"a Spark Connect server started for other settings ({', '.join(differ)}) runs at "
                           f"{current.address} (pid {current.pid}); stop it first: fstore spark down")
        return current
    if _listening(port):
        raise Conflict(f"port {port} on {HOST} is already in use; choose another with --port")
    ensure_java()
    folder = state_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    properties = folder / "spark-connect.conf"
    _write_private(properties, "".join(f"{k} {v}\n" for k, v in server_conf(settings, port, extra).items()))
    log_path = folder / "server.log"
    token = secrets.token_urlsafe(32)
    command = [str(_spark_submit()), "--class", SERVER_CLASS, "--properties-file", str(properties)]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, env=_server_env(token), cwd=folder, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # spark-submit execs into the JVM, so this pid is the server's; its group holds its Python workers.
    server = Server(pid=process.pid, port=port, token=token, started=time.time(), log=str(log_path),
                    fingerprint=fingerprint(settings))
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            _end(process.pid, process)
            tail = log_path.read_text(errors="replace").splitlines()[-8:]
            raise Unavailable(f"the Spark Connect server did not start within {timeout:.0f} s (exit "
                              f"{process.returncode}); {log_path}: " + " | ".join(tail))
        time.sleep(0.2)
    _write_private(state_file(settings), json.dumps(asdict(server)))
    if warm_up:
        try:
            warm(server)
        except Exception as exc:  # noqa: BLE001 - the server works; only the first command will be slower
            log.warning("the Spark Connect server started but its warm-up failed: %s", exc)
    return server


def warm(server: Server) -> float:
    """Run once through what every command uses (a Delta or Parquet write and read, a shuffle, a
    ``mapInArrow`` on the Python workers), so the JIT, Delta's classes and the Python daemon are ready
    before the first command; returns the seconds it took. The session is closed afterwards."""
    import tempfile

    from pyspark.sql.connect.session import SparkSession

    began = time.perf_counter()
    spark = SparkSession.builder.remote(server.url).create()
    try:
        delta = "io.delta.sql.DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")
        with tempfile.TemporaryDirectory(prefix="fstore-connect-warm-") as scratch:
            rows = spark.range(100_000).selectExpr("id % 1000 AS k", "CAST(id AS DOUBLE) AS v",
                                                   "current_date() AS event_date")
            rows.write.format("delta" if delta else "parquet").partitionBy("event_date").save(f"{scratch}/t")
            read = spark.read.format("delta" if delta else "parquet").load(f"{scratch}/t")
            read.groupBy("k").agg({"v": "max"}).mapInArrow(_count_rows, "n long").collect()
    finally:
        spark.stop()
    return time.perf_counter() - began


def _count_rows(batches):
    import pyarrow as pa

    yield pa.RecordBatch.from_pydict({"n": [sum(b.num_rows for b in batches)]})


def _end(pid: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """SIGTERM the server (its shutdown hook stops Spark and its Python workers), then SIGKILL its group."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # start_new_session: the group is the server's own
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait(10)


def stop(settings: Settings, *, timeout: float = 30) -> Server | None:
    """Stop the recorded server and forget it; returns it (None when none was recorded)."""
    server = recorded(settings)
    if server is None:
        return None
    if _alive(server.pid):
        _end(server.pid, timeout=timeout)
    for name in ("server.json", "spark-connect.conf"):
        (state_dir(settings) / name).unlink(missing_ok=True)
    return server
