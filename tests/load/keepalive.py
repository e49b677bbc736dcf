"""Keep-alive clients against a gunicorn server, for the connection-spread and shutdown tests.

``Client`` is one keep-alive ``http.client`` connection in a loop of ``GET /health``; it records each
request's outcome: ``ok`` (an answer), ``lost`` (sent on an open connection and never answered: the
BrokenPipe/RemoteDisconnected a client cannot safely retry), ``lost_new`` (the same on a connection's first
request: one accepted into the listen backlog just as the server closed its listeners) or ``refused`` (a new
connection refused: nothing was sent). ``owners(port)`` says which process holds each established server-side connection.
"""
from __future__ import annotations

import http.client
import re
import subprocess
import threading
import time


class Client(threading.Thread):
    def __init__(self, port: int, *, seconds: float, pause: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.seconds, self.pause = port, seconds, pause
        self.outcomes = {"ok": 0, "lost": 0, "lost_new": 0, "refused": 0}
        self.closed_by_server = 0  # answers carrying "Connection: close"
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        conn, fresh = None, True
        while time.monotonic() < deadline and not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.connect()
                except OSError:
                    self.outcomes["refused"] += 1
                    conn = None
                    time.sleep(0.05)
                    continue
                fresh = True
            try:
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.outcomes["lost_new" if fresh else "lost"] += 1
                self.errors.append(type(exc).__name__)
                conn.close()
                conn = None
                continue
            self.outcomes["ok"] += 1
            fresh = False
            if response.getheader("Connection", "").lower() == "close":
                self.closed_by_server += 1
                conn.close()
                conn = None
            time.sleep(self.pause)
        if conn is not None:
            conn.close()


def owners(port: int) -> list[int]:
    """The PID owning each established server-side TCP connection on 127.0.0.1:``port`` (from ``ss``)."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    return [int(m.group(1)) for line in out.splitlines() for m in [re.search(r"pid=(\d+)", line)] if m]
