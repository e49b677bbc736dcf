"""The point-in-time (as-of) join on Spark: one shuffle, linear in the rows.

Label rows (the entity rows, carrying every column of the entity frame) and
feature rows are unioned, partitioned by the join keys and ordered by time; a
running ``last(payload, ignorenulls)`` hands each label row the latest feature
row at or before its timestamp. The payload is a struct holding the feature
row's event time and values: the struct itself is never null on a feature row,
so a NULL *value* in the latest row stays NULL instead of falling back to an
older non-null value (which ``last(value, ignorenulls)`` on the value would do).

Ordering within a key, ascending: time, then feature rows before label rows at
the same time (a feature row at exactly the label time is visible), then
``created_timestamp`` (of two feature rows at the same event time, the one
created last wins). A running window frame (``UNBOUNDED PRECEDING .. CURRENT
ROW``) is evaluated incrementally by Spark, so the cost is one sort per key
partition, whatever the number of rows per entity — never the cross product of
``join on key and ts <= label_ts`` followed by ``row_number()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fstore.compiler.dialect import quote
from fstore.engine.spark import sql_with_frames

KIND = "__fs_kind"
CREATED = "__fs_created"
PAYLOAD = "__fs_payload"
EVENT_TS = "__fs_event_ts"
_LATEST = "__fs_latest"
_LAST_LABEL = "__fs_last_label"
_FIRST_LABEL = "__fs_first_label"
FEATURE_ROW, LABEL_ROW = 0, 1
# Where the label and feature frames enter the query (``sql_with_frames``); side i's rows are _row_frame(i).
LABEL_FRAME = "__fs_label_frame__"


def _row_frame(i: int) -> str:
    return f"__fs_row_frame_{i}__"


def align_key_types(labels: DataFrame, rows: DataFrame, keys: Sequence[str]) -> DataFrame:
    """Cast the feature rows' key columns to the label rows' types (``key_columns_as``, for a DataFrame)."""
    label_types = {f.name: f.dataType for f in labels.schema.fields}
    row_types = {f.name: f.dataType for f in rows.schema.fields}
    for key in keys:
        if row_types[key] != label_types[key]:
            rows = rows.withColumn(key, F.col(quote(key)).cast(label_types[key]))
    return rows


def key_columns_as(keys: Sequence[str], types: dict, wanted: dict) -> list[str]:
    """Select items giving each key column (of ``types``) the type it has in ``wanted``, so ``1`` and ``"1"``
    meet. The label rows are ``wanted``: their columns pass through to the caller unchanged."""
    return [quote(k) if types[k] == wanted[k] else f"CAST({quote(k)} AS {sql_type(wanted[k])}) AS {quote(k)}"
            for k in keys]


def sql_type(data_type) -> str:
    """A Spark SQL type name for ``CAST``, nested field names quoted (``simpleString`` leaves them bare)."""
    if isinstance(data_type, T.StructType):
        return "STRUCT<" + ", ".join(f"{quote(f.name)}: {sql_type(f.dataType)}" for f in data_type.fields) + ">"
    if isinstance(data_type, T.ArrayType):
        return f"ARRAY<{sql_type(data_type.elementType)}>"
    if isinstance(data_type, T.MapType):
        return f"MAP<{sql_type(data_type.keyType)}, {sql_type(data_type.valueType)}>"
    return data_type.simpleString()


@dataclass(frozen=True, kw_only=True)
class Side:
    """One feature table of a point-in-time join (see ``as_of_join`` for each field's meaning)."""

    rows: DataFrame
    features: Sequence[tuple[str, str]]
    ttl_seconds: int | None = None
    event_ts: str = "event_timestamp"
    created_ts: str | None = "created_timestamp"
    where: str = ""


def as_of_join(labels: DataFrame, rows: DataFrame, *, keys: Sequence[str], ts: str,
               features: Sequence[tuple[str, str]], ttl_seconds: int | None,
               event_ts: str = "event_timestamp", created_ts: str | None = "created_timestamp",
               broadcast_keys: bool = False, where: str = "") -> DataFrame:
    """Add to each label row the values of the latest feature row at or before its time.

    ``labels``: the entity rows; they must hold ``keys`` and the TIMESTAMP column
    ``ts``; every other column passes through. ``rows``: feature rows with
    ``keys``, ``event_ts``, optionally ``created_ts``, and the feature columns.
    ``features``: pairs ``(column in rows, output name)``. A label row gets NULL
    for every feature when no feature row of its key is at or before its time, or
    when the latest one is older than ``ttl_seconds`` (an age of exactly the TTL
    is still valid). Label rows with a NULL key or time get NULLs.
    Rows come back unordered; the caller restores its order.

    ``where``: a Spark SQL condition on ``rows``, keeping only the feature rows it holds for.

    ``broadcast_keys``: first keep only the feature rows some label row can see: of a
    key some label row has, at or before that key's latest label time and, with a TTL,
    not older than the TTL before its earliest label time. A broadcast
    semi join with each key's label times does it without shuffling the feature
    rows; the rows it drops (other keys, and each key's rows after its last label:
    about half of them for labels spread over the feature rows' span) are never
    shuffled or sorted. Worth it when the label rows are few enough to broadcast.
    """
    side = Side(rows=rows, features=features, ttl_seconds=ttl_seconds, event_ts=event_ts, created_ts=created_ts,
                where=where)
    return as_of_join_many(labels, [side], keys=keys, ts=ts, broadcast_keys=broadcast_keys)


def as_of_join_many(labels: DataFrame, sides: Sequence[Side], *, keys: Sequence[str], ts: str,
                    broadcast_keys: bool = False) -> DataFrame:
    """``as_of_join`` of several feature tables sharing the join ``keys``, in one union and one shuffle.

    The label rows and every side's feature rows are unioned once; side ``i``'s values ride in its own
    payload column (NULL on every other side's rows), and one running window over the union takes
    ``last(payload_i, ignorenulls)`` per side. So ten feature sets cost one sort of the union, and the
    plan grows linearly with the number of features, where chaining one join per set fed each set's
    union all the columns of the sets before it (a plan the optimizer took minutes over, then ran out
    of heap on: issue #33). Output names must be unique across sides.

    The plan is one SQL query over the frames (``sql_with_frames``): Spark analyses
    it once, where a chain of DataFrame calls was analysed at every call (0.35 s of
    a retrieval's 0.5 s of plan building, profiled).
    """
    label_types = {f.name: f.dataType for f in labels.schema.fields}
    quoted_keys = [quote(k) for k in keys]
    passed = [quote(c) for c in labels.columns]
    label_view = LABEL_FRAME
    row_views = [_row_frame(i) for i in range(len(sides))]
    payloads = [f"{PAYLOAD}_{i}" for i in range(len(sides))]
    payload_types = []
    branches = []
    for i, (side, row_view) in enumerate(zip(sides, row_views)):
        row_types = {f.name: f.dataType for f in side.rows.schema.fields}
        payload_types.append(sql_type(T.StructType([T.StructField(EVENT_TS, row_types[side.event_ts]),
                                                    *(T.StructField(out, row_types[src])
                                                      for src, out in side.features)])))
        branches.append((side, row_view, row_types))
    label_side = (f"SELECT {', '.join(passed)}, {LABEL_ROW} AS {KIND}, CAST(NULL AS TIMESTAMP) AS {CREATED}, "
                  + ", ".join(f"CAST(NULL AS {t}) AS {p}" for t, p in zip(payload_types, payloads))
                  + f" FROM {label_view}")
    union = [label_side]
    for i, (side, row_view, row_types) in enumerate(branches):
        rows = _feature_rows(side, row_view, row_types, label_view, label_types, keys=keys, ts=ts,
                             broadcast_keys=broadcast_keys)
        # Each side fills the label columns and the other sides' payloads with typed NULLs.
        fill = ", ".join(f"r.{quote(c)}" if c in keys or c == ts else f"CAST(NULL AS {sql_type(label_types[c])})"
                         for c in labels.columns)
        others = ", ".join(f"r.{PAYLOAD}" if j == i else f"CAST(NULL AS {payload_types[j]})"
                           for j in range(len(sides)))
        union.append(f"SELECT {fill}, {FEATURE_ROW}, r.{CREATED}, {others} FROM ({rows}) r")
    window = (f"PARTITION BY {', '.join(quoted_keys)} "
              f"ORDER BY {quote(ts)} ASC NULLS FIRST, {KIND} ASC, {CREATED} ASC NULLS FIRST "
              "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW")
    latest = [f"{_LATEST}_{i}" for i in range(len(sides))]
    outputs = []
    for side, last in zip(sides, latest):
        visible = f"{last} IS NOT NULL AND {quote(ts)} IS NOT NULL"
        if side.ttl_seconds is not None:
            visible += f" AND {last}.{EVENT_TS} >= {quote(ts)} - {_ttl(side.ttl_seconds)}"
        outputs += [f"CASE WHEN {visible} THEN {last}.{quote(out)} END AS {quote(out)}" for _, out in side.features]
    lasts = ", ".join(f"last({p}, true) OVER w AS {l}" for p, l in zip(payloads, latest))
    frames = {LABEL_FRAME: labels, **{_row_frame(i): side.rows for i, side in enumerate(sides)}}
    return sql_with_frames(
        labels.sparkSession,
        f"SELECT {', '.join([*passed, *outputs])} FROM (SELECT {', '.join(passed)}, {KIND}, {lasts} "
        f"FROM ({' UNION ALL '.join(union)}) WINDOW w AS ({window})) WHERE {KIND} = {LABEL_ROW}", frames)


def _feature_rows(side: Side, row_view: str, row_types: dict, label_view: str, label_types: dict, *,
                  keys: Sequence[str], ts: str, broadcast_keys: bool) -> str:
    """The SQL of one side's feature rows: keys as the labels type them, time, created time, payload struct."""
    quoted_keys = [quote(k) for k in keys]
    aligned = key_columns_as(keys, row_types, label_types)
    created = f"CAST({quote(side.created_ts)} AS TIMESTAMP)" if side.created_ts else "CAST(NULL AS TIMESTAMP)"
    payload = ", ".join([f"'{EVENT_TS}', {quote(side.event_ts)}",
                         *(f"'{out}', {quote(src)}" for src, out in side.features)])
    present = " AND ".join([f"{c} IS NOT NULL" for c in [quote(side.event_ts), *quoted_keys]]
                           + ([f"({side.where})"] if side.where else []))
    rows = (f"SELECT {', '.join(aligned)}, CAST({quote(side.event_ts)} AS TIMESTAMP) AS {quote(ts)}, "
            f"{created} AS {CREATED}, named_struct({payload}) AS {PAYLOAD} FROM {row_view} WHERE {present}")
    if not broadcast_keys:
        return rows
    seen = f"r.{quote(ts)} <= l.{_LAST_LABEL}"
    first = ""
    if side.ttl_seconds is not None:
        first = f", min({quote(ts)}) AS {_FIRST_LABEL}"
        seen += f" AND r.{quote(ts)} >= l.{_FIRST_LABEL} - {_ttl(side.ttl_seconds)}"
    label_span = (f"SELECT {', '.join(quoted_keys)}, max({quote(ts)}) AS {_LAST_LABEL}{first} FROM {label_view} "
                  f"GROUP BY {', '.join(quoted_keys)}")
    return (f"SELECT /*+ BROADCAST(l) */ r.* FROM ({rows}) r LEFT SEMI JOIN ({label_span}) l ON "
            + " AND ".join(f"r.{c} = l.{c}" for c in quoted_keys) + f" AND {seen}")


def _ttl(seconds: int) -> str:
    """A TTL as a Spark SQL day-time interval."""
    return f"make_dt_interval(0, 0, 0, {int(seconds)})"
