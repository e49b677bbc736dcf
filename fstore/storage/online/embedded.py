"""The embedded online store: a SQLite file (WAL) with the Redis store's contract.

Used when no ``REDIS_URL`` is set, so one machine needs no Redis. Several processes
share the file (the materialization job writes while the server reads): WAL lets
readers go on during a write, and ``busy_timeout`` queues writers.

One row per (feature set, entity key): the event time in micros and the feature
values as a JSON object ``{feature: encoded text}`` using the same encoded text as
Redis (``fstore.storage.online.base``). A null value is the JSON number ``0`` (every real
value is a JSON string), because ``json_patch`` deletes members set to JSON null
and a null must stay distinguishable from a missing feature.

Newer-wins is one statement: ``INSERT … ON CONFLICT DO UPDATE … WHERE excluded.ts
>= ts``; a write merges its fields into the stored ones, as ``HSET`` does.

``online_meta`` keeps the newest event time per set (Redis's ``fsmeta:<set>``) and
``online_loaded`` each set's load marker (``fstore.storage.online.marker``).
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from fstore.core.errors import Unavailable
from fstore.storage.online.base import NULL, Codec, EncodedRow, OnlineStore
from fstore.storage.online.marker import COMPLETE_FIELD, LoadState, parse_marker

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_values (
    fs TEXT NOT NULL, k TEXT NOT NULL, ts INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (fs, k)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_meta (fs TEXT PRIMARY KEY, newest INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS online_loaded (fs TEXT PRIMARY KEY, complete TEXT NOT NULL, data TEXT NOT NULL);
"""
_TABLES = ("online_values", "online_meta", "online_loaded")
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
            present = conn.execute(f"SELECT count(*) FROM sqlite_master WHERE name IN {_TABLES}").fetchone()[0]
            if present < len(_TABLES):
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

    def write_at(self, name: str, fields: Sequence[str], rows: Sequence[tuple[str, int, Sequence[bytes]]]) -> int:
        if not rows:
            return 0
        params = [(data_json(fields, values), name, key, ts) for key, ts, values in rows]
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany("UPDATE online_values SET data = json_patch(data, ?) WHERE fs = ? AND k = ? AND ts = ?",
                                 params)
                written = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return written

    def swap(self, name: str, fields: Sequence[str], guard: str,
             rows: Sequence[tuple[str, int | None, bytes | None, int, Sequence[bytes]]], *,
             keep_ms: int = 0) -> list[bool]:
        """``OnlineStore.swap`` in one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock: no other writer
        between the comparison and the write)."""
        if not rows:
            return []
        out = []
        newest = None
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, expected_ts, expected, ts, values in rows:
                    found = conn.execute("SELECT ts, data FROM online_values WHERE fs = ? AND k = ?", (name, key)).fetchone()
                    if found is None:
                        same = expected_ts is None and expected is None
                    else:
                        current = json.loads(found[1]).get(guard)
                        current = None if current is None else (current.encode() if isinstance(current, str) else NULL)
                        same = found[0] == expected_ts and current == expected
                    if same:
                        data = data_json(fields, values)
                        if found is None:
                            conn.execute("INSERT INTO online_values (fs, k, ts, data) VALUES (?, ?, ?, ?)", (name, key, ts, data))
                        else:
                            conn.execute("UPDATE online_values SET ts = ?, data = json_patch(data, ?) WHERE fs = ? AND k = ?",
                                         (ts, data, name, key))
                        newest = ts if newest is None else max(newest, ts)
                    out.append(same)
                if newest is not None:
                    conn.execute(_META, (name, newest))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return out

    def read_many(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Any]]:
        return self.read_checked(requests, ())[0]

    def read_checked(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                     names: Sequence[str]) -> tuple[list[list[Any]], list[LoadState]]:
        """The reads and the sets' load states, in one read transaction."""
        out: list[list[Any]] = []
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                for name, keys, fields in requests:
                    out.append(self._read_group(conn, name, keys, fields))
                states = self._states(conn, names)
            finally:
                conn.execute("COMMIT")
        return out, [states[n] for n in names]

    @staticmethod
    def _read_group(conn: sqlite3.Connection, name: str, keys: Sequence[str], fields: Sequence[str]) -> list[Any]:
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
        return results

    @staticmethod
    def _states(conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, LoadState]:
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        complete = dict(conn.execute(f"SELECT fs, complete FROM online_loaded WHERE fs IN ({marks})", names).fetchall())
        stored = {row[0] for row in conn.execute(f"SELECT fs FROM online_meta WHERE fs IN ({marks})", names)}
        return {n: LoadState(complete=complete.get(n), has_values=n in stored) for n in names}

    def load_states(self, names: Sequence[str]) -> dict[str, LoadState]:
        with self._guard():
            return self._states(self._conn(), names)

    def read_marker(self, name: str) -> dict[str, Any] | None:
        with self._guard():
            row = self._conn().execute("SELECT data FROM online_loaded WHERE fs = ?", (name,)).fetchone()
        return None if row is None else parse_marker(json.loads(row[0]))

    def write_marker(self, name: str, fields: Mapping[str, str]) -> None:
        with self._guard():
            self._conn().execute(
                "INSERT INTO online_loaded (fs, complete, data) VALUES (?, ?, ?) "
                "ON CONFLICT (fs) DO UPDATE SET complete = excluded.complete, data = excluded.data",
                (name, fields[COMPLETE_FIELD], json.dumps(dict(fields), separators=(",", ":"))))

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
                conn.execute("DELETE FROM online_loaded WHERE fs = ?", (name,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return removed

    def expire(self, codec: Codec, now_micros: int | None = None) -> int:
        """Delete the set's rows whose event time is more than ``codec.keep_seconds`` ago (what Redis does with
        ``PEXPIREAT``), so the file stays bounded; called after every load."""
        cutoff = codec.keep_cutoff(now_micros)
        if cutoff is None:
            return 0
        with self._guard():
            conn = self._conn()
            with conn:
                return conn.execute("DELETE FROM online_values WHERE fs = ? AND ts < ?", (codec.name, cutoff)).rowcount

    def memory_usage(self, name: str, *, sample: int = 100) -> dict[str, Any]:
        """The SQLite file's bytes (with its WAL) shared out by each set's share of the stored keys and values."""
        with self._guard():
            conn = self._conn()
            mine = conn.execute("SELECT count(*), coalesce(sum(length(k) + length(data) + 8), 0) FROM online_values "
                                "WHERE fs = ?", (name,)).fetchone()
            everyone = conn.execute("SELECT coalesce(sum(length(k) + length(data) + 8), 0) FROM online_values").fetchone()[0]
        files = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())
        share = mine[1] / everyone if everyone else 0.0
        return {"keys": int(mine[0]), "bytes": int(round(files * share)), "file_bytes": files,
                "method": "embedded file bytes by share"}

    def drop_fields(self, name: str, fields: Sequence[str]) -> int:
        """``json_remove`` of the fields from every row of the set, in one statement."""
        if not fields:
            return 0
        paths = ", ".join("?" for _ in fields)
        members = [f'$."{f}"' for f in fields]
        with self._guard():
            return self._conn().execute(
                f"UPDATE online_values SET data = json_remove(data, {paths}) WHERE fs = ? AND ("
                + " OR ".join("json_type(data, ?) IS NOT NULL" for _ in fields) + ")",
                (*members, name, *members)).rowcount

    def newest_timestamp(self, name: str) -> datetime | None:
        with self._guard():
            row = self._conn().execute("SELECT newest FROM online_meta WHERE fs = ?", (name,)).fetchone()
        return None if row is None else datetime(1970, 1, 1) + timedelta(microseconds=row[0])
