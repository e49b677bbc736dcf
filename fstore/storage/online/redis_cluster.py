"""The online store on a Redis Cluster (``REDIS_URL=redis+cluster://host:port[,host:port…]``).

The same hashes, codecs, newer-wins script and load marker as ``fstore.storage.online.redis_store``;
what changes is where each key lives and how commands are grouped.

**Key layout: hash-tagged by entity.** The hash ``fs:<set>:<entity parts>`` (``fstore.storage.online.base``)
is stored as ``fs:<set>:{<entity parts>}``: Redis hashes only the part in braces, so every feature set
of one entity key is in one slot, on one node. One online request reads N entity keys × M feature
sets (plus, now and then, two marker keys per set): tagged by entity it touches at most
``min(N, nodes)`` nodes whatever M, one node for one entity. Tagged by set (``{<set>}``) a whole
feature set would sit on one node (its memory and its traffic never spread) and a request over M
sets would touch M nodes. The tag is every join key part, so sets keyed by ``user_id`` and by
``(user_id, merchant_id)`` land on different slots. ``fsmeta:<set>`` and ``fstore:loaded:<set>``
keep their names. One Redis keeps the untagged names, so moving a store between the two is a reload
(``fstore online reload``).

**Reads** (``read_checked``): the packed ``HMGET``s and marker checks are grouped by the node owning
each key's slot, one pipelined write per node; every node is sent its write before any reply is
read, so the nodes work at once: one round trip per node, overlapping.

**Writes**: a script call's keys must share a slot, and ``fsmeta:<set>`` shares none, so the cluster
variant of the script (``redis_store.CLUSTER_WRITE_LUA``) is called per slot with data keys only and
answers ``{written, newest event time}``; the calls of one node are pipelined (bulk loads: one thread
per node, buffering ``FLUSH_KEYS`` keys so that a call carries several keys of its slot); then
``fsmeta`` is raised to the newest event time, never lowered (``_RAISE_META``). A write is idempotent
(newer-or-equal wins), so resending it after ``NOSCRIPT`` is safe.

**Failures**: each node is a ``RedisOnlineStore`` of its own: its pool, ``REDIS_TIMEOUT`` and breaker
(PING probe). A request touching a node whose breaker is open fails at once with ``Unavailable``
naming the node, without sending anything; requests whose keys live on other nodes are answered.
A node's failure also has the slot layout read again (in the background, at most once a second), so
a replica promoted in its place is used as soon as the cluster has moved the slots. ``MOVED`` and
``ASK`` replies (resharding, failover) are followed for the commands that got them.
``redis.cluster.RedisCluster`` (redis-py, hiredis parser) reads the slot layout from the seeds.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Sequence

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from fstore.core.errors import Unavailable
from fstore.storage.online.base import Codec, EncodedRow, OnlineStore, key_prefix
from fstore.storage.online.breaker import CircuitOpen
from fstore.storage.online.marker import LoadState, marker_key
from fstore.storage.online.redis_store import (CLUSTER_WRITE_LUA, RedisOnlineStore, bulk, encoded_payload,
                                               meta_key, pack_write)

FLUSH_KEYS = 200_000  # keys a bulk load buffers before sending (more keys per slot per script call)
FRAME_BYTES = 256 * 1024  # script calls joined into one socket write
_ASKING = b"*1\r\n$6\r\nASKING\r\n"
# Raise fsmeta:<set> to ARGV[1] unless it is already newer (the single-Redis script does this inline).
_RAISE_META = """
local m = redis.call('GET', KEYS[1])
if (not m) or tonumber(m) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """The seeds ``(host, port)`` of a ``redis+cluster://`` URL and a node URL template (``{host}``, ``{port}``)."""
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    seeds = []
    for host in hosts.partition("/")[0].split(","):
        name, _, port = host.rpartition(":")
        seeds.append((name.strip("[]"), int(port)))
    template = (f"{scheme.removesuffix('+cluster')}://{userinfo}{at}{{host}}:{{port}}/0"
                + (f"?{query}" if query else ""))
    return seeds, template


def tag(prefix: bytes, key: bytes) -> bytes:
    """The stored name of a hash key: ``fs:<set>:{<entity parts>}`` (module docstring); other keys unchanged."""
    if key.startswith(prefix):
        return prefix + b"{" + key[len(prefix):] + b"}"
    return key


class RedisClusterOnlineStore(OnlineStore):
    """Online store on a Redis Cluster: a ``RedisOnlineStore`` per node, commands grouped by node."""

    _hmget_parts = RedisOnlineStore._hmget_parts
    overlap = True  # a read sends every node its write before reading any; False: node after node (bench)

    def __init__(self, url: str, *, pool_size: int = 32, timeout: float = 0.25, retries: int = 1,
                 write_batch: int = 500) -> None:
        self.url = url
        self.timeout = timeout
        self.write_batch = write_batch
        self._pool_size = pool_size
        self._retries = retries
        self._seeds, self._template = parse_cluster_url(url)
        self._lock = threading.Lock()
        self._cluster: RedisCluster | None = None
        self._slots: list[str | None] | None = None  # node name ("host:port") per slot
        self._nodes: dict[str, RedisOnlineStore] = {}
        self._scripted: set[str] = set()  # nodes known to hold CLUSTER_WRITE_LUA
        self._refreshing = False
        self._refreshed_at = 0.0
        self._hmget_cache: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    # -- layout ------------------------------------------------------------------------------

    def _layout(self) -> list[str | None]:
        """The node name per slot, read from the seeds on first use."""
        slots = self._slots
        if slots is None:
            with self._lock:
                if self._slots is None:
                    self._read_layout()
                slots = self._slots
        return slots

    def _read_layout(self) -> None:
        """Ask the cluster (any seed or known node) which node serves each slot."""
        try:
            if self._cluster is None:
                host, port = self._seeds[0]
                self._cluster = RedisCluster.from_url(
                    self._template.format(host=_host(host), port=port),
                    startup_nodes=[ClusterNode(h, p) for h, p in self._seeds], require_full_coverage=False,
                    socket_timeout=max(self.timeout, 1.0), socket_connect_timeout=max(self.timeout, 1.0),
                    retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
            else:
                self._cluster.nodes_manager.initialize()
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise Unavailable(f"online store unavailable: no Redis Cluster seed of "
                              f"{', '.join(f'{h}:{p}' for h, p in self._seeds)} answered: {exc}") from None
        cache = self._cluster.nodes_manager.slots_cache
        self._slots = [cache[s][0].name if cache.get(s) else None for s in range(REDIS_CLUSTER_HASH_SLOTS)]
        self._refreshed_at = time.monotonic()

    def _refresh_soon(self) -> None:
        """Read the layout again in the background (a node failed or moved slots), at most once a second."""
        with self._lock:
            if self._refreshing or time.monotonic() - self._refreshed_at < 1.0 or self._cluster is None:
                return
            self._refreshing = True

        def run() -> None:
            try:
                with self._lock:
                    self._read_layout()
            except Unavailable:
                pass
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="fstore-cluster-layout", daemon=True).start()

    def _node(self, name: str | None) -> RedisOnlineStore:
        """The store of one node (its own pool, timeout and breaker), made on first use."""
        node = self._nodes.get(name) if name else None
        if node is None:
            if name is None:
                raise Unavailable("online store unavailable: the Redis Cluster serves no node for a slot "
                                  "(cluster layout incomplete)")
            with self._lock:
                node = self._nodes.get(name)
                if node is None:
                    host, port = name.rsplit(":", 1)
                    node = self._nodes[name] = RedisOnlineStore(
                        self._template.format(host=_host(host), port=port), pool_size=self._pool_size,
                        timeout=self.timeout, retries=self._retries, write_batch=self.write_batch)
        return node

    def _node_of(self, key: str | bytes) -> RedisOnlineStore:
        return self._node(self._layout()[key_slot(key.encode() if isinstance(key, str) else key)])

    def _call(self, node: RedisOnlineStore, fn) -> Any:
        """``node._call`` (its breaker, errors as ``Unavailable`` naming the node); a failure has the
        layout read again, in case the node's slots moved to another."""
        try:
            return node._call(fn)
        except Unavailable:
            self._refresh_soon()
            raise

    @staticmethod
    def _check(node: RedisOnlineStore) -> None:
        """Fail now, sending nothing, when the node's breaker is open."""
        try:
            node.breaker.before_call()
        except CircuitOpen as exc:
            raise Unavailable(f"online store unavailable: Redis Cluster node {node._where().removesuffix('/0')} is failing "
                              f"({exc.last_error}); retrying in {exc.retry_in:.2f}s") from None

    # -- reads -------------------------------------------------------------------------------

    def _fanout(self, slots: Sequence[int], commands: Sequence[bytes]) -> list[Any]:
        """The reply of every command, in order: one pipelined write per node, all sent before any is read."""
        layout = self._layout()
        groups: dict[str | None, list[int]] = {}
        for i, slot in enumerate(slots):
            groups.setdefault(layout[slot], []).append(i)
        plan = [(self._node(name), indexes) for name, indexes in groups.items()]
        for node, _ in plan:
            self._check(node)
        out: list[Any] = [None] * len(commands)
        payloads = [b"".join([commands[i] for i in indexes]) for _, indexes in plan]
        if len(plan) == 1 or not self.overlap:
            replies = [self._call(node, lambda node=node, payload=payload, n=len(indexes):
                                  node._pipelined(payload, n, in_place=True))
                       for (node, indexes), payload in zip(plan, payloads)]
        else:
            replies = self._overlapped(plan, payloads)
        for (_, indexes), node_replies in zip(plan, replies):
            for i, reply in zip(indexes, node_replies):
                out[i] = reply
        self._follow_redirections(out, commands)
        for reply in out:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return out

    def _overlapped(self, plan, payloads) -> list[list[Any]]:
        """Send every node its payload, then read each node's replies (the nodes work meanwhile)."""
        sent = []
        try:
            for (node, _), payload in zip(plan, payloads):
                sent.append(self._call(node, lambda node=node, payload=payload: node.send_read(payload)))
        except BaseException:
            for (node, _), handle in zip(plan, sent):
                if handle is not None:
                    node.abandon_read(handle)
            raise
        replies, error = [], None
        for (node, indexes), payload, handle in zip(plan, payloads, sent):
            def finish(node=node, n=len(indexes), payload=payload, handle=handle) -> list[Any]:
                got = node.finish_read(handle, n, in_place=True) if handle is not None else None
                # None: the connection had failed (Redis closed it): read again on a new one
                return got if got is not None else node._pipelined(payload, n, in_place=True)

            try:
                replies.append(self._call(node, finish))
            except Unavailable as exc:  # read the other nodes' replies all the same: their connections stay in step
                error = error or exc
                replies.append([])
        if error is not None:
            raise error
        return replies

    def _follow_redirections(self, out: list[Any], commands: Sequence[bytes]) -> None:
        """Resend the commands answered ``MOVED``/``ASK`` to the node named (``ASKING`` first for ``ASK``)."""
        for _ in range(3):
            moved = [i for i, reply in enumerate(out) if isinstance(reply, redis.exceptions.AskError)]
            if not moved:
                return
            self._refresh_soon()
            for i in moved:
                reply = out[i]
                node = self._node(f"{reply.host}:{reply.port}")
                asking = not isinstance(reply, redis.exceptions.MovedError)
                payload = (_ASKING if asking else b"") + commands[i]
                got = self._call(node, lambda: node._pipelined(payload, 2 if asking else 1, in_place=True))
                out[i] = got[-1]

    def read_many(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Any]]:
        return self.read_checked(requests, ())[0]

    def read_checked(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                     names: Sequence[str]) -> tuple[list[list[Any]], list[LoadState | None]]:
        """As ``RedisOnlineStore.read_checked``, one pipelined write per node. A set whose marker or
        ``fsmeta`` is on a node whose breaker is open gets None (not checked): the reads of keys on
        other nodes are answered all the same, and serving checks the set again later."""
        slots: list[int] = []
        commands: list[bytes] = []
        for name, group_keys, fields in requests:
            if group_keys:
                head, tail = self._hmget_parts(tuple(fields))
                prefix = key_prefix(name).encode()
                for key in group_keys:
                    stored = tag(prefix, key.encode())
                    slots.append(key_slot(stored))
                    commands.append(head + bulk(stored) + tail)
        checked = []  # a set whose marker or fsmeta lives on a node whose breaker is open is not checked now
        layout = self._layout()
        for name in names:
            pair = (key_slot(marker_key(name).encode()), key_slot(meta_key(name).encode()))
            if all(self._node(layout[slot]).breaker.state == "closed" for slot in pair):
                slots.extend(pair)
                checked.append(name)
        commands.extend(RedisOnlineStore._state_commands(checked))
        if not commands:
            return [[] for _ in requests], [None] * len(names)
        results, states = RedisOnlineStore._results(requests, checked, self._fanout(slots, commands))
        by_name = dict(zip(checked, states))
        return results, [by_name.get(name) for name in names]

    def load_states(self, names: Sequence[str]) -> dict[str, LoadState]:
        names = list(dict.fromkeys(names))
        commands = RedisOnlineStore._state_commands(names)
        slots = [key_slot(key(name).encode()) for name in names for key in (marker_key, meta_key)]
        replies = iter(self._fanout(slots, commands) if commands else ())
        return {name: RedisOnlineStore._state(next(replies), next(replies)) for name in names}

    def read_marker(self, name: str) -> dict[str, Any] | None:
        return self._on_key(marker_key(name), lambda node: node.read_marker(name))

    def write_marker(self, name: str, fields: Mapping[str, str]) -> None:
        self._on_key(marker_key(name), lambda node: node.write_marker(name, fields))

    def newest_timestamp(self, name: str) -> datetime | None:
        raw = self._on_key(meta_key(name), lambda node: node._client.get(meta_key(name)), guard=True)
        return None if raw is None else datetime(1970, 1, 1) + timedelta(microseconds=int(raw))

    def _on_key(self, key: str, fn, *, guard: bool = False) -> Any:
        """Run ``fn(node)`` for the node of ``key`` (``guard``: behind that node's breaker; else ``fn`` guards)."""
        node = self._node_of(key)
        try:
            return self._call(node, lambda: fn(node)) if guard else fn(node)
        except Unavailable:
            self._refresh_soon()
            raise

    def ping(self) -> None:
        """Every node answers ``PING`` (a node down makes the store not ready, though other keys are served)."""
        for name in sorted({n for n in self._layout() if n}):
            node = self._node(name)
            self._call(node, node._client.ping)

    # -- writes ------------------------------------------------------------------------------

    def write_encoded(self, codec: Codec, rows: Sequence[EncodedRow]) -> int:
        prefix = key_prefix(codec.name).encode()
        by_slot: dict[int, list[tuple[bytes, bytes]]] = {}
        for row in rows:
            stored = tag(prefix, row.key.encode())
            by_slot.setdefault(key_slot(stored), []).append((bulk(stored), encoded_payload(row)))
        return self._write(codec, by_slot, depth=1)

    def write_at(self, name: str, fields: Sequence[str], rows: Sequence[tuple[str, int, Sequence[bytes]]]) -> int:
        """``RedisOnlineStore.write_at`` per slot (a script call's keys share one), on the slot's node."""
        prefix = key_prefix(name).encode()
        layout = self._layout()
        by_slot: dict[int, list[tuple[bytes, int, Sequence[bytes]]]] = {}
        for key, ts, values in rows:
            stored = tag(prefix, key.encode())
            by_slot.setdefault(key_slot(stored), []).append((stored, ts, values))
        written = 0
        for slot, items in by_slot.items():
            node = self._node(layout[slot])
            try:
                written += node.write_at(name, fields, items)  # behind the node's own breaker
            except Unavailable:
                self._refresh_soon()
                raise
        return written

    def swap(self, name: str, fields: Sequence[str], guard: str,
             rows: Sequence[tuple[str, int | None, bytes | None, int, Sequence[bytes]]], *,
             keep_ms: int = 0) -> list[bool]:
        """``RedisOnlineStore.swap`` per slot on the slot's node (the cluster script, no ``fsmeta``), then
        ``fsmeta`` raised to the newest event time written."""
        prefix = key_prefix(name).encode()
        layout = self._layout()
        by_slot: dict[int, list[int]] = {}
        stored = []
        for i, (key, *_) in enumerate(rows):
            stored.append(tag(prefix, key.encode()))
            by_slot.setdefault(key_slot(stored[i]), []).append(i)
        out = [False] * len(rows)
        newest = None
        for slot, indexes in by_slot.items():
            node = self._node(layout[slot])
            try:
                done, top = node.swap_keys(name, fields, guard, [(stored[i], *rows[i][1:]) for i in indexes],
                                           cluster=True, keep_ms=keep_ms)
            except Unavailable:
                self._refresh_soon()
                raise
            for i, ok in zip(indexes, done):
                out[i] = ok
            if top is not None and (newest is None or top > newest):
                newest = top
        if newest is not None:
            key = meta_key(name)
            self._on_key(key, lambda node: node._client.eval(_RAISE_META, 1, key, newest), guard=True)
        return out

    def write_packed(self, codec: Codec, batches: Iterable[tuple[list[bytes], list[bytes]]], *, depth: int = 4) -> int:
        """The bulk loader's path (``RedisOnlineStore.write_packed``): RESP keys and payloads, grouped by slot
        (``FLUSH_KEYS`` at a time) and sent per node, the nodes in parallel."""
        prefix = key_prefix(codec.name).encode()
        by_slot: dict[int, list[tuple[bytes, bytes]]] = {}
        buffered = written = 0
        for keys, payloads in batches:
            for key, payload in zip(keys, payloads):
                stored = tag(prefix, key[key.index(b"\n") + 1:-2])  # the key inside its RESP framing
                by_slot.setdefault(key_slot(stored), []).append((bulk(stored), payload))
            buffered += len(keys)
            if buffered >= FLUSH_KEYS:
                written += self._write(codec, by_slot, depth=depth)
                by_slot, buffered = {}, 0
        if by_slot:
            written += self._write(codec, by_slot, depth=depth)
        return written

    def _write(self, codec: Codec, by_slot: dict[int, list[tuple[bytes, bytes]]], *, depth: int) -> int:
        """Script calls per slot, pipelined per node (nodes in parallel), then ``fsmeta`` raised; keys written."""
        layout = self._layout()
        fields = codec.feature_names
        per_node: dict[str | None, list[bytes]] = {}
        for slot, items in by_slot.items():
            calls = per_node.setdefault(layout[slot], [])
            for start in range(0, len(items), self.write_batch):
                chunk = items[start:start + self.write_batch]
                calls.append(pack_write(fields, codec.name, [k for k, _ in chunk], [p for _, p in chunk],
                                        keep_ms=codec.keep_seconds * 1000, cluster=True))
        plan = [(self._node(name), calls) for name, calls in per_node.items()]
        for node, _ in plan:
            self._check(node)
        if not plan:
            return 0
        if len(plan) == 1:
            results = [self._send_calls(*plan[0], depth)]
        else:
            with ThreadPoolExecutor(len(plan), thread_name_prefix="fstore-cluster-write") as pool:
                results = list(pool.map(lambda item: self._send_calls(*item, depth), plan))
        written, newest = 0, None
        for node_written, node_newest in results:
            written += node_written
            if node_newest is not None and (newest is None or node_newest > newest):
                newest = node_newest
        if newest is not None:
            key = meta_key(codec.name)
            self._on_key(key, lambda node: node._client.eval(_RAISE_META, 1, key, newest), guard=True)
        return written

    def _send_calls(self, node: RedisOnlineStore, calls: list[bytes], depth: int) -> tuple[int, int | None]:
        """Send script calls to one node, ``FRAME_BYTES`` per write, ``depth`` writes in flight; (written, newest)."""
        name = node._where()
        for attempt in (1, 2):
            if name not in self._scripted:
                self._call(node, lambda: node._client.script_load(CLUSTER_WRITE_LUA))
                self._scripted.add(name)
            replies = self._call(node, lambda: _pipelined_calls(node, calls, depth))
            if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self._scripted.discard(name)  # the node restarted: load the script, resend (writes are idempotent)
                continue
            break
        self._follow_redirections(replies, calls)
        written, newest = 0, None
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
            written += int(reply[0])
            if len(reply) > 1 and (newest is None or int(reply[1]) > newest):
                newest = int(reply[1])
        return written, newest

    # -- housekeeping ------------------------------------------------------------------------

    def delete_feature_set(self, name: str) -> int:
        """Scan every node for the set's keys and unlink them (one key per command: a multi-key
        ``UNLINK`` must stay in one slot); then its ``fsmeta`` and marker."""
        removed = 0
        for node_name in sorted({n for n in self._layout() if n}):
            node = self._node(node_name)

            def run(node=node) -> int:
                count, pipe = 0, node._client.pipeline(transaction=False)
                for key in node._client.scan_iter(match=key_prefix(name) + "*", count=1000):
                    pipe.unlink(key)
                    if len(pipe) >= 1000:
                        count += sum(pipe.execute())
                if len(pipe):
                    count += sum(pipe.execute())
                return count

            removed += self._call(node, run)
        for key in (meta_key(name), marker_key(name)):
            self._on_key(key, lambda node, key=key: node._client.delete(key), guard=True)
        return removed

    def memory_usage(self, name: str, *, sample: int = 100) -> dict[str, Any]:
        """Each node's keys and sampled bytes, added up."""
        out = {"keys": 0, "bytes": 0, "sampled": 0, "method": "redis MEMORY USAGE"}
        for node_name in sorted({n for n in self._layout() if n}):
            node = self._node(node_name)
            part = node.memory_usage(name, sample=sample)
            for field in ("keys", "bytes", "sampled"):
                out[field] += part[field]
        return out

    def drop_fields(self, name: str, fields: Sequence[str]) -> int:
        """``HDEL`` on every node's keys of the set (one key per command, as for deletes)."""
        return sum(self._node(n).drop_fields(name, fields) for n in sorted({n for n in self._layout() if n}))

    def close(self) -> None:
        for node in list(self._nodes.values()):
            node.close()
        if self._cluster is not None:
            self._cluster.close()


def _pipelined_calls(node: RedisOnlineStore, calls: list[bytes], depth: int) -> list[Any]:
    """Every call's reply (an error reply in its place), calls joined into writes of ``FRAME_BYTES``."""
    connection = node._borrow()  # the node's kept read connection when it has one (a pool of 1 holds no other)
    replies: list[Any] = []
    waiting: deque[int] = deque()

    def receive(count: int) -> None:
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)

    try:
        frame: list[bytes] = []
        size = 0
        for call in calls:
            frame.append(call)
            size += len(call)
            if size >= FRAME_BYTES:
                connection.send_packed_command([b"".join(frame)], check_health=False)
                waiting.append(len(frame))
                frame, size = [], 0
                if len(waiting) > depth:
                    receive(waiting.popleft())
        if frame:
            connection.send_packed_command([b"".join(frame)], check_health=False)
            waiting.append(len(frame))
        while waiting:
            receive(waiting.popleft())
    except BaseException:
        connection.disconnect()  # replies may still be on the wire: never reuse this connection
        node._pool.release(connection)
        raise
    node._keep(connection)
    return replies


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["FLUSH_KEYS", "RedisClusterOnlineStore", "parse_cluster_url", "tag"]
