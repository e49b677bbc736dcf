"""A warm Spark for every fstore process: a Spark Connect server started from pyspark's own jars.

Each fstore process that computes on Spark (the CLI, the scheduler, the server, a job) would
otherwise start a driver JVM of its own: seconds of start-up, then a cold JIT and the first
Delta write's class loading in every command. ``fstore spark up`` (``start``) starts ONE
long-lived driver instead, pyspark's bundled ``SparkConnectServer`` run by ``spark-submit``,
with the configuration a local session gets (``session.session_conf``: spark-defaults.conf,
the cached delta-spark jars, the log4j file, the class archive, the local Python daemon), and
warms it up (a Delta write and a ``mapInArrow``, so the first command pays neither).

- **Loopback, with a token.** The server listens on 127.0.0.1 only and requires a bearer
  token (``spark.connect.authenticate.token``, given through the environment, never the
  command line): anyone who reaches a Spark Connect port runs code as its user.
- **Found automatically.** ``start`` records the server (pid, port, token, the settings it
  was started with) in ``SPARK_CONNECT_DIR/server.json`` (mode 0600). With ``SPARK_REMOTE``
  unset and ``SPARK_CONNECT=auto`` (the default), ``session.get_spark`` uses that server when
  it is alive AND was started for the same settings, fstore code and Python (``fingerprint``):
  its Python workers import the server's fstore, and its JVM holds the storage credentials,
  master and jars it was started with, so a server started elsewhere must not serve this
  process silently. Anything else starts a local session as before. ``SPARK_CONNECT=off``
  never looks. ``SPARK_REMOTE`` names a server explicitly (no fingerprint check); when it
  names the recorded server's port on loopback without a token, the recorded token is used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fstore.errors import Conflict, InvalidDefinition, Unavailable
from fstore.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 15002
HOST = "127.0.0.1"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"  # read by the server (and by pyspark's client)
FSTORE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the fstore package


@dataclass(frozen=True)
class Server:
    """What ``server.json`` records about a server ``start`` launched."""

    pid: int
    port: int
    token: str
    started: float
    log: str
    fingerprint: dict

    @property
    def address(self) -> str:
        """The URL without its token (safe to print)."""
        return f"sc://localhost:{self.port}"

    @property
    def url(self) -> str:
        """What a client connects with. pyspark sends a token over plain gRPC only to host ``localhost``
        (local channel credentials), so the host is named so, not 127.0.0.1."""
        return f"{self.address}/;token={self.token}"


def state_dir(settings: Settings) -> Path:
    return Path(settings.spark_connect_dir)


def state_file(settings: Settings) -> Path:
    return state_dir(settings) / "server.json"


def code_digest() -> str:
    """A digest of fstore's Python files (names, sizes, modification times): the server's Python workers
    import the fstore they were started with, so a changed tree must not be served by an older server."""
    digest = hashlib.sha256()
    package = FSTORE_ROOT / "fstore"
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def master(settings: Settings) -> str:
    """The Spark master a session for ``settings`` runs on (``MAX_COMPUTE_THREADS`` caps a local one)."""
    if settings.max_compute_threads and settings.spark_master.startswith("local"):
        return f"local[{settings.max_compute_threads}]"
    return settings.spark_master


def fingerprint(settings: Settings) -> dict:
    """What a server started for ``settings`` holds that changes results or access; a process uses a
    discovered server only when its own fingerprint is equal. The S3 secret is kept as a digest."""
    return {
        "master": master(settings), "storage_backend": settings.storage_backend,
        "s3_endpoint": settings.s3_endpoint, "s3_access_key": settings.s3_access_key,
        "s3_secret_key": hashlib.sha256(settings.s3_secret_key.encode()).hexdigest()[:16],
        "delta_writer": settings.delta_writer, "spark_jars_dir": settings.spark_jars_dir,
        "python": sys.executable, "fstore": str(FSTORE_ROOT), "code": code_digest(),
    }


def differences(settings: Settings, server: Server) -> list[str]:
    """The fingerprint entries in which ``server`` differs from a session for ``settings`` (names only)."""
    mine = fingerprint(settings)
    return sorted(k for k in set(mine) | set(server.fingerprint) if mine.get(k) != server.fingerprint.get(k))


def recorded(settings: Settings) -> Server | None:
    """The server ``server.json`` records, or None (no file, or one this version cannot read)."""
    try:
        data = json.loads(state_file(settings).read_text())
        return Server(**data)
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running Spark Connect server (its command line names the server's class)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        if Path("/proc/self").exists():
            return False
        try:  # no /proc (macOS): ask ps
            cmdline = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                                     timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return False
    return SERVER_CLASS.encode() in cmdline


def _listening(port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((HOST, port)) == 0


def running(settings: Settings) -> Server | None:
    """The recorded server when its process is alive and its port answers, else None."""
    server = recorded(settings)
    if server is None or not _alive(server.pid) or not _listening(server.port):
        return None
    return server


def remote_url(settings: Settings) -> str | None:
    """The Spark Connect URL ``get_spark`` uses for ``settings``, or None for a session of its own.

    ``SPARK_REMOTE`` when set (with the recorded token when it names the recorded server on loopback
    without one); otherwise, with ``SPARK_CONNECT=auto``, the running server ``fstore spark up`` recorded,
    if its fingerprint equals this process's."""
    if settings.spark_remote:
        return _with_token(settings, settings.spark_remote)
    if settings.spark_connect != "auto":
        return None
    server = running(settings)
    if server is None:
        return None
    differ = differences(settings, server)
    if differ:
        log.warning("not using the Spark Connect server at %s (pid %d): it was started for other settings (%s); "
                    "restart it here with `fstore spark down && fstore spark up`, or set SPARK_CONNECT=off",
                    server.address, server.pid, ", ".join(differ))
        return None
    log.info("using the Spark Connect server at %s (pid %d, started by fstore spark up)", server.address, server.pid)
    return server.url


def _with_token(settings: Settings, url: str) -> str:
    parts = urlsplit(url)
    if "token=" in url or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return url
    server = running(settings)
    if server is None or parts.port != server.port:
        return url
    return server.url


def server_conf(settings: Settings, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The server driver's Spark settings: a local session's (``session_conf``, ``extra`` included), on
    loopback, at ``port``."""
    from fstore.engine.session import session_conf

    conf = session_conf(settings, extra)
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


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by this user only (it may hold the token or S3 keys), replacing it whole."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


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
    from fstore.engine.session import ensure_java

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


def status(settings: Settings) -> dict:
    """What ``fstore spark status`` shows: the recorded server, whether it runs, whether this process would use it."""
    server = recorded(settings)
    if server is None:
        return {"running": False, "url": None, "state": str(state_file(settings))}
    alive = running(settings) is not None
    differ = differences(settings, server)
    used = settings.spark_remote == "" and settings.spark_connect == "auto" and alive and not differ
    return {"running": alive, "url": server.address, "pid": server.pid, "port": server.port,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(server.started)), "log": server.log,
            "state": str(state_file(settings)), "differs_from_here": differ, "used_here": used}
