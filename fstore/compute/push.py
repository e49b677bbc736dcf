"""Push: rows of a feature set's source, computed at once and written online and/or offline.

``push(store, name, rows, to=...)`` takes rows shaped like the set's source (its columns, by name). The set's
current version comes from ``fstore.registry.current`` (kept per registry, checked by one short stamp query
each push, so a definition changed anywhere is used by the next push), then:

1. **validate** every row before anything is written: an unknown column, a missing join key or event time,
   or a value that does not convert to the source column's type is refused (``InvalidDefinition``, 422)
   naming the column and the row;
2. **compute** the row features in this process with the DuckDB engine, on a warm per-thread connection: the
   set's compiled query (compiled once per definition) over the rows bound as statement parameters
   (``fstore.engine.duckdb_rows``) for up to ``PARAMETER_ROWS`` rows, or over the rows as an Arrow view
   (``fstore.engine.duckdb.run_compiled``) for more rows and for the column types and Python features that
   path does not take; then the set's validation rules.
   A set with windowed features goes through ``fstore.compute.stream_windows``: each row's windows exact over
   the entity's online window record plus the pushed rows, written online there (atomic compare-and-set);
3. **online** (``to`` = ``online`` or ``online_and_offline``): ``OnlineStore.write_rows``, the atomic
   newer-wins write (Redis: the Lua script; embedded: one upsert guarded by the stored event time), so a
   pushed row older than what a run loaded is dropped. Visible to serving as soon as the call returns. A row
   already past the set's TTL is not stored (serving would call it expired); ``online_past_ttl`` counts them;
4. **offline** (``offline`` or ``online_and_offline``): under the set's lock, one Delta append of the rows
   whose event id is not stored yet for their days (``fstore.storage.offline_arrow.append_new``). The event
   id is the row's ``push_id`` when the caller gives one, else a SHA-256 of the row (key, event time and every
   value), so the same rows pushed twice are stored once.

Every push is audited (``push``, with what was done): the row is queued for the registry's background audit
writer (``fstore.ops.audit.record_later``: batched, never dropped, flushed on close and exit).

A later materialization of a range replaces every row of that range, pushed ones included: the source
stays the truth offline (push the rows to the source too when they must survive a recomputation).
"""
from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import replace
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from fstore.core.errors import InvalidDefinition, TooLarge

if TYPE_CHECKING:
    import pyarrow

    from fstore.core.context import StoreContext
    from fstore.definitions.model import FeatureSetVersion

TARGETS = ("online", "offline", "online_and_offline")
PUSH_ID = "push_id"  # a row's optional event id; also the offline column that stores it
MAX_ROWS = 10_000
ID_COLUMN = "__fs_push_id"
# Up to this many rows travel as statement parameters (``fstore.engine.duckdb_rows``); more go as an Arrow view.
# Measured on 2 row features (median of 30): 1 row 1.9 ms against 3.5 ms; 100 rows 3.7 against 3.5 ms;
# 10,000 rows (a stream's micro-batch) 190 ms against 5 ms.
PARAMETER_ROWS = 64
_CACHE: dict[tuple, Any] = {}  # by definition (its repr): a source's Arrow schema, a set's compiled query
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 256


def push(store: "StoreContext", ref: str | int, rows: Any, *, to: str = "online", actor: str = "") -> dict:
    """Compute ``rows`` (source rows: a list of dicts, a pandas DataFrame or a pyarrow Table) of feature set
    ``ref`` and write them ``to`` the online store, the offline store or both. Nothing is written when a row
    is refused. Returns what was done: rows computed, written online, appended and skipped offline."""
    from fstore.ops import audit
    from fstore.registry.current import current_versions
    from fstore.registry.repo import resolve_secrets

    if to not in TARGETS:
        raise InvalidDefinition(f"to must be one of {', '.join(TARGETS)}, not {to!r}", field="to")
    fs_id, fsv = current_versions(store).get(store, ref)  # checked against the registry: never an older version
    fsv = resolve_secrets(fsv, store.secrets)
    _refuse_set(fsv, to)
    records = _records(rows)
    schema = source_schema(store, fsv)
    if any(c not in schema.names and c != PUSH_ID for r in records for c in r):
        schema = source_schema(store, fsv, fresh=True)  # refused below if the source still lacks the column
    table = source_table(fsv, schema, records)
    ids = event_ids(table, records, has_id_column=PUSH_ID in schema.names)
    windowed = _windowed(store, fsv, table, ids, to)  # exact windows; online written there (stream_windows)
    computed = compute_rows(store, fsv, table, ids) if windowed is None else windowed.rows
    result: dict[str, Any] = {"feature_set": fsv.name, "version": fsv.version, "to": to, "rows": len(records),
                              "rows_computed": computed.num_rows}
    features = computed.drop_columns([ID_COLUMN])
    if to != "online":
        result.update(_append_offline(store, fs_id, fsv, features, computed.column(ID_COLUMN).to_pylist()))
    if to != "offline":
        result["online_rows"] = store.online.write_rows(_codec(fsv), features.to_pylist()) if windowed is None \
            else windowed.online_rows
        if windowed is None:
            result["online_past_ttl"] = _past_ttl(fsv, features)
    if windowed is not None:
        result.update(late_events=windowed.late, duplicate_events=windowed.duplicates)
    # Off the request path: queued for the registry's background audit writer (never dropped; fstore.ops.audit).
    audit.record_later(store.engine, actor=actor, action="push", target=fsv.name, outcome="ok",
                       detail={k: v for k, v in result.items() if k != "feature_set"})
    return result


def _windowed(store: "StoreContext", fsv: "FeatureSetVersion", table, ids: list[str], to: str):
    """A set with windowed features: ``stream_windows.apply_events`` (its rows, the id column named as here, and
    what it wrote online); None for other sets."""
    from fstore.compute import stream_windows

    if not stream_windows.has_windows(fsv):
        return None
    applied = stream_windows.apply_events(store, fsv, table, ids=ids, online=to != "offline")
    return replace(applied, rows=applied.rows.rename_columns(
        [ID_COLUMN if c == stream_windows.EVENT_ID else c for c in applied.rows.column_names]))


def _past_ttl(fsv: "FeatureSetVersion", features: Any) -> int:
    """How many computed rows are already past the set's TTL: ``write_rows`` did not store them (serving
    would call them expired), which the answer says rather than letting them vanish silently."""
    from fstore.storage.online.base import as_codec, to_micros

    cutoff = as_codec(fsv).keep_cutoff()
    if cutoff is None:
        return 0
    return sum(1 for t in features.column("event_timestamp").to_pylist() if t is not None and to_micros(t) < cutoff)


def _refuse_set(fsv: "FeatureSetVersion", to: str) -> None:
    """What a push cannot do for this set, refused before reading any row."""
    fs = fsv.feature_set
    if fs.source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has no source: there is no row shape to push", field="feature_set")
    if to != "offline" and not fs.online_enabled:
        raise InvalidDefinition(f"feature set {fsv.name} is not online_enabled: push it to='offline'", field="to")
    if to != "online" and not fs.offline_enabled:
        raise InvalidDefinition(f"feature set {fsv.name} is not offline_enabled: push it to='online'", field="to")
    if to != "online" and PUSH_ID in [*fsv.join_keys, *(f.name for f in fsv.features)]:
        raise InvalidDefinition(f"feature set {fsv.name} names a key or feature {PUSH_ID!r}, the offline column of "
                                "pushed rows' event ids; push it to='online'", field="to")


def _records(rows: Any) -> list[dict]:
    """The rows as a list of dicts, bounded by ``MAX_ROWS``."""
    if hasattr(rows, "to_pylist"):  # pyarrow.Table
        rows = rows.to_pylist()
    elif hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas.DataFrame
        rows = rows.to_dict(orient="records")
    if not isinstance(rows, (list, tuple)) or not rows:
        raise InvalidDefinition("rows must be a non-empty list of objects (source column -> value)", field="rows")
    if len(rows) > MAX_ROWS:
        raise TooLarge(f"a push takes at most {MAX_ROWS} rows, not {len(rows)}; split it", field="rows")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidDefinition(f"row {i} is not an object of source column -> value", field=f"rows[{i}]")
    return [dict(r) for r in rows]


def source_schema(store: "StoreContext", fsv: "FeatureSetVersion", *, fresh: bool = False) -> "pyarrow.Schema":
    """The Arrow schema of the set's source as DuckDB reads it, cached per source definition (``fresh`` reads it
    again: a row naming a column the cached schema lacks may be of a source that gained it)."""
    source = fsv.feature_set.source
    key = ("schema", repr(source))
    schema = None if fresh else _CACHE.get(key)
    if schema is None:
        from fstore.engine import duckdb as engine

        con = engine.connect(1)
        try:
            schema = engine.read_source(con, source, settings=store.settings).limit(0).to_arrow_table().schema
        finally:
            con.close()
        _remember(key, schema)
    return schema


def source_table(fsv: "FeatureSetVersion", schema: "pyarrow.Schema", records: list[dict]) -> "pyarrow.Table":
    """The rows as an Arrow table in the source's schema; ``InvalidDefinition`` naming the column (and the row)
    of an unknown column, a missing join key or event time, or a value of the wrong type."""
    import pyarrow as pa

    from fstore.compiler.windows import source_key_columns

    allowed = set(schema.names) | {PUSH_ID}
    required = [*source_key_columns(fsv), fsv.feature_set.source.event_timestamp_column]
    for i, row in enumerate(records):
        unknown = sorted(c for c in row if c not in allowed)
        if unknown:
            raise InvalidDefinition(f"row {i}: unknown column(s) {', '.join(map(repr, unknown))}; the source of "
                                    f"{fsv.name} has: {', '.join(schema.names)}", field=f"rows[{i}].{unknown[0]}")
        for column in required:
            if row.get(column) is None:
                raise InvalidDefinition(f"row {i}: missing {column!r} (a join key or the event time of {fsv.name}; "
                                        "every row needs it)", field=f"rows[{i}].{column}")
    arrays = []
    for field in schema:
        values = [_value(row.get(field.name), field.type) for row in records]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            bad = _first_bad(values, field.type)
            raise InvalidDefinition(f"row {bad}: column {field.name!r} is {field.type} in the source of {fsv.name}, "
                                    f"not {records[bad].get(field.name)!r}", field=f"rows[{bad}].{field.name}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _value(value: Any, arrow_type) -> Any:
    """A JSON value made ready for ``arrow_type``: ISO 8601 text for timestamps and dates (tz-aware → UTC); a value
    pyarrow would convert by guessing (a number as a timestamp, ``True`` as 1, ``1.5`` as 1) becomes one it refuses."""
    import pyarrow as pa

    if isinstance(value, str) and (pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type)):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return value  # refused by pa.array, naming the column
        value = parsed
    if isinstance(value, datetime) and pa.types.is_timestamp(arrow_type):
        if value.tzinfo is not None and arrow_type.tz is None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        elif value.tzinfo is None and arrow_type.tz is not None:
            value = value.replace(tzinfo=timezone.utc)
    if isinstance(value, datetime) and pa.types.is_date(arrow_type):
        value = value.date()
    if isinstance(value, (int, float)) and (pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type)):
        return object()  # a bare number (seconds? microseconds?) is no timestamp: refused, not guessed
    if isinstance(value, bool) and not pa.types.is_boolean(arrow_type):
        return object()  # pyarrow would take True as 1: refused instead
    if isinstance(value, float) and pa.types.is_integer(arrow_type):
        return int(value) if value.is_integer() else object()  # pyarrow would truncate 1.5 to 1: refused instead
    return value


def _first_bad(values: list, arrow_type) -> int:
    import pyarrow as pa

    for i, value in enumerate(values):
        try:
            pa.array([value], type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            return i
    return 0


def event_ids(table: "pyarrow.Table", records: list[dict], *, has_id_column: bool) -> list[str]:
    """Each row's event id: its ``push_id`` when given (and the source has no column of that name), else the
    SHA-256 of the row in the source's schema (key, event time and every value)."""
    out = []
    for i, row in enumerate(table.to_pylist()):
        given = None if has_id_column else records[i].get(PUSH_ID)
        if given is not None:
            if not isinstance(given, (str, int)) or isinstance(given, bool) or not str(given):
                raise InvalidDefinition(f"row {i}: {PUSH_ID} must be a non-empty string or integer, not {given!r}",
                                        field=f"rows[{i}].{PUSH_ID}")
            out.append(str(given))
            continue
        text = json.dumps(row, sort_keys=True, default=_json_default, separators=(",", ":"))
        out.append("sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())
    return out


def _json_default(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return repr(value)


def compute_rows(store: "StoreContext", fsv: "FeatureSetVersion", table: "pyarrow.Table", ids: list[str]):
    """The set's features over ``table`` on DuckDB, in process, then its validation rules: an Arrow table of
    join keys, ``event_timestamp``, ``created_timestamp`` (now, when the source has none), the features and
    each row's event id (``ID_COLUMN``)."""
    import pyarrow as pa

    from fstore.compiler import compile_feature_set
    from fstore.compiler.dialect import quote
    from fstore.compute.validation import validate_arrow
    from fstore.engine import duckdb as engine

    source = fsv.feature_set.source
    table = table.append_column(ID_COLUMN, pa.array(ids, pa.string()))
    if not source.created_timestamp_column:
        # The push time orders rows of one event time as a run's created time does.
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        fsv = replace(fsv, feature_set=replace(fsv.feature_set, source=replace(source, created_timestamp_column="__fs_pushed_at")))
        table = table.append_column("__fs_pushed_at", pa.array([now] * table.num_rows, pa.timestamp("us")))
    definition = repr(fsv)
    key = ("compiled", definition)
    compiled = _CACHE.get(key)
    if compiled is None:  # the same definition compiles to the same query: compiled (and policy-checked) once
        compiled = compile_feature_set(fsv)
        compiled = replace(compiled, projection=compiled.projection + (quote(ID_COLUMN),))
        _remember(key, compiled)
    con = _connection()
    computed = _run_rows(con, fsv, compiled, table, definition) if table.num_rows <= PARAMETER_ROWS else None
    if computed is None:
        computed = engine.run_compiled(con, fsv, compiled, con.from_arrow(table), settings=store.settings)
    if all(f.validation.is_empty for f in fsv.features):
        return computed  # no rule can change or drop a row; the quality report is a run's, not a push's
    return validate_arrow(con, computed, fsv).df


def _run_rows(con, fsv: "FeatureSetVersion", compiled, table: "pyarrow.Table", definition: str):
    """The compiled query over ``table`` with its rows bound as parameters (``fstore.engine.duckdb_rows``), or None
    when the set has Python features or a column no parameter carries exactly (``run_compiled`` then)."""
    from fstore.engine import duckdb_rows

    key = ("rows", definition, table.schema)
    plan = _CACHE.get(key)
    if plan is None:
        source = None if compiled.python_features else duckdb_rows.parameter_source(table.schema)
        plan = {"statement": source and duckdb_rows.compiled_statement(compiled, source), "schema": None}
        _remember(key, plan)
    if plan["statement"] is None:
        return None
    computed = duckdb_rows.run_rows(con, fsv, plan["statement"], table, plan["schema"])
    if plan["schema"] is None and duckdb_rows.exact_output(computed.schema):
        plan["schema"] = computed.schema  # from now on fetched as rows and built in this schema
    return computed


def _codec(fsv: "FeatureSetVersion"):
    """The online store's codec of ``fsv``, made once per definition (it parses every feature's SQL)."""
    from fstore.storage.online.base import Codec

    key = ("codec", fsv.name, fsv.version, repr(fsv.features), repr(fsv.entities), fsv.ttl_seconds)
    codec = _CACHE.get(key)
    if codec is None:
        codec = Codec.from_version(fsv)
        _remember(key, codec)
    return codec




def _connection():
    """This thread's sealed DuckDB connection (``fstore.engine.duckdb.thread_connection``)."""
    from fstore.engine.duckdb import thread_connection

    return thread_connection()


def _append_offline(store: "StoreContext", fs_id: int, fsv: "FeatureSetVersion", rows, ids: list[str]) -> dict:
    """The idempotent Delta append, under the set's lock (a run or another push of the set waits its turn:
    ``Conflict`` naming the holder)."""
    from fstore.compute.materialize import LOCK_TTL_SECONDS, lock_name, take_set_lock
    from fstore.registry import runs
    from fstore.storage.offline_arrow import append_new

    owner = f"push:{uuid.uuid4()}"
    take_set_lock(store, fs_id, fsv.name, owner)
    try:
        with runs.keep_lease(store.engine, lock_name(fs_id), owner, LOCK_TTL_SECONDS):
            return append_new(store.settings, fsv, rows, ids)
    finally:
        runs.release_lock(store.engine, lock_name(fs_id), owner)


def _remember(key: tuple, value: Any) -> None:
    """Cache ``value``; the cache starts over past ``_CACHE_SIZE`` definitions (old versions are not asked again)."""
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = value

