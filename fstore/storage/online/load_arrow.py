"""Bulk load of rows computed in this process (a ``pyarrow.Table``: the DuckDB engine) into the online store.

The same contract and the same stored bytes as the Spark path (``fstore.storage.online.load``),
planned the same way but as DuckDB SQL over the Arrow table, in process and vectorized:

1. drop rows without a key or event time, and rows already older than the TTL;
2. keep the latest row per key: ``max_by`` of the row number, by a sort key ordering as
   Spark's ``max(struct(event_timestamp, created_timestamp, …))`` does (DuckDB puts a null
   inside a struct or list last, Spark first, so each nullable part is preceded by its
   ``IS NOT NULL``), grouped by the keys as their entity's value type; then ``take``;
3. the key text and every value's online text, spelled as Spark's casts spell them
   (a double as Java's ``Double.toString``: ``1.0E-5``, ``1.0E20``, ``NaN``, ``-0.0``);
4. Redis: the RESP bytes of each key and payload, built in SQL and sent pipelined
   through the newer-wins Lua script (``write_packed``); embedded: the stored JSON,
   built in SQL and upserted (``write_params``);
5. the set's load marker (``fstore.storage.online.marker``), as the Spark path writes it.

Python only hands ready batches from DuckDB to the store: no per-value work. Steps 1-4's SQL
runs in a background thread (``PreparedLoad``): a materialization starts it before its offline
write, so the two overlap, and the sends then overlap the next batches' SQL. Nothing is sent
before the offline write has committed.
"""
from __future__ import annotations

import queue
import threading
from itertools import repeat
from typing import TYPE_CHECKING, Iterator

from fstore.engine.duckdb import ident
from fstore.core.errors import ComputeError, InvalidDefinition, Unavailable
from fstore.storage.online.base import Codec, OnlineStore, as_codec, key_prefix
from fstore.storage.online.load import EMBEDDED_BATCH, mark_loaded, state_before, packed_pieces, require_columns, ttl_cutoff
from fstore.storage.online.marker import LoadInfo

if TYPE_CHECKING:
    import pyarrow

    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.settings import Settings

FETCH_ROWS = 20_000  # rows per Arrow batch taken from DuckDB
READY_BATCHES = 8  # batches a ``PreparedLoad`` makes ready ahead of its writes
_END = object()  # the last item a ``PreparedLoad``'s thread queues

# Java's Double.toString (what Spark's CAST(double AS STRING) and to_json print), from DuckDB's
# shortest text ``s`` of ``x``: plain decimal within [1e-3, 1e7), else ``d.dddE<exp>``. Java 19+
# prints the same digits as DuckDB; Java 17 sometimes a longer spelling of the same double.
# A macro argument is expanded at each use, so callers pass ``s`` as a column computed once.
_MACROS = r"""
CREATE TEMP MACRO fs_java_exp(t) AS replace(replace(replace(t, 'e+', 'E'), 'e-0', 'E-'), 'e-', 'E-');
CREATE TEMP MACRO fs_double(x, s) AS CASE
  WHEN abs(x) >= 0.001 AND abs(x) < 10000000 THEN s
  WHEN isnan(x) THEN 'NaN'
  WHEN isinf(x) THEN CASE WHEN x > 0 THEN 'Infinity' ELSE '-Infinity' END
  WHEN x = 0 THEN CASE WHEN signbit(x) THEN '-0.0' ELSE '0.0' END
  ELSE replace(CASE
    WHEN contains(s, 'e') THEN CASE  -- d.ddde-05, de+20
      -- a one-digit subnormal (5e-324): Java prints the closest two-digit decimal (4.9E-324)
      WHEN abs(x) < 2.2250738585072014e-308 AND NOT contains(s, '.') THEN fs_java_exp(printf('%.1e', x))
      WHEN contains(s, '.') THEN fs_java_exp(s)
      ELSE replace(fs_java_exp(s), 'E', '.E') END
    WHEN abs(x) < 1 THEN  -- 0.000ddd
      (CASE WHEN x < 0 THEN '-' ELSE '' END) || substr(ltrim(s, '-'), 6, 1) || '.' || substr(ltrim(s, '-'), 7) || 'E-4'
    ELSE  -- iiiiiiii.fff
      (CASE WHEN x < 0 THEN '-' ELSE '' END) || left(ltrim(s, '-'), 1) || '.'
      || rtrim(substr(replace(ltrim(s, '-'), '.', ''), 2), '0') || 'E' || CAST(strpos(ltrim(s, '-'), '.') - 2 AS VARCHAR)
  END, '.E', '.0E')
END;
CREATE TEMP MACRO fs_double_text(x) AS fs_double(CAST(x AS DOUBLE), CAST(CAST(x AS DOUBLE) AS VARCHAR));
-- One RESP bulk string of a text: as VARCHAR (NULL for NULL), and as BLOB (the NULL marker for NULL).
CREATE TEMP MACRO fs_resp(t) AS '$' || CAST(strlen(t) AS VARCHAR) || E'\r\n' || t || E'\r\n';
CREATE TEMP MACRO fs_bulk(t) AS coalesce(encode(fs_resp(t)), '\x24\x31\x0D\x0A\xFF\x0D\x0A'::BLOB);
-- A JSON string literal as Python's json.dumps(ensure_ascii=False) writes it: DuckDB's to_json
-- differs only in upper-case hex for a few control characters, rewritten one character at a time.
CREATE TEMP MACRO fs_json_text(t) AS CASE
  WHEN regexp_matches(t, '[\x0B\x0E\x0F\x1A-\x1F]') THEN '"' || array_to_string(list_transform(string_split(t, ''),
       lambda c: (CASE WHEN c < chr(32) THEN lower(to_json(c)) ELSE to_json(c) END)[2:-2]), '') || '"'
  ELSE to_json(t) END;
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _micros(expr: str) -> str:
    return f"epoch_us(CAST({expr} AS TIMESTAMP))"


def key_native_sql(column: str, value_type: str) -> str:
    """DuckDB SQL of one key column as its entity's value type (as ``load.key_native_sql``)."""
    c = ident(column)
    return {
        "int": f"CAST({c} AS BIGINT)",
        "string": f"CAST({c} AS VARCHAR)",
        "float": f"(CAST({c} AS DOUBLE) + 0.0)",  # -0.0 groups and prints as 0.0, as in Spark
        "bool": f"CAST({c} AS BOOLEAN)",
        "timestamp": _micros(c),
    }[value_type]


def key_text_sql(native: str, value_type: str) -> str:
    """DuckDB SQL text of a native key value (as ``load.key_text_sql``)."""
    if value_type == "string":
        return native
    if value_type == "bool":
        return f"CASE WHEN {native} THEN '1' ELSE '0' END"
    if value_type == "float":
        return f"fs_double_text({native})"
    return f"CAST({native} AS VARCHAR)"


def value_text_sql(expr: str, data_type: str, arrow_type: "pyarrow.DataType") -> str:
    """DuckDB SQL of one value's online text, spelled as ``load.value_text_sql`` spells it (NULL stays NULL)."""
    import pyarrow as pa

    if data_type == "float":
        return f"fs_double_text({expr})"
    if data_type == "int":  # Spark's cast truncates a fraction; DuckDB's would round it
        fractional = pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
        return f"CAST(CAST({f'trunc({expr})' if fractional else expr} AS BIGINT) AS VARCHAR)"
    if data_type == "bool":
        return f"CASE WHEN CAST({expr} AS BOOLEAN) THEN '1' WHEN NOT CAST({expr} AS BOOLEAN) THEN '0' END"
    if data_type == "string":
        return f"CAST({expr} AS VARCHAR)"
    if data_type == "timestamp":
        return f"CAST({_micros(expr)} AS VARCHAR)"
    if data_type == "list<float>":  # Jackson writes doubles as Double.toString, NaN and infinities as strings
        element = ("CASE WHEN e IS NULL THEN 'null' WHEN isnan(e) OR isinf(e) THEN '\"' || fs_double_text(e) || '\"' "
                   "ELSE fs_double_text(e) END")
        return f"'[' || array_to_string(list_transform(CAST({expr} AS DOUBLE[]), lambda e: {element}), ',') || ']'"
    if data_type == "list<timestamp>":
        return f"CAST(to_json(list_transform({expr}, lambda e: {_micros('e')})) AS VARCHAR)"
    inner = {"list<int>": "BIGINT[]", "list<bool>": "BOOLEAN[]", "list<string>": "VARCHAR[]"}.get(data_type)
    if inner is None:
        raise InvalidDefinition(f"data type {data_type} has no online codec", field="data_type")
    return f"CAST(to_json(CAST({expr} AS {inner})) AS VARCHAR)"


def _order_sql(expr: str, data_type: str) -> list[str]:
    """Parts of the sort key ordering a value as Spark's struct ordering does (nulls first, lists element-wise)."""
    if data_type.startswith("list<"):
        expr = f"list_transform({expr}, lambda e: row(e IS NOT NULL, e))"
    return [f"{expr} IS NOT NULL", expr]


def _selected(codec: Codec, columns: set[str]) -> list[str]:
    """The select list giving keys as native values ``_k0``…, ``ts``, ``created`` and raw values ``v0``…"""
    selected = [f"{key_native_sql(c, t)} AS _k{i}" for i, (c, t) in enumerate(zip(codec.key_columns, codec.key_types))]
    selected.append(f"{_micros('event_timestamp')} AS ts")
    if "created_timestamp" in columns:
        selected.append(f"{_micros('created_timestamp')} AS created")
    return selected + [f"{ident(name)} AS v{i}" for i, name in enumerate(codec.feature_names)]


def winners_sql(codec: Codec, columns: set[str], source: str, *, now_micros: int | None = None) -> str:
    """SQL of the row number ``_fs_row`` of the latest row per key (``source`` numbers its rows in ``_fs_row``).

    Only the row number is carried through the aggregate: DuckDB's ``max_by`` keeps a
    nested argument by its sort key, which turns ``-0.0`` into ``0.0``.
    """
    keys = [f"_k{i}" for i in range(len(codec.key_columns))]
    conditions = ["ts IS NOT NULL", *(f"{k} IS NOT NULL" for k in keys)]
    cutoff = ttl_cutoff(codec, now_micros)
    if cutoff is not None:
        conditions.append(f"ts >= {cutoff}")
    order = ["ts", *(_order_sql("created", "timestamp") if "created_timestamp" in columns else [])]
    for i, (_, data_type) in enumerate(codec.features):
        order += _order_sql(f"v{i}", data_type)
    rows = (f"SELECT * FROM (SELECT {', '.join(_selected(codec, columns))}, _fs_row FROM {source}) "
            f"WHERE {' AND '.join(conditions)}")
    group = ", ".join(keys)
    # The sort key is built only for rows at their key's newest event time (ties are rare): 2x faster.
    return (f"WITH s AS ({rows}) SELECT max_by(_fs_row, row({', '.join(order)})) AS _fs_row FROM s "
            f"SEMI JOIN (SELECT {group}, max(ts) AS ts FROM s GROUP BY {group}) USING ({group}, ts) GROUP BY {group}")


def texts_sql(codec: Codec, schema: "pyarrow.Schema", source: str) -> str:
    """SQL over the latest rows: ``k`` (key text), ``ts`` (event micros), then each value's text ``t0``…"""
    parts = [f"CAST(length({key_text_sql(f'_k{i}', t)}) AS VARCHAR) || ':' || {key_text_sql(f'_k{i}', t)}"
             for i, t in enumerate(codec.key_types)]
    doubles, texts = [], []
    for i, (name, data_type) in enumerate(codec.features):
        if data_type == "float":  # DuckDB's text of the double made once, below (see fs_double)
            doubles.append(f"CAST(CAST({ident(name)} AS DOUBLE) AS VARCHAR) AS s{i}")
            texts.append(f"fs_double(CAST(v{i} AS DOUBLE), s{i}) AS t{i}")
        else:
            texts.append(f"{value_text_sql(f'v{i}', data_type, schema.field(name).type)} AS t{i}")
    return (f"SELECT {_literal(key_prefix(codec.name))} || {' || '.join(parts)} AS k, ts, {', '.join(texts)} "
            f"FROM (SELECT {', '.join([*_selected(codec, set(schema.names)), *doubles])} FROM {source})")


def redis_packed_sql(latest: str, codec: Codec) -> str:
    """Per key: ``kr`` (the key as a RESP bulk string) and ``p`` (RESP of ``@ts`` then every value)."""
    texts = ["CAST(ts AS VARCHAR)", *(f"t{i}" for i in range(len(codec.features)))]
    not_null = " AND ".join(f"{t} IS NOT NULL" for t in texts)
    # Text concatenation is 1.5x faster than BLOB's, but a text cannot hold the NULL marker (0xFF).
    # One n-ary concat, not a chain of ||: a chain copies the growing payload at each step (100 float
    # features: 0.41 s against 2.67 s per 20,000 keys).
    pieces = ", ".join(f"'$', CAST(strlen({t}) AS VARCHAR), E'\\r\\n', {t}, E'\\r\\n'" for t in texts)
    payload = (f"CASE WHEN {not_null} THEN encode(concat({pieces})) "
               f"ELSE {' || '.join(f'fs_bulk({t})' for t in texts)} END")
    return f"SELECT encode(fs_resp(k)) AS kr, {payload} AS p FROM ({latest})"


def embedded_rows_sql(latest: str, codec: Codec) -> str:
    """Per key: ``k``, ``ts`` and ``data``, the stored JSON exactly as ``embedded.data_json`` writes it."""
    import json

    members = []
    for i, (name, data_type) in enumerate(codec.features):
        quoted = f"fs_json_text(t{i})" if data_type == "string" else (
            f"to_json(t{i})" if data_type.startswith("list<") else f"'\"' || t{i} || '\"'")
        members.append(f"{_literal(json.dumps(name, ensure_ascii=False) + ':')} || coalesce({quoted}, '0')")
    data = " || ',' || ".join(members) if members else "''"
    return f"SELECT k, ts, '{{' || {data} || '}}' AS data FROM ({latest})"


def _embedded_write(store, codec: Codec, batches: Iterator) -> int:
    """Upsert batches of (``k``, ``ts``, ``data``) in transactions of ``EMBEDDED_BATCH`` rows; rows written."""
    written = 0
    for batch in batches:
        keys, stamps, data = (batch.column(i).to_numpy(zero_copy_only=False).tolist() for i in range(3))
        for start in range(0, len(keys), EMBEDDED_BATCH):
            chunk = slice(start, start + EMBEDDED_BATCH)
            params = list(zip(repeat(codec.name), keys[chunk], stamps[chunk], data[chunk]))
            written += store.write_params(codec.name, params, max(stamps[chunk]))
    return written


def _naive_utc(table: "pyarrow.Table") -> "pyarrow.Table":
    """Zoned timestamps as naive UTC (the same numbers): DuckDB then needs no ICU time-zone
    conversion per value to cast them to TIMESTAMP (0.6 s per 10M values here)."""
    import pyarrow as pa

    def naive(t):
        if pa.types.is_timestamp(t) and t.tz is not None:
            return pa.timestamp(t.unit)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            inner = naive(t.value_type)
            return t if inner == t.value_type else pa.list_(inner)
        return t

    schema = pa.schema([f.with_type(naive(f.type)) for f in table.schema])
    return table if schema == table.schema else table.cast(schema)


def load_arrow(table: "pyarrow.Table", fsv: "FeatureSetVersion | Codec", settings: "Settings", *,
               now_micros: int | None = None, info: LoadInfo | None = None) -> int:
    """Like ``load_dataframe``, for rows computed in this process (the DuckDB engine): keys written.

    ``table`` has the join keys, ``event_timestamp``, optionally ``created_timestamp``
    and the features. The latest row per key is written unless the stored one is
    newer (that key is not counted); the stored bytes are those the Spark path writes.
    Then the set's load marker is written (``fstore.storage.online.marker``; ``info`` says what it records).
    """
    load = PreparedLoad(table, fsv, settings, now_micros=now_micros)
    try:
        return load.write(info)
    finally:
        load.close()


def write_latest(store: "OnlineStore", table: "pyarrow.Table", fsv: "FeatureSetVersion | Codec",
                 settings: "Settings") -> int:
    """The latest row per key of ``table`` written through the open ``store`` with its atomic newer-wins write and
    the bytes a load writes, but no load marker: a stream's micro-batch (``fstore.compute.stream``). A row already
    past the set's TTL is not written. Keys written."""
    codec = as_codec(fsv)
    require_columns(table.schema.names, codec, "table")
    return _send(store, codec, settings, ready_batches(table, codec, settings))


def _send(store: "OnlineStore", codec: Codec, settings: "Settings", batches: Iterator) -> int:
    """Write ``ready_batches``' output through ``store``: Redis's packed calls, or the embedded store's upserts."""
    if settings.redis_url:
        return store.write_packed(codec, packed_pieces(batches))
    return _embedded_write(store, codec, batches)


class PreparedLoad:
    """An online load whose rows DuckDB makes ready in a background thread, written when asked.

    Materialization starts it before the offline write: DuckDB builds the latest row per key and
    its stored bytes while the offline files are written, then keeps building the next batches
    while ``write`` sends the first (DuckDB, pyarrow and the socket release the GIL). At most
    ``READY_BATCHES`` batches wait. Nothing reaches the online store before ``write``.
    """

    def __init__(self, table: "pyarrow.Table", fsv: "FeatureSetVersion | Codec", settings: "Settings", *,
                 now_micros: int | None = None):
        self.codec = as_codec(fsv)
        require_columns(table.schema.names, self.codec, "table")
        self.settings = settings
        self._ready: queue.Queue = queue.Queue(READY_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._prepare, args=(table, now_micros), daemon=True,
                                        name=f"fstore-online-prepare-{self.codec.name}")
        self._thread.start()

    def _prepare(self, table: "pyarrow.Table", now_micros: int | None) -> None:
        try:
            for batch in ready_batches(table, self.codec, self.settings, now_micros=now_micros):
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - raised again by write()
            self._put(exc)

    def _put(self, item) -> bool:
        """Queue ``item`` unless the load was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _batches(self) -> Iterator:
        while True:
            item = self._ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def write(self, info: LoadInfo | None = None) -> int:
        """Write the rows as they are made ready, then the set's load marker: keys written."""
        codec, settings = self.codec, self.settings
        if settings.redis_url:
            from fstore.storage.online import open_redis

            store = open_redis(settings.redis_url, pool_size=1, timeout=max(settings.redis_timeout, 30.0))
        else:
            from fstore.storage.online.embedded import EmbeddedOnlineStore

            store = EmbeddedOnlineStore(settings.embedded_online_path)
        try:
            before = state_before(store, codec)
            try:
                written = _send(store, codec, settings, self._batches())
            except Unavailable as exc:
                raise Unavailable(f"online load of feature set {codec.name} failed: {exc}") from None
            mark_loaded(store, codec, written, info, before)
            return written
        finally:
            store.close()

    def close(self) -> None:
        """Stop the preparation (also when ``write`` was never called or failed) and wait for it."""
        self._stop.set()
        self._thread.join()


def ready_batches(table: "pyarrow.Table", codec: Codec, settings: "Settings", *,
                  now_micros: int | None = None) -> Iterator["pyarrow.RecordBatch"]:
    """The latest row per key as the online store takes it, in batches: RESP key and payload (``kr``,
    ``p``) for Redis, else ``k``, ``ts`` and the stored JSON ``data`` for the embedded store."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    table = _naive_utc(table)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if settings.max_compute_threads:
            con.execute(f"SET threads = {int(settings.max_compute_threads)}")
        con.execute(_MACROS)
        numbered = table.append_column("_fs_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register("fs_input", numbered)
        winners = winners_sql(codec, set(table.schema.names), "fs_input", now_micros=now_micros)
        con.register("fs_latest", table.take(con.sql(winners).to_arrow_table().column("_fs_row")))
        latest = texts_sql(codec, table.schema, "fs_latest")
        rows_sql = redis_packed_sql(latest, codec) if settings.redis_url else embedded_rows_sql(latest, codec)
        yield from con.sql(rows_sql).to_arrow_reader(FETCH_ROWS)
    except duckdb.Error as exc:
        raise ComputeError(f"online load of feature set {codec.name} failed: {str(exc).splitlines()[0]}") from exc
    finally:
        con.close()
