"""Private services for fault tests: a PostgreSQL cluster and a Redis server of the test's own.

A fault test stops, freezes and restarts these, never the shared services. Each runs on a
free loopback port in a tmp folder and is stopped by its PID when the test ends. PostgreSQL
refuses to run as root, so the cluster belongs to the ``postgres`` user (``runuser``).
"""
from __future__ import annotations

import gc
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False)


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


class PrivatePostgres:
    """``initdb`` + ``pg_ctl`` in a tmp folder owned by postgres; ``url``, ``stop()``, ``start()``, ``freeze()``."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"no PostgreSQL server binaries at {PG_BIN}")
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user to run PostgreSQL as")
        self.root = Path(tempfile.mkdtemp(prefix="fstore-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        done = _as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                            "--no-sync", "-E", "UTF8")
        assert done.returncode == 0, done.stderr[-2000:]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        done = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                            "-l", str(self.root / "log"), "-w", "-t", "30", "start")
        assert done.returncode == 0, done.stderr[-2000:] + (self.root / "log").read_text()[-2000:]

    def stop(self) -> None:
        done = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        assert done.returncode == 0, done.stderr[-2000:]

    def _signal_all(self, sig: int) -> None:
        pid = self.pid
        for target in [pid, *_children(pid)]:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: the server holds its sockets and answers nothing."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.thaw()
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of the test's own (no persistence) on a free port; ``freeze()``/``thaw()``/``restart()``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server on PATH")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()


class Load:
    """Keep-alive clients in threads sending one request shape; every answer is recorded with its time."""

    def __init__(self, port: int, body: dict, *, clients: int = 4, path: str = "/api/v1/serving/online",
                 timeout: float = 30) -> None:
        self.port, self.path, self.timeout = port, path, timeout
        self.body = json.dumps(body)
        self.records: list[tuple[float, float, int, dict | str]] = []  # (sent, seconds, status, body)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        # No cyclic GC while loading: a full collection over the thousands of recorded answers paused every
        # client thread for 0.08-0.13 s (measured, once per fault test), time the figures would blame on the server.
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        if self._gc_was_enabled:
            gc.enable()

    def _run(self) -> None:
        connection = None
        while not self._stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            sent = time.monotonic()
            try:
                connection.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                raw = response.read()
                status = response.status
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = raw[:200].decode(errors="replace")
            except (OSError, http.client.HTTPException) as exc:
                status, answer = -1, f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = None
            with self._lock:
                self.records.append((sent, time.monotonic() - sent, status, answer))

    def between(self, start: float, end: float) -> list[tuple[float, float, int, dict | str]]:
        """The requests sent in ``[start, end)``."""
        with self._lock:
            return [r for r in self.records if start <= r[0] < end]
