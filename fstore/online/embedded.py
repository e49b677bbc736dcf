"""The embedded online store: a SQLite file (WAL) with the Redis store's contract.

Used when no ``REDIS_URL`` is set, so one machine needs no Redis. Several processes
share the file (the materialization job writes while the server reads): WAL lets
readers go on during a write, and ``busy_timeout`` queues writers.

One row per (feature set, entity key): the event time in micros and the feature
values as a JSON object ``{feature: encoded text}`` using the same encoded text as
Redis (``fstore.online.base``). A null value is the JSON number ``0`` (every real
value is a JSON string), because ``json_patch`` deletes members set to JSON null
and a null must stay distinguishable from a missing feature.

Newer-wins is one statement: ``INSERT … ON CONFLICT DO UPDATE … WHERE excluded.ts
>= ts``; a write merges its fields into the stored ones, as ``HSET`` does.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

from fstore.errors import Unavailable
from fstore.online.base import NULL, Codec, EncodedRow, OnlineStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_values (
    fs TEXT NOT NULL, k TEXT NOT NULL, ts INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (fs, k)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_meta (fs TEXT PRIMARY KEY, newest INTEGER NOT NULL);
"""
_UPSERT = (
    "INSERT INTO online_values (fs, k, ts, data) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (fs, k) DO UPDATE SET ts = excluded.ts, data = json_patch(online_values.data, excluded.data) "
    "WHERE excluded.ts >= online_values.ts"
)
_META = ("INSERT INTO online_meta (fs, newest) VALUES (?, ?) "
         "ON CONFLICT (fs) DO UPDATE SET newest = max(newest, excluded.newest)")
_SQL_NULL = 0


def data_json(fields: Sequence[str], values: Sequence[bytes | str | None]) -> str:
    """The stored JSON of one row's values (``values`` encoded bytes/text; NULL or None for a null)."""
    out: dict[str, Any] = {}
    for name, value in zip(fields, values):
        if value is None or value == NULL:
            out[name] = _SQL_NULL
        else:
            out[name] = value.decode() if isinstance(value, bytes) else value
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


class EmbeddedOnlineStore(OnlineStore):
    """Online store in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard():
            conn = self._conn()
            # Creating tables takes the write lock; skip it when they exist (the common case: executors).
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('online_values', 'online_meta')").fetchone()[0] < 2:
                conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            # WAL is a property of the file: switch it once. Switching needs a lock that several executors
            # opening the file at once would fight over ("database is locked" without waiting).
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite failures (locked past the timeout, disk errors) surface as ``Unavailable``."""
        try:
            yield
        except sqlite3.Error as exc:
            raise Unavailable(f"online store unavailable: embedded store {self.path}: {exc}") from None

    # -- contract --------------------------------------------------------------------------

    def write_encoded(self, codec: Codec, rows: Sequence[EncodedRow]) -> int:
        fields = codec.feature_names
        params = [(codec.name, r.key, r.ts, data_json(fields, r.values)) for r in rows]
        newest = max((r.ts for r in rows), default=None)
        return self.write_params(codec.name, params, newest)

    def write_params(self, name: str, params: list[tuple[str, str, int, str]], newest: int | None) -> int:
        """Upsert ``(set, key, ts, data json)`` rows in one transaction; returns rows written."""
        if not params:
            return 0
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(_UPSERT, params)
                written = conn.total_changes - before
                conn.execute(_META, (name, newest))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return written

    def read_many(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Any]]:
        out: list[list[Any]] = []
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                for name, keys, fields in requests:
                    found: dict[str, tuple[int, str]] = {}
                    unique = list(dict.fromkeys(keys))
                    for start in range(0, len(unique), 900):
                        chunk = unique[start:start + 900]
                        sql = f"SELECT k, ts, data FROM online_values WHERE fs = ? AND k IN ({','.join('?' * len(chunk))})"
                        for k, ts, data in conn.execute(sql, (name, *chunk)):
                            found[k] = (ts, data)
                    results = []
                    for key in keys:
                        hit = found.get(key)
                        if hit is None:
                            results.append(None)
                            continue
                        values = json.loads(hit[1])
                        raw = []
                        for f in fields:
                            v = values.get(f)
                            raw.append(None if v is None else (v.encode() if isinstance(v, str) else NULL))
                        results.append((hit[0], raw))
                    out.append(results)
            finally:
                conn.execute("COMMIT")
        return out

    def ping(self) -> None:
        with self._guard():
            self._conn().execute("SELECT 1 FROM online_meta LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def delete_feature_set(self, name: str) -> int:
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute("DELETE FROM online_values WHERE fs = ?", (name,)).rowcount
                conn.execute("DELETE FROM online_meta WHERE fs = ?", (name,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return removed

    def newest_timestamp(self, name: str) -> datetime | None:
        with self._guard():
            row = self._conn().execute("SELECT newest FROM online_meta WHERE fs = ?", (name,)).fetchone()
        return None if row is None else datetime(1970, 1, 1) + timedelta(microseconds=row[0])
