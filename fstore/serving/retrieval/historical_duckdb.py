"""Historical retrieval on the DuckDB engine (``COMPUTE_ENGINE=duckdb``): the Spark path's answer, no JVM.

The contract is ``fstore.serving.retrieval.historical``'s module docstring, unchanged; so
is the plan of each feature set (``plan_set``: offline, exact-window and
recomputed features) and the SQL of its windows and composites (the compiler's
Spark SQL, transpiled by ``fstore.engine.duckdb.to_duckdb``). Only the engine
differs: the entity rows are an Arrow table, the offline store is the Delta
version's Parquet files (``fstore.storage.offline_arrow``) scanned by DuckDB, the result is a
``pyarrow.Table`` wrapped in a ``RetrievalResult``. Spark is never started.

Per feature set:

* **point-in-time join** — ``ASOF LEFT JOIN`` on the join keys and one sort key
  per row, ``{event time, created time, position}``: a label row at ``t``
  (key ``{t, +inf, +inf}``) gets the greatest feature row at or before it, so
  ties on event time are resolved inside the join, as the Spark path's window
  order resolves them — the greatest created time wins (a NULL one loses), and
  of rows equal on both, the last in the order the Spark engine reads them
  (file by file, row by row). The matched row's values are taken as they are,
  NULL included; one older than the TTL gives NULL. Before the join, feature
  rows are cut to the label rows' keys, at or before each key's last label
  time (the Spark path's broadcast of the keys).
* **windows** — label rows unioned with the source's events under the same
  ``window_sql`` as the Spark path, the event flag keeping label rows out of
  the aggregates; cast to the feature's type.
* **composites over windows** — recomputed over the set's values at ``t``,
  in dependency order, cast to the feature's type.

Casts follow Spark's rules where DuckDB's differ: a fractional value cast to
``int`` is truncated (Spark), not rounded (DuckDB).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count
from typing import TYPE_CHECKING, Any, Sequence

from fstore.engine.duckdb import ident
from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.references import FeatureGroup
from fstore.serving.retrieval.entities import ROW, TS, Entities

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.serving.retrieval.plan import RetrievalResult
    from fstore.core.context import StoreContext

LABELS = "__fs_labels"
EVENT = "__fs_event"
SORT = "__fs_sort"
EVENT_TS = "__fs_ev"
POSITION = "__fs_pos"
MATCH = "__fs_match"
_MAX_BIGINT = 9223372036854775807
_DUCK_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN", "timestamp": "TIMESTAMPTZ"}
_FRACTIONAL = ("FLOAT", "DOUBLE", "REAL", "DECIMAL")
_names = count()


def _timestamp(value: datetime) -> str:
    """A DuckDB TIMESTAMPTZ literal for a naive UTC datetime."""
    return f"TIMESTAMPTZ '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def _view(con, data: Any) -> str:
    """Register ``data`` (an Arrow table, pandas frame or DuckDB relation) under a fresh name."""
    name = f"__fs_v{next(_names)}"
    con.register(name, data)
    return name


def _types(con, view: str) -> dict[str, str]:
    relation = con.view(view)
    return {c: str(t) for c, t in zip(relation.columns, relation.types)}


def duck_expression(spark_sql: str) -> str:
    """One Spark SQL expression in DuckDB's dialect (``to_duckdb`` and its rewrites)."""
    from fstore.engine.duckdb import to_duckdb

    marker = "__fs_expression"
    select = to_duckdb(f"SELECT {spark_sql} AS {marker}")
    return select[len("SELECT "):select.rindex(f" AS {marker}")]


def duck_type(data_type: str) -> str:
    """The DuckDB type of a feature data type (``compiler.spark_type``'s counterpart)."""
    if data_type.startswith("list<"):
        return f"{_DUCK_TYPES[data_type[5:-1]]}[]"
    return _DUCK_TYPES[data_type]


def cast_sql(expression: str, data_type: str, current: str) -> str:
    """``expression`` (of DuckDB type ``current``) cast to a feature's type as Spark casts it.

    Spark truncates a fractional value cast to an integer; DuckDB would round it.
    """
    target = duck_type(data_type)
    if target == current:
        return expression
    if target == "BIGINT" and current.upper().startswith(_FRACTIONAL):
        expression = f"TRUNC({expression})"
    return f"TRY_CAST({expression} AS {target})"


def _aligned_keys(con, labels: str, rows: str, keys: Sequence[str]) -> list[str]:
    """Select items giving the rows' key columns the label rows' types (``pit.align_key_types``)."""
    label_types, row_types = _types(con, labels), _types(con, rows)
    return [ident(k) if row_types[k] == label_types[k] else f"TRY_CAST({ident(k)} AS {label_types[k]}) AS {ident(k)}"
            for k in keys]


def as_of_join_sql(con, labels: str, rows: str, *, keys: Sequence[str], ts: str, features: Sequence[tuple[str, str]],
                   ttl_seconds: int | None, event_ts: str = "event_timestamp", created_ts: str | None = "created_timestamp",
                   position: str | None = None, where: str = "") -> str:
    """The SQL of ``as_of_join`` over two registered views (``where`` filters the feature rows)."""
    k = [ident(c) for c in keys]
    created = f"COALESCE(CAST({ident(created_ts)} AS TIMESTAMPTZ), '-infinity'::TIMESTAMPTZ)" if created_ts \
        else "'-infinity'::TIMESTAMPTZ"
    sort = (f"{{'t': CAST({ident(event_ts)} AS TIMESTAMPTZ), 'c': {created}, "
            f"'p': {f'CAST({ident(position)} AS BIGINT)' if position else '0'}}}")
    present = " AND ".join(f"{c} IS NOT NULL" for c in [ident(event_ts), *k])
    # With a position (unique per row), the as-of join carries only it, and the features are fetched afterwards by
    # a hash join on the matched positions: the feature values are never sorted along with every feature row.
    late = position is not None
    carried = [] if late else [f"{ident(src)} AS {ident(f'__fs_f{i}')}" for i, (src, _) in enumerate(features)]
    feature_rows = (f"SELECT {', '.join(_aligned_keys(con, labels, rows, keys))}, "
                    f"CAST({ident(event_ts)} AS TIMESTAMPTZ) AS {EVENT_TS}, {sort} AS {SORT}"
                    + "".join(", " + c for c in carried)
                    + f" FROM {rows} WHERE {present}{f' AND ({where})' if where else ''}")
    # Only rows some label row can see: of its keys, at or before that key's last label time.
    last_label = f"SELECT {', '.join(k)}, max(CAST({ident(ts)} AS TIMESTAMPTZ)) AS __fs_last FROM {labels} GROUP BY ALL"
    visible_rows = (f"SELECT r.* FROM ({feature_rows}) r SEMI JOIN ({last_label}) l ON "
                    + " AND ".join(f"r.{c} = l.{c}" for c in k) + f" AND r.{EVENT_TS} <= l.__fs_last")
    label_side = (f"SELECT *, {{'t': CAST({ident(ts)} AS TIMESTAMPTZ), 'c': 'infinity'::TIMESTAMPTZ, "
                  f"'p': {_MAX_BIGINT}}} AS {SORT} FROM {labels}")
    visible = f"r.{EVENT_TS} IS NOT NULL AND l.{ident(ts)} IS NOT NULL"
    if ttl_seconds is not None:
        visible += f" AND r.{EVENT_TS} >= CAST(l.{ident(ts)} AS TIMESTAMPTZ) - INTERVAL '{int(ttl_seconds)} seconds'"
    on = " AND ".join(f"l.{c} = r.{c}" for c in k) + f" AND l.{SORT} >= r.{SORT}"
    if late:
        matched = (f"SELECT l.* EXCLUDE ({SORT}), CASE WHEN {visible} THEN r.{SORT}.p END AS {MATCH} "
                   f"FROM ({label_side}) l ASOF LEFT JOIN ({visible_rows}) r ON {on}")
        values = ", ".join(f"{ident(src)} AS {ident(out)}" for src, out in features)
        return (f"SELECT m.* EXCLUDE ({MATCH}), {', '.join('f.' + ident(out) for _, out in features)} "
                f"FROM ({matched}) m LEFT JOIN (SELECT {ident(position)}, {values} FROM {rows}) f "
                f"ON f.{ident(position)} = m.{MATCH}")
    outputs = [f"CASE WHEN {visible} THEN r.{ident(f'__fs_f{i}')} END AS {ident(out)}"
               for i, (_, out) in enumerate(features)]
    return f"SELECT l.* EXCLUDE ({SORT}){''.join(', ' + o for o in outputs)} FROM ({label_side}) l ASOF LEFT JOIN ({visible_rows}) r ON {on}"


def as_of_join(con, labels: Any, rows: Any, *, keys: Sequence[str], ts: str, features: Sequence[tuple[str, str]],
               ttl_seconds: int | None, event_ts: str = "event_timestamp", created_ts: str | None = "created_timestamp",
               position: str | None = None):
    """``fstore.serving.retrieval.pit.as_of_join`` on DuckDB: each label row plus the latest feature row's values.

    ``labels`` and ``rows`` are Arrow tables, pandas frames or DuckDB relations of ``con``;
    ``position`` names a column of ``rows`` giving their read order (the last of rows equal on
    event and created time wins). Returns a DuckDB relation of the label rows (unordered).
    """
    return con.sql(as_of_join_sql(con, _view(con, labels), _view(con, rows), keys=keys, ts=ts, features=features,
                                  ttl_seconds=ttl_seconds, event_ts=event_ts, created_ts=created_ts, position=position))


def _offline_rows(con, store: "StoreContext", fsv: "FeatureSetVersion", names: list[str],
                  as_of: int | datetime | None, entities: Entities) -> tuple[str, int | None, str | None, str | None, str]:
    """The set's offline rows as a view, the Delta version read, the created column, position and row filter."""
    from fstore.storage.offline_arrow import read_files
    from fstore.serving.retrieval.plan import offline_hint

    lower = entities.min_ts - timedelta(seconds=fsv.ttl_seconds) if fsv.ttl_seconds else None
    try:
        files = read_files(store.settings, fsv.name, as_of=as_of, lo=lower, hi=entities.max_ts)
    except NotFound as exc:
        raise NotFound(f"feature set {fsv.name} has no offline data to retrieve from ({offline_hint(fsv, as_of)}): "
                       f"{exc.message}", field=exc.field or "features") from None
    position = None
    if files.paths:
        from fstore.engine.duckdb import allow_files

        allow_files(con, files.paths)
        # The read order: file (as the Delta log lists them), then row within the file (DuckDB's virtual columns).
        relation = con.read_parquet(files.paths, union_by_name=True)
        position = POSITION
        relation = relation.project(f"*, file_index::BIGINT * 1099511627776 + file_row_number AS {POSITION}")
    elif files.dataset is not None:
        relation = con.from_arrow(files.dataset)
    elif files.schema is not None:
        relation = con.from_arrow(files.schema.empty_table())
    else:
        raise NotFound(f"feature set {fsv.name} has no offline data to retrieve from ({offline_hint(fsv, as_of)})",
                       field="features")
    view = _view(con, relation)
    types = _types(con, view)
    declared = list(files.schema.names) if files.schema is not None else list(types)
    missing = [n for n in names if n not in declared]
    if missing:
        raise InvalidDefinition(f"the offline store of feature set {fsv.name} has no column for {', '.join(missing)}; "
                                f"materialize version {fsv.version} of the set first", field="features")
    absent = [n for n in [*fsv.join_keys, "event_timestamp", *names] if n not in types]
    if absent and files.schema is not None:
        # Columns the table's schema gained after the files read here were written: NULL, as Spark reads them.
        empty = _types(con, _view(con, files.schema.empty_table()))
        view = _view(con, con.view(view).project(
            "*, " + ", ".join(f"CAST(NULL AS {empty[n]}) AS {ident(n)}" for n in absent)))
    conditions = [f"event_timestamp <= {_timestamp(entities.max_ts)}"]
    if lower is not None:
        conditions.append(f"event_timestamp >= {_timestamp(lower)}")
    created = "created_timestamp" if "created_timestamp" in declared else None
    return view, files.version, created, position, " AND ".join(conditions)


def _source_events(con, store: "StoreContext", fsv: "FeatureSetVersion", keys: Sequence[str], source: Any = None,
                   snapshot: dict[str, Any] | None = None) -> tuple[str, str]:
    """The set's source (or ``source``, a training set's pinned copy of it) as a view with its key columns
    named as the join keys, and its event time column."""
    from fstore.compiler.windows import source_key_columns
    from fstore.engine.duckdb import read_source

    from fstore.serving.retrieval.pinned import reading_settings

    settings = reading_settings(store.settings) if source is not None else store.settings
    source = source or fsv.feature_set.source
    if source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has windowed features but no source to compute them from",
                                field="features")
    if snapshot is not None:  # the files the run of the offline version asked for read (as_of)
        from fstore.compute.source_read import read_pinned_duckdb

        view = _view(con, read_pinned_duckdb(con, source, snapshot, f"the run of {fsv.name}'s offline version read",
                                             settings=settings))
    else:
        view = _view(con, read_source(con, source, settings=settings))
    columns = _types(con, view)
    renames = {}
    for src, key in zip(source_key_columns(fsv), keys):
        if src not in columns:
            raise InvalidDefinition(f"the source of feature set {fsv.name} has no key column {src}", field="source")
        if src != key:
            renames[key] = src
    if renames:
        replaced = [k for k in renames if k in columns]
        exclude = f" EXCLUDE ({', '.join(ident(k) for k in replaced)})" if replaced else ""
        view = _view(con, con.sql(f"SELECT *{exclude}" + "".join(f", {ident(src)} AS {ident(key)}"
                                                                 for key, src in renames.items()) + f" FROM {view}"))
    return view, source.event_timestamp_column


def exact_windows_sql(con, labels: str, events: str, *, keys: Sequence[str], ts: str, event_ts: str,
                      windows: Sequence[tuple[Any, str]], lo: datetime | None = None, hi: datetime | None = None) -> str:
    """The SQL of ``exact_windows`` over two registered views."""
    from fstore.compiler.windows import window_sql

    longest = max(spec.size_seconds for spec, _ in windows)
    k = [ident(c) for c in keys]
    event_time = f"CAST({ident(event_ts)} AS TIMESTAMPTZ)"
    conditions = [f"{c} IS NOT NULL" for c in [ident(event_ts), *k]]
    if hi is not None:
        conditions.append(f"{event_time} <= {_timestamp(hi)}")
    if lo is not None:
        conditions.append(f"{event_time} > {_timestamp(lo - timedelta(seconds=longest))}")
    aligned = _aligned_keys(con, labels, events, keys)
    event_side = (f"SELECT * EXCLUDE ({', '.join(k)}), {', '.join(aligned)}, {event_time} AS {ident(ts)}, "
                  f"true AS {EVENT} FROM {events} WHERE {' AND '.join(conditions)}")
    if event_ts == ts:
        event_side = f"SELECT * EXCLUDE ({', '.join(k)}), {', '.join(aligned)}, true AS {EVENT} FROM {events} " \
                     f"WHERE {' AND '.join(conditions)}"
    label_side = (f"SELECT {', '.join(k)}, CAST({ident(ts)} AS TIMESTAMPTZ) AS {ident(ts)}, false AS {EVENT}, "
                  f"{ident(ROW)} FROM {labels}")
    aggregates = [f"{duck_expression(window_sql(spec, keys=tuple(keys), timestamp=ts, event_flag=EVENT))} AS {ident(out)}"
                  for spec, out in windows]
    both = f"{label_side} UNION ALL BY NAME {event_side}"
    computed = (f"SELECT {ident(ROW)}, {', '.join(aggregates)} FROM ({both}) "
                f"QUALIFY NOT {EVENT}")
    return f"SELECT l.*, {', '.join('w.' + ident(out) for _, out in windows)} FROM {labels} l " \
           f"JOIN ({computed}) w USING ({ident(ROW)})"


def exact_windows(con, labels: Any, events: Any, *, keys: Sequence[str], ts: str, event_ts: str,
                  windows: Sequence[tuple[Any, str]], lo: datetime | None = None, hi: datetime | None = None):
    """``fstore.serving.retrieval.windows.exact_windows`` on DuckDB: each label row plus each window at its time ``ts``.

    ``labels`` (with ``keys``, ``ts`` and a unique ``__fs_row``) and ``events`` (raw source rows with
    ``keys`` and ``event_ts``) are Arrow tables, pandas frames or relations of ``con``; ``windows`` are
    pairs ``(WindowSpec, output column)``. Returns a DuckDB relation of the label rows (unordered), uncast.
    """
    return con.sql(exact_windows_sql(con, _view(con, labels), _view(con, events), keys=keys, ts=ts, event_ts=event_ts,
                                     windows=windows, lo=lo, hi=hi))


def _open_set(con, store: "StoreContext", group: FeatureGroup, plan: Any, as_of: int | datetime | None,
              entities: Entities, source: Any = None) -> dict[str, Any]:
    """Register what one feature set's answer reads: its offline rows and, for exact windows, its source events
    (``source``, a training set's pinned copy; else the files the run of the offline version read, for ``as_of``).

    Every file is opened here, before ``retrieve`` seals the connection and user SQL is bound.
    """
    fsv = group.version
    opened: dict[str, Any] = {"offline": None, "events": None}
    version = None
    if plan.offline:
        opened["offline"] = _offline_rows(con, store, fsv, plan.offline, as_of, entities)
        version = opened["offline"][1]
    if plan.windows:
        from fstore.serving.retrieval.plan import pinned_read

        snapshot = pinned_read(store, fsv, as_of, version) if source is None else None
        opened["events"] = _source_events(con, store, fsv, fsv.join_keys, source, snapshot)
    return opened


def _set_sql(con, group: FeatureGroup, plan: Any, opened: dict[str, Any], entities: Entities,
             internal: list[str]) -> tuple[str, int | None]:
    """``(__fs_row, the group's features as ``internal`` columns)`` for one feature set, and the Delta version read."""
    fsv = group.version
    keys = fsv.join_keys
    labels = _view(con, con.sql(f"SELECT {ident(ROW)}, {ident(TS)}, {', '.join(ident(k) for k in keys)} FROM {LABELS}"))
    scope = f"SELECT {ident(ROW)}, {ident(TS)} FROM {labels}"
    version = None
    if plan.offline:
        rows, version, created, position, where = opened["offline"]
        scope = as_of_join_sql(con, labels, rows, keys=keys, ts=TS, features=[(n, n) for n in plan.offline],
                               ttl_seconds=fsv.ttl_seconds, created_ts=created, position=position, where=where)
        scope = f"SELECT * EXCLUDE ({', '.join(ident(k) for k in keys)}) FROM ({scope})"
    if plan.windows:
        events, event_ts = opened["events"]
        windows = exact_windows_sql(con, labels, events, keys=keys, ts=TS, event_ts=event_ts,
                                    windows=[(spec, n) for n, spec in plan.windows.items()],
                                    lo=entities.min_ts, hi=entities.max_ts)
        relation = con.sql(windows)
        types = dict(zip(relation.columns, (str(t) for t in relation.types)))
        cast = ", ".join(f"{cast_sql('w.' + ident(n), fsv.feature(n).data_type, types[n])} AS {ident(n)}"
                         for n in plan.windows)
        scope = f"SELECT s.*, {cast} FROM ({scope}) s JOIN ({windows}) w USING ({ident(ROW)})"
    from fstore.compiler import feature_expression

    for name in plan.recompute:
        expression = duck_expression(feature_expression(fsv, name, timestamp=TS))
        current = str(con.sql(f"SELECT {expression} FROM ({scope})").types[0])
        scope = f"SELECT *, {cast_sql(expression, fsv.feature(name).data_type, current)} AS {ident(name)} FROM ({scope})"
    outputs = ", ".join(f"{ident(name)} AS {ident(column)}" for name, column in zip(group.features, internal))
    return f"SELECT {ident(ROW)}, {outputs} FROM ({scope})", version


def label_table(entities: Entities):
    """The prepared entity rows (``prepare_local``) as an Arrow table, ``__fs_ts`` a UTC TIMESTAMPTZ."""
    import pyarrow as pa

    frame = entities.df
    try:
        schema = pa.Schema.from_pandas(frame.drop(columns=list(entities.arrow_types)), preserve_index=False)
        for name, arrow_type in entities.arrow_types.items():
            schema = schema.insert(list(frame.columns).index(name), pa.field(name, arrow_type))
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise InvalidDefinition(f"entity_df cannot be read: {exc}", field="entity_df") from None
    index = table.schema.get_field_index(TS)
    return table.set_column(index, TS, table.column(TS).cast(pa.timestamp("us", tz="UTC")))


def retrieve(store: "StoreContext", entities: Entities, groups: list[FeatureGroup],
             as_of: dict[str, int | datetime | None], sources: dict[str, Any] | None = None) -> "RetrievalResult":
    """``fstore.serving.retrieval.historical.retrieve`` on DuckDB, for entity rows from ``prepare_local``."""
    import duckdb
    import pyarrow.compute as pc

    from fstore.engine import duckdb as engine
    from fstore.core.errors import ComputeError
    from fstore.serving.retrieval.plan import RetrievalResult, output_columns, plan_set, set_meta

    outputs = output_columns(entities, groups)
    con = engine.connect(store.settings.max_compute_threads)
    try:
        con.register(LABELS, label_table(entities))
        plans = [plan_set(group.version, group.features) for group in groups]
        opened = [_open_set(con, store, group, plan, as_of.get(group.version.name), entities,
                            (sources or {}).get(group.version.name)) for group, plan in zip(groups, plans)]
        engine.seal(con)  # every file is registered: the features' SQL runs with no other file access
        parts, sets, position = [], [], 0
        for group, plan, reads in zip(groups, plans, opened):
            fsv = group.version
            mine = outputs[position:position + len(group.features)]
            position += len(group.features)
            sql, version = _set_sql(con, group, plan, reads, entities, [internal for internal, _ in mine])
            parts.append(sql)
            sets.append(set_meta(group, plan, version, as_of.get(fsv.name)))
        user = ", ".join(f"l.{ident(c)}" for c in entities.columns)
        joins = "".join(f" LEFT JOIN ({sql}) g{i} USING ({ident(ROW)})" for i, sql in enumerate(parts))
        answers = "".join(f", {ident(internal)} AS {ident(out)}" for internal, out in outputs)
        # In label order: sorting only the row numbers and taking the rows in Arrow is cheaper than DuckDB's
        # ORDER BY carrying every column (1,000 features x 17,000 labels: 0.55 s)
        table = con.sql(f"SELECT l.{ident(ROW)}, {user}{answers} FROM {LABELS} l{joins}").to_arrow_table()
        table = table.take(pc.sort_indices(table.column(0))).drop_columns([ROW])
    except duckdb.Error as exc:
        text = str(exc).strip()
        raise ComputeError(f"historical retrieval failed on DuckDB: {text.splitlines()[0] if text else type(exc).__name__}") \
            from None
    finally:
        con.close()
    return RetrievalResult(spark_df=None, columns=tuple(entities.columns) + tuple(o for _, o in outputs),
                           meta={"feature_sets": sets, "entity_count": entities.count,
                                 "timestamp_column": entities.timestamp_column},
                           arrow=table, spark_session=lambda: store.spark)
