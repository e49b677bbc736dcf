"""The Redis online store: hashes per entity key, Lua for atomic newer-wins writes, pipelined one-trip reads.

Writes go through one Lua script taking many keys per call: for each key it compares
the stored ``@ts`` with the write's and drops an older write, atomically, so a
backfill never moves serving backwards even with concurrent writers. The script
also keeps ``fsmeta:<set>``, the newest event time written, for freshness. Each load
ends by writing ``fstore:loaded:<set>``, its marker (``fstore.storage.online.marker``).

Reads are one round trip whatever the number of keys and feature sets: ``HMGET @ts f1..fn``
per key, packed by hand and sent pipelined in one write, the replies read back together.
(A Lua script doing the same HMGETs inside Redis cost more: 100 keys took 540 µs of Redis
time against 245 µs pipelined, and one key 35 µs more per request, measured.)

With ``ONLINE_CACHE=tracking`` (``track``) every read connection is tracked by Redis and its
invalidations go to one dedicated connection (``fstore.storage.online.tracking``); a write made
by this process returns once its invalidations are applied here, so this process reads its writes.

Reliability: a bounded connection pool, short socket timeouts, bounded retries with
exponential backoff (redis-py ``Retry``), and a circuit breaker that fails fast with
``Unavailable`` while Redis is down and closes by itself once a probe succeeds.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping, Sequence

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from fstore.core.errors import Unavailable
from fstore.storage.online.base import NULL, TS_FIELD, Codec, EncodedRow, OnlineStore, key_prefix
from fstore.storage.online.breaker import CircuitBreaker, CircuitOpen
from fstore.storage.online.marker import COMPLETE_FIELD, LoadState, marker_key, parse_marker
from fstore.storage.online.tracking import InvalidationTracker, OnInvalidate, tracking_command

# The newer-wins loop over KEYS[first..]; ``first`` is set by the variant below that runs it. ARGV: the
# number of fields nf, the expiry span in ms after a row's event time (0: none; ``Codec.keep_seconds``),
# the nf field names, then per key its event time (micros) and nf values.
_NEWER_WINS = """
local nf = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local a = nf + 3
local written = 0
local newest = nil
local newest_text = nil
local args = {'@ts', ''}
for j = 1, nf do args[2 * j + 1] = ARGV[2 + j] end
for i = first, #KEYS do
  local ts_text = ARGV[a]
  local ts = tonumber(ts_text)
  local cur = redis.call('HGET', KEYS[i], '@ts')
  if (not cur) or tonumber(cur) <= ts then
    -- one argument table for every key: field names set once above, values overwritten here
    args[2] = ts_text
    for j = 1, nf do args[2 * j + 2] = ARGV[a + j] end
    redis.call('HSET', KEYS[i], unpack(args))
    -- the key lives until its event time (micros) plus the set's TTL (ms), then Redis drops it
    if keep > 0 then redis.call('PEXPIREAT', KEYS[i], string.format('%d', math.floor(ts / 1000) + keep)) end
    written = written + 1
  end
  if (not newest) or ts > newest then
    newest = ts
    newest_text = ts_text
  end
  a = a + 1 + nf
end
"""
# One Redis: KEYS[1] is ``fsmeta:<set>``, kept at the newest event time written, in the same call.
_RAISE_META = """if newest then
  local m = redis.call('GET', KEYS[1])
  if (not m) or tonumber(m) < newest then redis.call('SET', KEYS[1], newest_text) end
end
"""
_WRITE_LUA = "local first = 2" + _NEWER_WINS + _RAISE_META + "return written\n"
# A Redis Cluster: a call's keys must share one slot, which ``fsmeta:<set>`` does not, so every key
# is a data key and the call answers {written, newest event time}; the caller then raises ``fsmeta``
# (``fstore.storage.online.redis_cluster``).
CLUSTER_WRITE_LUA = "local first = 1" + _NEWER_WINS + "return {written, newest_text}\n"

WRITE_SHA = hashlib.sha1(_WRITE_LUA.encode()).hexdigest()
CLUSTER_WRITE_SHA = hashlib.sha1(CLUSTER_WRITE_LUA.encode()).hexdigest()

# Fields written beside a row only while the hash still holds that row (@ts equal): ARGV = nf, the field
# names, then per key its event time and nf values.
_WRITE_AT_LUA = """
local nf = tonumber(ARGV[1])
local a = nf + 2
local written = 0
local args = {}
for j = 1, nf do args[2 * j - 1] = ARGV[1 + j] end
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], '@ts') == ARGV[a] then
    for j = 1, nf do args[2 * j] = ARGV[a + j] end
    redis.call('HSET', KEYS[i], unpack(args))
    written = written + 1
  end
  a = a + 1 + nf
end
return written
"""
WRITE_AT_SHA = hashlib.sha1(_WRITE_AT_LUA.encode()).hexdigest()

# Compare-and-set (``OnlineStore.swap``): KEYS[first..] the hashes (KEYS[1] ``fsmeta:<set>`` when first = 2);
# ARGV = nf, the guard field, the expiry span in ms after the new @ts (0: none), the nf field names, then per key: the expected @ts ('' = absent), the SHA-1 of
# the expected guard value ('' = absent), the new @ts and nf values. Answers 1/0 per key.
_SWAP_BODY = """
local nf = tonumber(ARGV[1])
local guard = ARGV[2]
local keep = tonumber(ARGV[3])
local a = nf + 4
local out = {}
local newest = nil
local newest_text = nil
local args = {'@ts', ''}
for j = 1, nf do args[2 * j + 1] = ARGV[3 + j] end
for i = first, #KEYS do
  local cur = redis.call('HMGET', KEYS[i], '@ts', guard)
  local g = cur[2]
  local same_g
  if g then same_g = redis.sha1hex(g) == ARGV[a + 1] else same_g = ARGV[a + 1] == '' end
  if (cur[1] or '') == ARGV[a] and same_g then
    args[2] = ARGV[a + 2]
    for j = 1, nf do args[2 * j + 2] = ARGV[a + 2 + j] end
    redis.call('HSET', KEYS[i], unpack(args))
    out[#out + 1] = 1
    local ts = tonumber(ARGV[a + 2])
    -- the key now lives until its new event time plus the set's TTL, as a write sets it
    if keep > 0 then redis.call('PEXPIREAT', KEYS[i], string.format('%d', math.floor(ts / 1000) + keep)) end
    if (not newest) or ts > newest then newest = ts; newest_text = ARGV[a + 2] end
  else
    out[#out + 1] = 0
  end
  a = a + 3 + nf
end
"""
_SWAP_LUA = "local first = 2" + _SWAP_BODY + _RAISE_META + "return out\n"
CLUSTER_SWAP_LUA = "local first = 1" + _SWAP_BODY + "out[#out + 1] = newest_text or ''\nreturn out\n"
SWAP_SHA = hashlib.sha1(_SWAP_LUA.encode()).hexdigest()
CLUSTER_SWAP_SHA = hashlib.sha1(CLUSTER_SWAP_LUA.encode()).hexdigest()
_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def meta_key(feature_set: str) -> str:
    return f"fsmeta:{feature_set}"


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_write(codec_fields: Sequence[str], feature_set: str, keys: Sequence[bytes], payloads: Sequence[bytes], *,
               keep_ms: int, cluster: bool = False) -> bytes:
    """The RESP bytes of one ``EVALSHA`` write call.

    ``keys`` are RESP bulk strings of the hash keys; ``payloads`` per key the RESP
    bulk strings of its ``@ts`` then each feature value, in ``codec_fields`` order.
    Built by hand so the bulk loader (which gets these pieces ready-made from
    Spark) does no per-value work in Python. ``cluster``: the cluster variant of the
    script (``CLUSTER_WRITE_LUA``: no ``fsmeta`` key; ``keys`` must share one slot). ``keep_ms``: each key
    written expires that long after its event time (0: never).
    """
    nf = len(codec_fields)
    numkeys = len(keys) + (0 if cluster else 1)
    nargs = 3 + numkeys + 2 + nf + len(keys) * (1 + nf)
    head = [b"*%d\r\n$7\r\nEVALSHA\r\n" % nargs, bulk((CLUSTER_WRITE_SHA if cluster else WRITE_SHA).encode()),
            bulk(b"%d" % numkeys)]
    if not cluster:
        head.append(bulk(meta_key(feature_set).encode()))
    head.extend(keys)
    head.append(bulk(b"%d" % nf))
    head.append(bulk(b"%d" % keep_ms))
    head.extend(bulk(f.encode()) for f in codec_fields)
    head.extend(payloads)
    return b"".join(head)


def encoded_payload(row: EncodedRow) -> bytes:
    return bulk(b"%d" % row.ts) + b"".join(bulk(v) for v in row.values)


_READ_BUDGET = threading.local()  # .deadline: when the current thread's read must be done (see _pipelined)


class _WithinReadBudget:
    """Mixed into the pool's connection class: connecting (TCP, then the handshake Redis answers) takes only
    what is left of the current read's ``REDIS_TIMEOUT``. On its own each stage has the full timeout, so a
    read that waited for a free connection and then connected anew during a stall took up to twice it."""

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_READ_BUDGET, "deadline", None)
        if self._sock is not None or deadline is None:
            return super().connect_check_health(*args, **kwargs)
        left = deadline - time.monotonic()
        if left <= 0:
            raise redis.TimeoutError("Timeout connecting to server: REDIS_TIMEOUT spent waiting for a connection")
        full = self.socket_connect_timeout, self.socket_timeout
        self.socket_connect_timeout = self.socket_timeout = left
        try:
            super().connect_check_health(*args, **kwargs)
        finally:
            self.socket_connect_timeout, self.socket_timeout = full
        if self._sock is not None:
            self._sock.settimeout(full[1])  # later reads get the full timeout; this one is cut by _bound


class RedisOnlineStore(OnlineStore):
    """Online store on one Redis (``redis://``, ``rediss://`` or ``unix://`` URL)."""

    def __init__(self, url: str, *, pool_size: int = 32, timeout: float = 0.25, retries: int = 1,
                 breaker: CircuitBreaker | None = None, write_batch: int = 500) -> None:
        self.url = url
        self.timeout = timeout
        self.write_batch = write_batch
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One retry, on a connection error only (a pooled connection Redis closed: reconnect and resend).
            # Never on a timeout: a stalled Redis would make a request wait the timeout once per attempt.
            retry=Retry(ExponentialBackoff(cap=0.01, base=0.001), retries, supported_errors=(redis.ConnectionError,)),
            retry_on_error=[redis.ConnectionError], health_check_interval=0)
        cls = self._base_connection_class = self._pool.connection_class
        self._pool.connection_class = type(f"Budgeted{cls.__name__}", (_WithinReadBudget, cls), {})
        self._client = redis.Redis(connection_pool=self._pool)
        # While open, a background PING every 0.2 s closes the breaker within ~0.2 s of Redis answering.
        self.breaker = breaker or CircuitBreaker(threshold=3, probe_seconds=0.2, probe=self._client.ping)
        # Read connections kept out of the pool between reads (see _borrow), at most half the pool.
        self._idle: list[redis.Connection] = []
        self._idle_max = pool_size // 2  # none with a pool of 1 (a loader): its one connection stays in the pool
        self._idle_pid = os.getpid()
        self._hmget_cache: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
        self._tracker: InvalidationTracker | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one Redis operation behind the breaker; connection trouble becomes ``Unavailable``."""
        try:
            self.breaker.before_call()
        except CircuitOpen as exc:
            raise Unavailable(f"online store unavailable: Redis at {self._where()} is failing ({exc.last_error}); "
                              f"retrying in {exc.retry_in:.2f}s") from None
        try:
            result = fn()
        except _ERRORS as exc:
            if isinstance(exc, redis.ConnectionError) and "No connection available" in str(exc):
                # Our own pool is exhausted (too many concurrent callers): Redis is not at fault, keep the breaker closed.
                raise Unavailable(f"online store unavailable: all {self._pool.max_connections} connections to "
                                  f"Redis are busy (REDIS_POOL_SIZE)") from None
            self.breaker.failure(exc)
            raise Unavailable(f"online store unavailable: Redis at {self._where()}: {exc}") from None
        except BaseException:
            self.breaker.success()  # Redis answered (with an error reply): it is up
            raise
        self.breaker.success()
        return result

    def _where(self) -> str:
        kwargs = self._pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def _evalsha(self, sha: str, script: str, numkeys: int, *args: Any) -> Any:
        try:
            return self._client.evalsha(sha, numkeys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script)
            return self._client.evalsha(sha, numkeys, *args)

    # -- contract --------------------------------------------------------------------------

    def write_encoded(self, codec: Codec, rows: Sequence[EncodedRow]) -> int:
        fields = codec.feature_names
        written = 0
        for start in range(0, len(rows), self.write_batch):
            chunk = rows[start:start + self.write_batch]
            args: list[Any] = [meta_key(codec.name), *(r.key for r in chunk), len(fields), codec.keep_seconds * 1000,
                               *fields]
            for r in chunk:
                args.append(r.ts)
                args.extend(r.values)
            written += int(self._call(lambda: self._evalsha(WRITE_SHA, _WRITE_LUA, len(chunk) + 1, *args)))
        self._synced()
        return written

    def write_at(self, name: str, fields: Sequence[str], rows: Sequence[tuple[str, int, Sequence[bytes]]]) -> int:
        written = 0
        for start in range(0, len(rows), self.write_batch):
            chunk = rows[start:start + self.write_batch]
            args: list[Any] = [*(key for key, _, _ in chunk), len(fields), *fields]
            for _, ts, values in chunk:
                args.append(b"%d" % ts)
                args.extend(values)
            written += int(self._call(lambda: self._evalsha(WRITE_AT_SHA, _WRITE_AT_LUA, len(chunk), *args)))
        self._synced()
        return written

    def swap(self, name: str, fields: Sequence[str], guard: str,
             rows: Sequence[tuple[str, int | None, bytes | None, int, Sequence[bytes]]], *,
             keep_ms: int = 0) -> list[bool]:
        """``OnlineStore.swap`` in one script call per ``write_batch`` keys (the guard compared by its SHA-1, so
        a large value is not sent twice); the same call raises ``fsmeta``."""
        return self.swap_keys(name, fields, guard, rows, keep_ms=keep_ms)[0]

    def swap_keys(self, name: str, fields: Sequence[str], guard: str,
                  rows: Sequence[tuple[str | bytes, int | None, bytes | None, int, Sequence[bytes]]], *,
                  cluster: bool = False, keep_ms: int = 0) -> tuple[list[bool], int | None]:
        """``swap`` and the newest event time written. ``cluster``: the script variant without ``fsmeta``
        (``rows``' keys share one slot; ``RedisClusterOnlineStore.swap`` raises ``fsmeta`` after)."""
        out: list[bool] = []
        newest = None
        for start in range(0, len(rows), self.write_batch):
            chunk = rows[start:start + self.write_batch]
            keys = [key for key, *_ in chunk] if cluster else [meta_key(name), *(key for key, *_ in chunk)]
            args: list[Any] = [*keys, len(fields), guard, keep_ms, *fields]
            for _, expected_ts, expected, ts, values in chunk:
                args.append(b"" if expected_ts is None else b"%d" % expected_ts)
                args.append(b"" if expected is None else hashlib.sha1(expected).hexdigest().encode())
                args.append(b"%d" % ts)
                args.extend(values)
            sha, script = (CLUSTER_SWAP_SHA, CLUSTER_SWAP_LUA) if cluster else (SWAP_SHA, _SWAP_LUA)
            reply = self._call(lambda: self._evalsha(sha, script, len(keys), *args))
            if cluster:
                top, reply = reply[-1], reply[:-1]
                if top and (newest is None or int(top) > newest):
                    newest = int(top)
            out.extend(bool(int(r)) for r in reply)
        self._synced()
        return out, newest

    def read_many(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Any]]:
        return self.read_checked(requests, ())[0]

    def read_checked(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                     names: Sequence[str]) -> tuple[list[list[Any]], list[LoadState]]:
        """The reads, then ``HGET fstore:loaded:<set> complete`` and ``EXISTS fsmeta:<set>`` per name,
        all in one pipelined write: the marker check costs no round trip of its own."""
        commands: list[bytes] = []
        for _, group_keys, fields in requests:
            if group_keys:
                head, tail = self._hmget_parts(tuple(fields))
                commands.extend(head + bulk(key.encode()) + tail for key in group_keys)
        commands.extend(self._state_commands(names))
        if not commands:
            return [[] for _ in requests], []
        tracking = None if self._tracker is None else self._tracker.state
        return self._results(requests, names, self._call(
            lambda: self._pipelined(b"".join(commands), len(commands), tracking=tracking)))

    @classmethod
    def _results(cls, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]], names: Sequence[str],
                 replies: Iterable[Any]) -> tuple[list[list[Any]], list[LoadState]]:
        """``read_checked``'s answer from the replies of its HMGETs then its state commands, in order."""
        replies = iter(replies)
        out: list[list[Any]] = []
        for _, group_keys, _ in requests:
            results = []
            for _ in group_keys:
                reply = next(replies)
                ts = reply[0]
                results.append(None if ts is None else (int(ts), reply[1:]))
            out.append(results)
        return out, [cls._state(next(replies), next(replies)) for _ in names]

    @staticmethod
    def _state_commands(names: Sequence[str]) -> list[bytes]:
        commands = []
        for name in names:
            commands.append(b"*3\r\n$4\r\nHGET\r\n" + bulk(marker_key(name).encode()) + bulk(COMPLETE_FIELD.encode()))
            commands.append(b"*2\r\n$6\r\nEXISTS\r\n" + bulk(meta_key(name).encode()))
        return commands

    @staticmethod
    def _state(complete: bytes | None, exists: int) -> LoadState:
        return LoadState(complete=None if complete is None else complete.decode(), has_values=bool(exists))

    def load_states(self, names: Sequence[str]) -> dict[str, LoadState]:
        names = list(dict.fromkeys(names))
        if not names:
            return {}

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hget(marker_key(name), COMPLETE_FIELD)
                pipe.exists(meta_key(name))
            return pipe.execute()

        replies = iter(self._call(run))
        return {name: self._state(next(replies), next(replies)) for name in names}

    def read_marker(self, name: str) -> dict[str, Any] | None:
        return parse_marker(self._call(lambda: self._client.hgetall(marker_key(name))))

    def write_marker(self, name: str, fields: Mapping[str, str]) -> None:
        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(marker_key(name))
            pipe.hset(marker_key(name), mapping=dict(fields))
            pipe.execute()

        self._call(run)

    def _hmget_parts(self, fields: tuple[str, ...]) -> tuple[bytes, bytes]:
        """The RESP bytes of ``HMGET <key> @ts <fields>`` before and after the key, packed once per fields."""
        parts = self._hmget_cache.get(fields)
        if parts is None:
            if len(self._hmget_cache) > 1000:
                self._hmget_cache.clear()
            parts = self._hmget_cache[fields] = (
                b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 3),
                bulk(TS_FIELD.encode()) + b"".join(bulk(f.encode()) for f in fields))
        return parts

    def _pipelined(self, payload: bytes, replies: int, *, in_place: bool = False,
                   tracking: tuple[int, int] | None = None) -> list[Any]:
        """Send ``payload`` (``replies`` packed commands) in one write and read every reply: one round trip.

        Retried whole on a connection error (reads only); an error reply is raised after all are read,
        so the connection goes back to the pool in step (``in_place``: returned in its reply's place).
        ``tracking``: the tracker's ``(generation, client id)``; a connection not yet redirected to that
        client gets ``CLIENT TRACKING on REDIRECT`` in front of the payload, in the same write.
        """
        deadline = _READ_BUDGET.deadline = time.monotonic() + self.timeout
        try:
            return self._pipelined_by(deadline, payload, replies, in_place, tracking)
        finally:
            _READ_BUDGET.deadline = None

    def _pipelined_by(self, deadline: float, payload: bytes, replies: int, in_place: bool = False,
                      tracking: tuple[int, int] | None = None) -> list[Any]:
        connection = self._borrow()
        shortened = False

        def run() -> list[Any]:
            nonlocal shortened
            connection.connect()  # no-op when connected; a retry after a dropped connection reconnects here
            shortened = self._bound(connection, deadline) or shortened
            tag = getattr(connection, "_fstore_tracking", None)
            if tracking is None or (tag is not None and tag[0] == tracking[0] and tag[1] is connection._sock):
                connection.send_packed_command([payload], check_health=False)
                return self._replies(connection, replies, in_place)
            connection.send_packed_command([tracking_command(tracking[1]) + payload], check_health=False)
            try:
                connection.read_response()
                connection._fstore_tracking = (tracking[0], connection._sock)  # a reconnect is a new socket
            except redis.ResponseError as exc:  # not tracked (redirect client gone, CLIENT refused): no caching
                if self._tracker is not None:
                    self._tracker.reset(str(exc))
            return self._replies(connection, replies, in_place)

        try:
            out = connection.retry.call_with_retry(run, lambda _: connection.disconnect())
        except BaseException as exc:
            if not isinstance(exc, redis.ResponseError):
                connection.disconnect()  # replies may still be on the wire: never reuse this connection
            self._pool.release(connection)
            raise
        if shortened:  # the connection outlives this read: back to the full timeout
            connection._sock.settimeout(self.timeout)
        self._keep(connection)
        return out

    @staticmethod
    def _replies(connection: redis.Connection, count: int, in_place: bool = False) -> list[Any]:
        """Read ``count`` replies; an error reply is raised once all are read, or with ``in_place`` kept in its place."""
        out, error = [], None
        for _ in range(count):
            try:
                out.append(connection.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                out.append(exc if in_place else None)
        if error is not None and not in_place:
            raise error
        return out

    def send_read(self, payload: bytes) -> tuple[redis.Connection, bool] | None:
        """The first half of a read sent to several servers at once (a cluster's nodes): send ``payload``
        on a kept or pooled connection; ``finish_read`` reads its replies. None when the connection failed
        (a connection Redis closed: the caller reads with ``_pipelined``, which reconnects)."""
        deadline = _READ_BUDGET.deadline = time.monotonic() + self.timeout  # a new connection fits in it too
        try:
            connection = self._borrow()
            try:
                connection.connect()
                shortened = self._bound(connection, deadline)
                connection.send_packed_command([payload], check_health=False)
            except BaseException as exc:
                connection.disconnect()
                self._pool.release(connection)
                if isinstance(exc, redis.ConnectionError):
                    return None
                raise
        finally:
            _READ_BUDGET.deadline = None
        return connection, shortened

    def finish_read(self, sent: tuple[redis.Connection, bool], replies: int, *, in_place: bool = False) -> list[Any] | None:
        """The replies of a ``send_read``; None when the connection failed (read again with ``_pipelined``)."""
        connection, shortened = sent
        try:
            out = self._replies(connection, replies, in_place)
        except BaseException as exc:
            if not isinstance(exc, redis.ResponseError):
                connection.disconnect()
            self._pool.release(connection)
            if isinstance(exc, redis.ConnectionError):
                return None
            raise
        if shortened:
            connection._sock.settimeout(self.timeout)
        self._keep(connection)
        return out

    def abandon_read(self, sent: tuple[redis.Connection, bool]) -> None:
        """Drop a ``send_read`` whose replies will not be read (another node failed): its connection is closed."""
        sent[0].disconnect()
        self._pool.release(sent[0])

    def _bound(self, connection: redis.Connection, deadline: float) -> bool:
        """Give the socket only what is left of this read's ``REDIS_TIMEOUT`` budget.

        A read's stages each have their own ``timeout``: waiting for a pool connection, connecting,
        the connection's handshake, a reconnect on retry, then the replies. During a stall these
        added up (0.15 s waiting for the pool's connection, then a reply that never came: 0.40 s for
        a 0.25 s timeout, measured), so one request could wait a multiple of ``REDIS_TIMEOUT``. With one deadline set when the read
        starts, the reply wait is cut to what is left (the stages before it keep their own timeout, so a
        read that spent it all there fails at once); a kept connection (no stage before the send)
        keeps its timeout untouched, so the healthy path makes no extra system call. True when cut.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise redis.TimeoutError(f"Timeout connecting to {self._where()}: REDIS_TIMEOUT "
                                     f"({self.timeout}s) spent before the read was sent")
        sock = connection._sock  # redis-py has no public per-call timeout; the parser reads with the socket's
        if sock is None or left >= self.timeout - 0.001:
            return False
        sock.settimeout(left)
        return True

    def _borrow(self) -> redis.Connection:
        """A connection for one pipelined read: the last one kept, else one from the pool.

        The pool's own checkout costs a lock, a process check and a ``poll`` for unread data on
        every call (4 % of a gevent worker's samples at 1 entity, py-spy). A kept connection
        needs none of it: every reply of a read is read before it is kept, and anything else
        disconnects it. A connection Redis has closed fails the send or the read, which the
        connection's retry answers by reconnecting.
        """
        if self._idle_pid != os.getpid():  # a forked child never shares its parent's sockets
            self._idle, self._idle_pid = [], os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self._pool.get_connection()

    def _keep(self, connection: redis.Connection) -> None:
        """Keep a connection whose replies are all read; beyond half the pool, give it back."""
        if len(self._idle) < self._idle_max:
            self._idle.append(connection)
        else:
            self._pool.release(connection)

    def ping(self) -> None:
        self._call(self._client.ping)

    def track(self, on_invalidate: OnInvalidate) -> InvalidationTracker:
        """Start (once) the tracking connection; ``on_invalidate`` replaces any earlier callback."""
        if self._tracker is None:
            cls, kwargs = self._base_connection_class, dict(self._pool.connection_kwargs)
            kwargs["socket_timeout"] = max(self.timeout, 1.0)  # a message's rest once can_read said it came
            self._tracker = InvalidationTracker(lambda: cls(**kwargs), on_invalidate).start()
            weakref.finalize(self, self._tracker.close)  # a store dropped unclosed stops its tracker too
        else:
            self._tracker.on_invalidate = on_invalidate
        return self._tracker

    def _synced(self) -> None:
        """After a write: wait until the invalidations it caused are applied to this process's cache."""
        if self._tracker is not None:
            self._tracker.sync(self.timeout)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        idle, self._idle = self._idle, []
        for connection in idle:
            self._pool.release(connection)
        self._pool.disconnect()

    def delete_feature_set(self, name: str) -> int:
        def run() -> int:
            removed = 0
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=key_prefix(name) + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    removed += self._client.unlink(*batch)
                    batch = []
            if batch:
                removed += self._client.unlink(*batch)
            self._client.delete(meta_key(name), marker_key(name))
            return removed

        removed = self._call(run)
        self._synced()
        return removed

    def newest_timestamp(self, name: str) -> datetime | None:
        raw = self._call(lambda: self._client.get(meta_key(name)))
        if raw is None:
            return None
        micros = int(raw)
        return datetime(1970, 1, 1) + timedelta(microseconds=micros)

    def memory_usage(self, name: str, *, sample: int = 100) -> dict[str, Any]:
        """Keys counted by ``SCAN``; bytes = the mean ``MEMORY USAGE`` of the first ``sample`` keys × the count."""
        def run() -> dict[str, Any]:
            keys, sampled = 0, []
            for key in self._client.scan_iter(match=key_prefix(name) + "*", count=1000):
                keys += 1
                if len(sampled) < sample:
                    sampled.append(key)
            pipe = self._client.pipeline(transaction=False)
            for key in sampled:
                pipe.memory_usage(key)
            sizes = [size for size in pipe.execute() if size is not None] if sampled else []
            mean = sum(sizes) / len(sizes) if sizes else 0.0
            return {"keys": keys, "bytes": int(round(mean * keys)), "sampled": len(sizes), "method": "redis MEMORY USAGE"}

        return self._call(run)

    def drop_fields(self, name: str, fields: Sequence[str]) -> int:
        """``HDEL`` the fields from every key of the set (pipelined, 1,000 keys a batch)."""
        if not fields:
            return 0

        def run() -> int:
            touched, pipe = 0, self._client.pipeline(transaction=False)
            for key in self._client.scan_iter(match=key_prefix(name) + "*", count=1000):
                pipe.hdel(key, *fields)
                if len(pipe) >= 1000:
                    touched += sum(1 for n in pipe.execute() if n)
            if len(pipe):
                touched += sum(1 for n in pipe.execute() if n)
            return touched

        return self._call(run)

    # -- bulk load from executors -----------------------------------------------------------

    def write_packed(self, codec: Codec, batches: Iterable[tuple[list[bytes], list[bytes]]], *, depth: int = 4) -> int:
        """Send pre-packed write batches (RESP key strings, RESP payloads) on one connection; keys written.

        The bulk loader's path: no per-value Python work, and a sliding window of ``depth`` calls
        in flight, so Redis runs the calls already sent while the next batch is being packed.
        """
        fields = codec.feature_names
        self._call(lambda: self._client.script_load(_WRITE_LUA))

        def run() -> int:
            connection = self._pool.get_connection()
            written, waiting, error = 0, 0, None

            def receive() -> None:
                nonlocal written, error
                try:
                    written += int(connection.read_response())
                except redis.ResponseError as exc:  # read every reply before raising
                    error = exc

            try:
                for keys, payloads in batches:
                    connection.send_packed_command([pack_write(fields, codec.name, keys, payloads, keep_ms=codec.keep_seconds * 1000)])
                    waiting += 1
                    if waiting > depth:
                        receive()
                        waiting -= 1
                for _ in range(waiting):
                    receive()
            except BaseException:
                connection.disconnect()  # replies may still be on the wire: never reuse this connection
                raise
            finally:
                self._pool.release(connection)
            if error is not None:
                raise error
            return written

        written = self._call(run)
        self._synced()
        return written


__all__ = ["CLUSTER_WRITE_LUA", "RedisOnlineStore", "NULL", "TS_FIELD", "pack_write", "bulk", "encoded_payload"]
