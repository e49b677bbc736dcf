"""A warm Spark for every fstore process: which Spark Connect server a process uses (``remote_url``).

Starting and stopping the server is ``fstore.engine.connect_server``; this module is what every process
reads (``session.get_spark``). Each fstore process that computes on Spark (the CLI, the scheduler, the server, a job) would
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
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fstore.core.settings import Settings

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


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by this user only (it may hold the token or S3 keys), replacing it whole."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


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
