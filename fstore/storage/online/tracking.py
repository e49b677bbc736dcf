"""Redis server-assisted client-side caching: one dedicated connection that receives invalidations.

Redis remembers the keys each *tracked* connection reads (``CLIENT TRACKING on REDIRECT <id>``)
and, the moment one of them changes (a load, a push, an expiry, an eviction, ``FLUSHDB``), sends
its name to the connection ``<id>``: this tracker's, subscribed to ``__redis__:invalidate``
(RESP2; the read connections stay RESP2 too, so no push message ever lands among their replies).
A key is reported once per read, so a value cached from a tracked read stays right until a
message says otherwise.

redis-py's own client-side cache (``cache_config``, ``protocol=3``) does not fit fstore's read
path: it caches single commands sent through ``send_command`` (fstore packs its pipelined
``HMGET``s by hand and sends them with ``send_packed_command``, which it passes through uncached),
it applies invalidations only when the same connection is next used, and it refuses servers
older than Redis 7.4.

The cache must never answer from values whose invalidations could have been missed, so:

- ``state`` is ``(generation, client id)`` while tracking is established, else None. Each
  (re)connection starts a new generation; a read connection is switched to the current
  generation's client id before its read (``RedisOnlineStore.read_checked`` prepends
  ``CLIENT TRACKING on REDIRECT <id>`` to the same pipelined write: no extra round trip).
- When the connection drops, or a ``PING`` goes unanswered for ``ping_seconds``, ``state``
  becomes None first, then ``on_invalidate(None)`` tells the cache to drop everything; the
  tracker reconnects in the background (every ``retry_seconds``) and starts a new generation.
- A forked child inherits no thread and shares no socket: its copy of a tracker starts a
  connection of its own (``os.register_at_fork``; serving forgets its inherited cache then too).
- ``sync()`` is a barrier: a ``PING`` on the tracking connection, whose answer comes after every
  invalidation Redis queued before it, so when it returns the invalidations of every write that
  finished before the call have been applied (a process's own pushes use it: read-your-writes).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Callable, Sequence

import redis

log = logging.getLogger("fstore.storage.online")

CHANNEL = b"__redis__:invalidate"
_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)

OnInvalidate = Callable[[Sequence[bytes] | None], None]


class InvalidationTracker:
    """Keeps one tracking connection to Redis and passes each invalidation to ``on_invalidate``
    (a list of key names, or None: drop everything). Started by ``start()``, stopped by ``close()``."""

    def __init__(self, connect: Callable[[], redis.Connection], on_invalidate: OnInvalidate, *,
                 ping_seconds: float = 1.0, retry_seconds: float = 0.2) -> None:
        self._connect = connect
        self.on_invalidate = on_invalidate
        self.ping_seconds = ping_seconds
        self.retry_seconds = retry_seconds
        self.state: tuple[int, int] | None = None  # (generation, client id) while tracking is established
        self.invalidations = 0  # keys reported changed (a flush counts once in ``flushes``)
        self.flushes = 0  # the cache was told to drop everything (connection lost, FLUSHDB/FLUSHALL)
        self._generation = 0
        self._flushed = 0  # the last generation whose end was flushed
        self._connection: redis.Connection | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pings_sent = self._pings_answered = 0
        self._waiting_since: float | None = None  # when the oldest unanswered PING (at most) was sent
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public -----------------------------------------------------------------------------

    def start(self) -> "InvalidationTracker":
        if self._thread is None:
            _TRACKERS.add(self)
            self._thread = threading.Thread(target=self._run, name="fstore-redis-tracking", daemon=True)
            self._thread.start()
        return self

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is not here and its socket is not ours; start afresh."""
        self.state, self._connection, self._thread = None, None, None
        self._send_lock, self._cond = threading.Lock(), threading.Condition()
        closed, self._closed = self._closed.is_set(), threading.Event()
        if closed:
            self._closed.set()
        else:  # (the cache the parent filled is not the child's: fstore.serving.online forgets it at fork)
            self.start()

    def close(self) -> None:
        """Stop tracking: the cache is told to drop everything, the connection is closed."""
        self._closed.set()
        connection = self._connection
        if connection is not None:
            connection.disconnect()  # wakes the thread's read
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def wait_established(self, timeout: float) -> bool:
        """Wait until tracking is established (a test or a tool; serving never waits)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.state is not None or self._closed.is_set(), timeout) \
                and self.state is not None

    def sync(self, timeout: float = 1.0) -> bool:
        """Return once every invalidation Redis queued before this call has been applied (True), or
        False when tracking is not established or the answer did not come within ``timeout``."""
        state = self.state
        if state is None:
            return False
        try:
            seq = self._ping()
        except _ERRORS:
            return False
        with self._cond:
            return self._cond.wait_for(lambda: self._pings_answered >= seq or self.state != state, timeout) \
                and self.state == state

    def reset(self, reason: str) -> None:
        """A read connection could not be tracked (Redis refused its ``CLIENT TRACKING``): stop answering
        from the cache at once, and let the thread flush it and track anew."""
        with self._cond:
            if self.state is None:
                return
            self.state = None
            self._cond.notify_all()
        log.warning("Redis refused to track a read connection (%s): online cache flushed, tracking again", reason)
        with self._send_lock:
            connection = self._connection
        if connection is not None:
            connection.disconnect()  # the thread's read fails: it flushes and reconnects

    # -- the connection's thread -------------------------------------------------------------

    def _ping(self) -> int:
        with self._send_lock:
            connection = self._connection
            if connection is None:
                raise redis.ConnectionError("tracking connection not established")
            with self._cond:
                if self._pings_sent == self._pings_answered:
                    self._waiting_since = time.monotonic()
                self._pings_sent += 1
                seq = self._pings_sent
            connection.send_command("PING", check_health=False)
        return seq

    def _run(self) -> None:
        warned = False  # one warning per outage, not one per failed reconnect (every ``retry_seconds``)
        while not self._closed.is_set():
            try:
                self._track()
            except _ERRORS as exc:
                if not self._closed.is_set() and (self.state is not None or not warned):
                    log.warning("Redis tracking connection lost (%s): online cache flushed and bypassed until it is "
                                "back", exc)
                warned = True
            except Exception:  # noqa: BLE001 - never let the thread die: the cache would stay bypassed for good
                log.exception("Redis tracking failed: online cache flushed and bypassed until it is back")
            finally:
                self._lost()
            self._closed.wait(self.retry_seconds)

    def _track(self) -> None:
        connection = self._connect()
        with self._send_lock:
            self._connection = connection
            self._pings_sent = self._pings_answered = 0
            self._waiting_since = None
        connection.connect()
        connection.send_command("CLIENT", "ID", check_health=False)
        client_id = int(connection.read_response())
        connection.send_command("SUBSCRIBE", CHANNEL, check_health=False)
        connection.read_response()  # [subscribe, channel, 1]
        with self._cond:
            self._generation += 1
            self.state = (self._generation, client_id)
            self._cond.notify_all()
        log.info("Redis tracking established (client id %d): online cache on", client_id)
        while not self._closed.is_set():
            if not connection.can_read(timeout=self.ping_seconds):
                with self._cond:
                    since = self._waiting_since if self._pings_sent > self._pings_answered else None
                if since is not None and time.monotonic() - since >= self.ping_seconds:
                    raise redis.TimeoutError(f"no answer to PING within {self.ping_seconds}s")
                if since is None:
                    self._ping()
                continue
            self._handle(connection.read_response())

    def _handle(self, message) -> None:
        kind = message[0]
        if kind == b"message" and message[1] == CHANNEL:
            keys = message[2]
            if keys is None:  # FLUSHDB / FLUSHALL
                self.flushes += 1
            else:
                self.invalidations += len(keys)
            self.on_invalidate(keys)
        elif kind == b"pong":
            with self._cond:
                self._pings_answered += 1
                # the next unanswered PING is timed from now: never early (an answer only delays the check)
                self._waiting_since = time.monotonic() if self._pings_sent > self._pings_answered else None
                self._cond.notify_all()

    def _lost(self) -> None:
        """Stop answering from the cache, then empty it; close the connection."""
        with self._cond:
            self.state = None
            self._cond.notify_all()
            ended = self._flushed < self._generation  # values may have been cached under this generation
            self._flushed = self._generation
        with self._send_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
        if ended:
            self.flushes += 1
            self.on_invalidate(None)


_TRACKERS: "weakref.WeakSet[InvalidationTracker]" = weakref.WeakSet()


def _restart_after_fork() -> None:
    for tracker in list(_TRACKERS):
        tracker._after_fork()


os.register_at_fork(after_in_child=_restart_after_fork)


def tracking_command(client_id: int) -> bytes:
    """The RESP bytes of ``CLIENT TRACKING on REDIRECT <client_id>`` (prepended to a read's pipeline)."""
    cid = b"%d" % client_id
    return b"*5\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$8\r\nREDIRECT\r\n$%d\r\n%s\r\n" % (len(cid), cid)


__all__ = ["InvalidationTracker", "tracking_command", "CHANNEL"]
