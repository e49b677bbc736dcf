"""Windowed features of pushed or streamed events, exact: ``apply_events(store, fsv, events)``.

A push or a stream micro-batch carries new source events, not the entity's earlier ones. The entity's earlier
events are online already: its ``@w`` record (``fstore.storage.online.windows``) holds, per windowed feature,
the contributions of its events of ``(T - size - allowed_lateness, T]``, ``T`` its newest event online. So,
per entity key of the batch:

1. **read** the hash's ``@ts`` and ``@w`` (one round trip for the batch);
2. **merge** (``fstore.compute.window_merge``, no I/O): each event of the batch, in arrival order, is
   *applied* when it is not older than the newest event known so far (the stored ``T``, or an earlier event
   of the batch) by more than the set's ``allowed_lateness`` (none declared: not older at all); an event whose id the record holds already is a
   *duplicate* (a replayed micro-batch or a push sent twice: counted once); an older one is *late*: not
   applied online, counted (``fstore_stream_late_events_total``) and still returned;
3. **compute** each event's windowed values over ``(t - size, t]`` of the merged events, with the feature's
   filter (``windows.combine``, the arithmetic serving uses); then the set's own compiled query over the
   batch on DuckDB, in process, each windowed feature read from a column holding its exact value, so row,
   composite and python features (over windows too) are what a run computes; then the validation rules;
4. **write**, per key at once: the newest row and the new record, by ``OnlineStore.swap`` — a
   compare-and-set on the ``@ts`` and ``@w`` just read (Redis: one Lua script; embedded: one SQLite
   write transaction). A key another writer changed meanwhile is read and merged again, so two writers
   of one key lose no event, and a newer row always wins. When every event of a key is late-but-allowed,
   the row stays and only its windowed values at ``T`` and the record are rewritten.

Returns every event's row (``Applied.rows``) for the caller's offline append.

Exactness. An applied event's windowed values, and every online answer at ``t >= T``, are exactly what batch
materialization computes over the same events when the entity's record knew all of its earlier events of the
horizon: it does after a materialization's online load (``load_windows``) or after earlier pushes. Limits:

- an entity never seen online has no history here: its first events' windows count the batch's events only
  (exact when the push or stream carries all of its events; else materialize first: a run's online load
  writes the records pushes then extend); an entity whose row has no record of this set version (loaded
  before online windows, or by another version of the set: materialize the new version) is the same, and
  its events older than the row's time are late (there is no history to merge them into);
- a late event's *own* row needs the events of ``(t - size, t]``; a record written by a materialization keeps
  only ``(T - size, T]``, so that row may miss events older than ``T - size`` (online answers at ``t >= T``
  are still exact); an event beyond the lateness is returned with its windowed features null (unknown: the
  record no longer holds its window), its row features computed; a materialization of its range, which reads
  the source, computes them;
- duplicates are recognised by event id among the record's events (ids of events a materialization loaded
  are not known);
- a row returned for the offline table is as of its arrival: an event arriving later (within the lateness)
  into the window of an earlier row does not rewrite that row offline (online answers count it); a
  materialization of the range recomputes the offline rows from the source.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from fstore.compute.window_merge import SEQ as _SEQ, Merger
from fstore.core.errors import Conflict, InvalidDefinition

if TYPE_CHECKING:
    import pyarrow

    from fstore.core.context import StoreContext
    from fstore.definitions.model import FeatureSetVersion

EVENT_ID = "__fs_event_id"  # the returned rows' event id column (when ids are given)
_PUSHED_AT = "__fs_pushed_at"
MAX_ATTEMPTS = 64  # compare-and-set rounds before a key under constant contention is given up (Conflict)
_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Applied:
    """What ``apply_events`` did: every event's computed row and what became of the events online."""

    rows: "pyarrow.Table"  # one row per event the validation kept, in batch order (EVENT_ID when ids were given)
    online_rows: int  # keys written online (0 when not asked to write)
    applied: int  # events merged into their entity's window record
    late: int  # events older than allowed_lateness: not applied online (counted in the metric)
    duplicates: int  # events whose id their entity's record already held: applied once
    attempts: int  # compare-and-set rounds (1 without contention)


def has_windows(fsv: "FeatureSetVersion") -> bool:
    """Whether ``fsv`` has windowed features (a push of it goes through ``apply_events``)."""
    return bool(_definition(fsv)[0])


def _definition(fsv: "FeatureSetVersion"):
    """``(windows, codec)`` of ``fsv``, once per definition (parsing its windows costs milliseconds)."""
    from fstore.storage.online.base import Codec
    from fstore.storage.online.windows import online_windows

    return _cached(("definition", repr(fsv)), lambda: (list(online_windows(fsv).values()), Codec.from_version(fsv)))


def apply_events(store: "StoreContext", fsv: "FeatureSetVersion", events: "pyarrow.Table", *,
                 ids: Sequence[str] | None = None, online: bool = True) -> Applied:
    """Compute the rows of ``events`` (an Arrow table in the set's source schema: a push or a stream
    micro-batch) with exact windows over the entity's online record plus the batch, and, when ``online``,
    write the newest row and the merged record of each key atomically (module docstring). ``ids``: one event
    id per event (a push id, a Kafka partition/offset), so the same event applied twice counts once. Events
    without an event time or a join key are left out, as a run leaves them out."""
    from fstore.storage.online.windows import FIELD

    if ids is not None and len(ids) != events.num_rows:
        raise InvalidDefinition(f"{len(ids)} event ids for {events.num_rows} events", field="ids")
    windows, codec = _definition(fsv)
    table, fsv_rows = _prepared(fsv, windows, events, ids)
    by_key, base = _first_pass(store, fsv, fsv_rows, windows, codec, table, ids)
    merger = Merger(fsv, windows, codec)
    readable = fsv.feature_set.online_enabled  # a set never online has no records: a batch knows only itself
    online = online and readable
    schema = base.schema
    pending = list(by_key)
    final: list[dict] = []
    written = applied = late = duplicates = attempts = 0
    while pending:
        attempts += 1
        if attempts > MAX_ATTEMPTS:
            raise Conflict(f"feature set {fsv.name}: {len(pending)} key(s) changed under every one of "
                           f"{MAX_ATTEMPTS} compare-and-set rounds; push again")
        stored = store.online.read(codec, pending, fields=[FIELD]) if readable else [None] * len(pending)
        outcomes = {key: merger.merge(key, by_key[key], hit) for key, hit in zip(pending, stored)}
        rows, schema = _rows(store, fsv_rows, windows, table, outcomes, base)
        for row in rows:
            outcomes[row["__key"]].rows.append(row)
        if not online:
            final += rows
            applied, late, duplicates = _tally(outcomes.values())
            break
        swaps = {key: merger.write(o) for key, o in outcomes.items()}
        done = _swap(store, codec, {k: s for k, s in swaps.items() if s is not None})
        retry = []
        for key, outcome in outcomes.items():
            if swaps[key] is None or done[key]:
                final += outcome.rows
                written += swaps[key] is not None
                a, lt, d = _tally([outcome])
                applied, late, duplicates = applied + a, late + lt, duplicates + d
            else:
                retry.append(key)
        pending = retry
    if online and late:
        from fstore.ops.metrics import observe_late_events

        observe_late_events(fsv.name, late)
    return Applied(rows=_table(final, schema), online_rows=written, applied=applied, late=late,
                   duplicates=duplicates, attempts=attempts)


def _tally(outcomes) -> tuple[int, int, int]:
    applied = late = duplicates = 0
    for o in outcomes:
        applied, late, duplicates = applied + o.applied, late + o.late, duplicates + o.duplicates
    return applied, late, duplicates


def _swap(store: "StoreContext", codec, swaps: dict[str, tuple]) -> dict[str, bool]:
    """The compare-and-sets, one ``swap`` call per field list (whole rows; windows only): written per key; a key
    written expires at its new event time + the set's TTL (``Codec.keep_seconds``), as after any write."""
    from fstore.storage.online.windows import FIELD

    by_fields: dict[tuple, list[tuple[str, tuple]]] = {}
    for key, (fields, row) in swaps.items():
        by_fields.setdefault(fields, []).append((key, row))
    done = {}
    for fields, items in by_fields.items():
        done.update(zip((k for k, _ in items), store.online.swap(codec.name, fields, FIELD, [r for _, r in items],
                                                                       keep_ms=codec.keep_seconds * 1000)))
    return done


# -- computing ------------------------------------------------------------------------------------

def _connection():
    """This thread's sealed DuckDB connection (``fstore.engine.duckdb.thread_connection``)."""
    from fstore.engine.duckdb import thread_connection

    return thread_connection()


def _value_column(index: int) -> str:
    return f"__fs_win_{index}"


def _prepared(fsv: "FeatureSetVersion", windows, events: "pyarrow.Table", ids: Sequence[str] | None):
    """The batch with ``_SEQ``, ``EVENT_ID`` and a created time (the push time, when the source has none:
    it orders rows of one event time as a run's created time does); and the set as the row pass computes it:
    each windowed feature a row feature reading its exact value from a column (``_value_column``), so
    composite and python features over windows compute from the exact values, in the set's own SQL."""
    import pyarrow as pa

    table = events.append_column(_SEQ, pa.array(range(events.num_rows), pa.int64()))
    if ids is not None:
        table = table.append_column(EVENT_ID, pa.array([str(i) for i in ids], pa.string()))
    source = fsv.feature_set.source
    if not source.created_timestamp_column:
        declared = {"schema": {**source.schema, _PUSHED_AT: "timestamp"}} if source.schema else {}  # a kafka source
        fsv = replace(fsv, feature_set=replace(fsv.feature_set, source=replace(
            source, created_timestamp_column=_PUSHED_AT, **declared)))
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        table = table.append_column(_PUSHED_AT, pa.array([now] * table.num_rows, pa.timestamp("us")))
    index = {w.feature: w.index for w in windows}
    rows = _cached(("rows-definition", repr(fsv)), lambda: replace(fsv, features=tuple(
        replace(f, window=None, transformation=f"`{_value_column(index[f.name])}`", dialect="spark",
                source_features=()) if f.name in index else f for f in fsv.features)))
    return table, rows


def _cached(key: tuple, build):
    hit = _CACHE.get(key)
    if hit is None:
        hit = build()
        with _CACHE_LOCK:
            if len(_CACHE) > 256:
                _CACHE.clear()
            _CACHE[key] = hit
    return hit


def _first_pass(store: "StoreContext", fsv: "FeatureSetVersion", fsv_rows: "FeatureSetVersion", windows, codec,
                table: "pyarrow.Table", ids: Sequence[str] | None) -> tuple[dict[str, list[tuple]], "pyarrow.Table"]:
    """One DuckDB query over the batch: each event's rows (windows null for now) and, per hash key, its events in
    batch order ``(seq, ts micros, [take per window], event id)`` from the compiler's own key, time, value and
    filter expressions (``load_windows.events_query``, projected beside the rows)."""
    from fstore.compiler import compile_feature_set
    from fstore.compiler.dialect import quote
    from fstore.engine import duckdb as engine
    from fstore.storage.online.load_windows import TS, _specs, events_query
    from fstore.storage.online.windows import contribution

    extra = tuple(quote(c) for c in (_SEQ, EVENT_ID) if c in table.column_names)

    def build():
        flags = events_query(fsv, _specs(fsv)).projection[len(fsv.join_keys):]  # time, value and flag per window
        compiled = compile_feature_set(fsv_rows)
        return replace(compiled, projection=compiled.projection + extra + flags)

    query = _cached(("first", repr(fsv_rows), extra), build)
    con = _connection()
    computed = engine.run_compiled(con, fsv_rows, query, con.from_arrow(_with_values(table, windows, None)),
                                   settings=store.settings)
    by_key: dict[str, list[tuple]] = {}
    for e in computed.select([*fsv.join_keys, _SEQ, TS, *(f"__w_{k}{i}" for i in range(len(windows)) for k in "vc")]
                             ).to_pylist():
        if e[TS] is None or any(e[k] is None for k in fsv.join_keys):
            continue
        takes = [contribution(w, bool(e[f"__w_c{i}"]), e[f"__w_v{i}"]) for i, w in enumerate(windows)]
        seq = e[_SEQ]
        by_key.setdefault(codec.key_of(e), []).append((seq, e[TS], takes, None if ids is None else str(ids[seq])))
    for events in by_key.values():
        events.sort(key=lambda e: e[0])
    return by_key, computed.drop_columns([TS, *(f"__w_{k}{i}" for i in range(len(windows)) for k in "vc")])


_ARROW = {"int": "int64", "float": "float64", "bool": "bool_", "string": "string"}


def _arrow_type(data_type: str):
    import pyarrow as pa

    if data_type in _ARROW:
        return getattr(pa, _ARROW[data_type])()
    return pa.timestamp("us") if data_type == "timestamp" else None


def _with_values(table: "pyarrow.Table", windows, values: Sequence[Sequence[Any]] | None) -> "pyarrow.Table":
    """``table`` with each window's value column (``_value_column``): ``values`` per row, or nulls."""
    import pyarrow as pa

    for w in windows:
        kind = _arrow_type(w.data_type)
        column = pa.nulls(table.num_rows, kind or pa.null()) if values is None else \
            pa.array([v[w.index] for v in values], type=kind)
        table = table.append_column(_value_column(w.index), column)
    return table


def _reads_windows(fsv: "FeatureSetVersion", windows) -> bool:
    """Whether a composite or python feature may read a windowed one (then the rows are computed again over
    the exact values; else the first pass's rows get them set directly)."""
    from fstore.compiler import features_read

    names = {w.feature for w in windows}
    return any(f.python for f in fsv.features) or any(features_read(fsv, f) & names for f in fsv.features
                                                      if f.name not in names)


def _rows(store: "StoreContext", fsv_rows: "FeatureSetVersion", windows, table: "pyarrow.Table",
          outcomes: dict, base: "pyarrow.Table") -> tuple[list[dict], "pyarrow.Schema"]:
    """The rows of the outcomes' events with their exact windows, then the set's validation rules; each row
    with its ``__key``. Composite or python features over windows: the set's compiled query again over those
    events (windows read from their exact values); else the first pass's rows with the values set."""
    import pyarrow as pa

    from fstore.compiler import compile_feature_set
    from fstore.compiler.dialect import quote
    from fstore.compute.validation import validate_arrow
    from fstore.engine import duckdb as engine

    values = {seq: (key, v) for key, o in outcomes.items() for seq, v in o.values.items()}
    seqs = sorted(values)
    con = _connection()
    if _cached(("reads", repr(fsv_rows)), lambda: _reads_windows(fsv_rows, windows)):
        subset = table.take(pa.array(seqs, pa.int64())) if len(seqs) != table.num_rows else table
        subset = _with_values(subset, windows, [values[seq][1] for seq in seqs])
        extra = tuple(c for c in (_SEQ, EVENT_ID) if c in table.column_names)

        def build():
            compiled = compile_feature_set(fsv_rows)
            return replace(compiled, projection=compiled.projection + tuple(quote(c) for c in extra))

        compiled = _cached(("rows", repr(fsv_rows), extra), build)
        computed = engine.run_compiled(con, fsv_rows, compiled, con.from_arrow(subset), settings=store.settings)
    else:
        picked = [r for r in base.to_pylist() if r[_SEQ] in values]
        for row in picked:
            row.update(zip((w.feature for w in windows), values[row[_SEQ]][1]))
        computed = pa.Table.from_pylist(picked, schema=base.schema)
    if not all(f.validation.is_empty for f in fsv_rows.features):
        computed = validate_arrow(con, computed, fsv_rows).df
    rows = computed.to_pylist()
    for row in rows:
        row["__key"] = values[row[_SEQ]][0]
    return rows, computed.schema


def _table(rows: list[dict], schema: "pyarrow.Schema") -> "pyarrow.Table":
    """The returned rows, in batch order, in the computed schema without ``_SEQ``."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: r[_SEQ])
    return pa.Table.from_pylist(rows, schema=schema).drop_columns([_SEQ])
