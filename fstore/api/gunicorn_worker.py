"""The gunicorn worker fstore serves with: gunicorn's ``gthread`` worker, spreading connections and
closing keep-alive connections cleanly on shutdown.

**Spread.** All workers wait on the master's one listening socket; the worker that wakes first takes
each new connection, and keep-alive clients stay where they landed: with 4 keep-alive clients on 2
stock gthread workers, one worker held all 4 while the other idled (p50 2.1 ms against 1.3 ms spread).
``reuse_port`` does not help (one socket, bound once by the master). Here each worker publishes how
many connections it holds in a table shared by all workers (created in the master before the fork);
a worker holding more than the least loaded one leaves a new connection to that one, for at most
``HAND_OFF_SECONDS`` (a worker that does not take it up — busy, or stopping — does not strand it).
Connections that landed unevenly all the same (the other workers were still booting, or too busy to take
them within that time on a loaded machine) are moved afterwards: a worker holding two or more
connections more than the least loaded one answers a request with ``Connection: close``, and its
client's reconnection goes to the less loaded worker — one reconnect per connection moved.

**Shutdown.** On SIGTERM the stock worker stops accepting, finishes the requests in flight (their
responses say ``Connection: close``) and exits, closing its idle keep-alive connections under their
clients: a client that sent its next request at that moment lost it (BrokenPipe, RemoteDisconnected).
Here, after the requests in flight, the worker answers the next request of each idle keep-alive
connection for up to ``GUNICORN_DRAIN_SECONDS`` (default 1) with ``Connection: close``, so its client
reconnects (to another worker, or finds the server gone before sending anything), then closes the
connections still idle.
"""
from __future__ import annotations

import multiprocessing
import os
import selectors
import time

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 64  # workers of one server; a slot is a worker's age modulo this
HAND_OFF_SECONDS = 0.05
# (pid, open connections) per slot; shared by the master's children because it is made before they fork.
_TABLE = multiprocessing.RawArray("q", 2 * SLOTS)


def forget(pid: int) -> None:
    """Drop an exited worker from the table (the master's ``child_exit``)."""
    for slot in range(SLOTS):
        if _TABLE[2 * slot] == pid:
            _TABLE[2 * slot] = _TABLE[2 * slot + 1] = 0


def drain_seconds() -> float:
    value = os.environ.get("GUNICORN_DRAIN_SECONDS", "1")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"GUNICORN_DRAIN_SECONDS={value!r} is not a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"GUNICORN_DRAIN_SECONDS={value!r} must be 0 or more")
    return seconds


class SpreadThreadWorker(ThreadWorker):
    """``gthread`` with connections spread over the workers and a clean close of keep-alive on shutdown."""

    def init_process(self):
        self._slot = self.age % SLOTS
        self._declined_since: float | None = None
        self._drain = drain_seconds()
        _TABLE[2 * self._slot], _TABLE[2 * self._slot + 1] = os.getpid(), 0
        super().init_process()

    # -- spread -------------------------------------------------------------------------------------

    def _publish(self) -> None:
        _TABLE[2 * self._slot + 1] = self.nr_conns

    def _fewest_elsewhere(self) -> int | None:
        """The fewest connections another live worker holds (None: no other worker yet)."""
        me = os.getpid()
        others = [_TABLE[2 * s + 1] for s in range(SLOTS) if _TABLE[2 * s] not in (0, me)]
        return min(others) if others else None

    def _others_hold_fewer(self) -> bool:
        fewest = self._fewest_elsewhere()
        return fewest is not None and self.nr_conns > fewest

    def handle_request(self, req, conn):
        fewest = self._fewest_elsewhere()
        if self.alive and fewest is not None and self.nr_conns >= fewest + 2:
            req.must_close = True  # "Connection: close": the client reconnects, to a less loaded worker
        return super().handle_request(req, conn)

    def accept(self, server, listener):
        if self.alive and self._others_hold_fewer():
            now = time.monotonic()
            if self._declined_since is None:
                self._declined_since = now
            if now - self._declined_since < HAND_OFF_SECONDS:
                time.sleep(0.001)  # the listener stays readable: the less loaded worker takes it meanwhile
                return
        self._declined_since = None
        super().accept(server, listener)
        self._publish()

    def finish_request(self, fs):  # a request done: its connection kept or closed
        if not self.alive and not fs.cancelled() and fs.exception() is None and fs.result()[0]:
            # answered keep-alive while the worker was alive, done after it began to stop: gunicorn would close it
            # under its client, whose next request (sent on the strength of that answer) would be lost; the
            # drain answers that request "Connection: close" instead
            with self._lock:
                self._keep.append(fs.result()[1])
            return
        super().finish_request(fs)
        self._publish()

    def murder_keepalived(self):  # idle connections past the keep-alive timeout closed
        super().murder_keepalived()
        self._publish()

    # -- shutdown -----------------------------------------------------------------------------------

    def run(self):
        super().run()  # returns once stopping: listeners closed, requests in flight finished
        self._drain_idle()

    def _drain_idle(self) -> None:
        """Answer the next request of each idle keep-alive connection with ``Connection: close`` (the
        worker is no longer alive, so gunicorn closes every response), then close what stays idle."""
        deadline = time.monotonic() + self._drain
        with selectors.DefaultSelector() as waiting:
            while (left := deadline - time.monotonic()) > 0:
                with self._lock:  # idle ones, and those a request finishing after the stop hands over (finish_request)
                    idle, self._keep = list(self._keep), type(self._keep)()
                for conn in idle:
                    waiting.register(conn.sock, selectors.EVENT_READ, conn)
                if not waiting.get_map() and all(f.done() for f in self.futures):
                    break
                self.notify()
                for key, _ in waiting.select(min(left, 0.05)):
                    waiting.unregister(key.fileobj)
                    conn = key.data
                    conn.init()
                    self.handle(conn)  # one request, answered "Connection: close"
                    conn.close()
            for key in list(waiting.get_map().values()):
                key.data.close()
        _TABLE[2 * self._slot] = _TABLE[2 * self._slot + 1] = 0
