"""Bounded registry calls on PostgreSQL: a frozen or stopped database costs a caller seconds, not forever.

- **Ping on checkout, bounded.** SQLAlchemy's ``pool_pre_ping`` waits as long as the
  server does; ours runs the same ``SELECT 1`` under the watchdog, and a failed ping
  makes the pool replace the connection (a restarted server costs no request).
- **A watchdog for frozen servers.** ``statement_timeout`` is enforced by the server,
  so a server that is frozen (SIGSTOP, a hung host, a lost network path whose kernel
  still ACKs) never answers and libpq waits forever. Every statement, commit and ping
  is armed with a deadline; one thread shuts down the socket of a call past it, and
  libpq then fails the call at once. The thread is a real OS thread under gevent too
  (psycopg2 blocks the whole hub, so a greenlet would never run).
- **One error, one log line.** A connection or timeout failure becomes ``Unavailable``
  (503, ``code: unavailable``) naming the registry; the first of an outage logs one
  warning, the first success after it one line with how long it lasted.
"""
from __future__ import annotations

import _thread
import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidatePoolError

from fstore.core.errors import Unavailable

log = logging.getLogger("fstore.registry")
_TICK = 0.05


def _os_thread_primitives():
    """``start_new_thread`` and ``sleep`` of the OS, even when gevent has patched them."""
    try:
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            return monkey.get_original("_thread", "start_new_thread"), monkey.get_original("time", "sleep")
    except ImportError:
        pass
    return _thread.start_new_thread, time.sleep


class Watchdog:
    """Shuts down the socket of a database connection whose call outlived its deadline."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int]] = {}  # id(dbapi connection) -> (deadline, socket fd)
        self._lock = _thread.allocate_lock()  # an OS lock: the watchdog is an OS thread under gevent too
        self._started = False
        self.cut = 0  # connections cut off (tests and the log read it)

    def arm(self, dbapi_connection: Any, seconds: float) -> None:
        try:
            fd = dbapi_connection.fileno()
        except Exception:  # closed already: the call will fail by itself
            return
        with self._lock:
            self._armed[id(dbapi_connection)] = (time.monotonic() + seconds, fd)
            if not self._started:
                self._started = True
                start, _ = _os_thread_primitives()
                start(self._run, ())

    def disarm(self, dbapi_connection: Any) -> None:
        if self._armed:
            with self._lock:
                self._armed.pop(id(dbapi_connection), None)

    def _run(self) -> None:
        _, sleep = _os_thread_primitives()
        while True:
            sleep(_TICK)
            now = time.monotonic()
            with self._lock:
                late = [(key, fd) for key, (deadline, fd) in self._armed.items() if deadline <= now]
                for key, _ in late:
                    del self._armed[key]
            for _, fd in late:
                self.cut += 1
                _shutdown(fd)


def _shutdown(fd: int) -> None:
    """End the TCP connection under ``fd`` both ways; libpq's wait returns and the call fails."""
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


class Outage:
    """Logs the first failure of an outage and the first success after it; nothing in between.

    While the registry is down, one new connection is tried per ``PROBE_SECONDS``; the other
    callers fail at once instead of each paying the connect timeout (a write during an outage
    is a 503 in milliseconds, its audit record too).
    """

    PROBE_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._last_try = 0.0
        self.last_error = ""

    def may_connect(self) -> bool:
        """True when a new connection may be tried now (always, unless the registry is down)."""
        if self.down_since is None:
            return True
        with self._lock:
            now = time.monotonic()
            if now - self._last_try < self.PROBE_SECONDS:
                return False
            self._last_try = now
            return True

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._last_try = time.monotonic()
            self.last_error = _one_line(error)
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        log.warning("registry database unreachable: %s (requests that need it answer 503 until it is back)",
                    _one_line(error))

    def ok(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.warning("registry database reachable again after %.1f s", time.monotonic() - since)


WATCHDOG = Watchdog()


def guard_engine(engine: Engine, *, connect_seconds: float, statement_seconds: float) -> Engine:
    """Install the bounded ping, the watchdog and the error mapping on a PostgreSQL ``engine``."""
    outage = Outage()
    engine.registry_outage = outage  # type: ignore[attr-defined]  (serving's snapshot reads it)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, _cargs, _cparams):
        if not outage.may_connect():
            raise Unavailable(f"registry database unavailable: {outage.last_error} (next try within "
                              f"{Outage.PROBE_SECONDS:g} s)")

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, _record, _proxy) -> None:
        WATCHDOG.arm(dbapi_connection, connect_seconds)
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:  # the pool discards this connection and tries a new one
            # Every pooled connection is as suspect as this one: the pool replaces them all.
            raise InvalidatePoolError(f"registry connection failed its ping: {_one_line(exc)}") from exc
        finally:
            WATCHDOG.disarm(dbapi_connection)
        outage.ok()

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection, _record) -> None:
        if dbapi_connection is not None:
            WATCHDOG.disarm(dbapi_connection)

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn, _cursor, _statement, _parameters, _context, _many) -> None:
        WATCHDOG.arm(conn.connection.dbapi_connection, statement_seconds)

    @event.listens_for(engine, "after_cursor_execute")
    def _disarm(conn, _cursor, _statement, _parameters, _context, _many) -> None:
        WATCHDOG.disarm(conn.connection.dbapi_connection)

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _arm_end(conn) -> None:  # disarmed at checkin
        if conn.connection.dbapi_connection is not None:
            WATCHDOG.arm(conn.connection.dbapi_connection, statement_seconds)

    @event.listens_for(engine, "handle_error")
    def _unavailable(context) -> None:
        import psycopg2

        original = context.original_exception
        if context.is_disconnect or isinstance(original, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            outage.failed(original)
            raise Unavailable(f"registry database unavailable: {_one_line(original)}") from None

    return engine


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "…") if len(text) > 300 else text or type(error).__name__
