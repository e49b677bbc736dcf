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

import uuid
from contextlib import contextmanager
from typing import Iterator, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fstore.compiler.dialect import quote

KIND = "__fs_kind"
CREATED = "__fs_created"
PAYLOAD = "__fs_payload"
EVENT_TS = "__fs_event_ts"
_LATEST = "__fs_latest"
_LAST_LABEL = "__fs_last_label"
_FIRST_LABEL = "__fs_first_label"
FEATURE_ROW, LABEL_ROW = 0, 1


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

    The plan is one SQL query over the two frames (as temporary views): Spark analyses
    it once, where a chain of DataFrame calls was analysed at every call (0.35 s of
    a retrieval's 0.5 s of plan building, profiled).
    """
    label_types = {f.name: f.dataType for f in labels.schema.fields}
    row_types = {f.name: f.dataType for f in rows.schema.fields}
    quoted_keys = [quote(k) for k in keys]
    aligned = key_columns_as(keys, row_types, label_types)
    created = f"CAST({quote(created_ts)} AS TIMESTAMP)" if created_ts else "CAST(NULL AS TIMESTAMP)"
    payload = ", ".join([f"'{EVENT_TS}', {quote(event_ts)}", *(f"'{out}', {quote(src)}" for src, out in features)])
    payload_type = sql_type(T.StructType([T.StructField(EVENT_TS, row_types[event_ts]),
                                          *(T.StructField(out, row_types[src]) for src, out in features)]))
    with _views(labels, rows) as (label_view, row_view):
        present = " AND ".join([f"{c} IS NOT NULL" for c in [quote(event_ts), *quoted_keys]] + ([f"({where})"] if where else []))
        feature_rows = (f"SELECT {', '.join(aligned)}, CAST({quote(event_ts)} AS TIMESTAMP) AS {quote(ts)}, "
                        f"{created} AS {CREATED}, named_struct({payload}) AS {PAYLOAD} FROM {row_view} WHERE {present}")
        if broadcast_keys:
            seen = f"r.{quote(ts)} <= l.{_LAST_LABEL}"
            first = ""
            if ttl_seconds is not None:
                first = f", min({quote(ts)}) AS {_FIRST_LABEL}"
                seen += f" AND r.{quote(ts)} >= l.{_FIRST_LABEL} - {_ttl(ttl_seconds)}"
            label_span = (f"SELECT {', '.join(quoted_keys)}, max({quote(ts)}) AS {_LAST_LABEL}{first} FROM {label_view} "
                          f"GROUP BY {', '.join(quoted_keys)}")
            feature_rows = (f"SELECT /*+ BROADCAST(l) */ r.* FROM ({feature_rows}) r LEFT SEMI JOIN ({label_span}) l ON "
                            + " AND ".join(f"r.{c} = l.{c}" for c in quoted_keys) + f" AND {seen}")
        # One union of label and feature rows: each side fills the other's columns with typed NULLs.
        passed = [quote(c) for c in labels.columns]
        feature_side = ", ".join(
            f"r.{quote(c)}" if c in keys or c == ts else f"CAST(NULL AS {sql_type(label_types[c])})" for c in labels.columns)
        both = (f"SELECT {', '.join(passed)}, {LABEL_ROW} AS {KIND}, CAST(NULL AS TIMESTAMP) AS {CREATED}, "
                f"CAST(NULL AS {payload_type}) AS {PAYLOAD} FROM {label_view} UNION ALL "
                f"SELECT {feature_side}, {FEATURE_ROW}, r.{CREATED}, r.{PAYLOAD} FROM ({feature_rows}) r")
        window = (f"PARTITION BY {', '.join(quoted_keys)} "
                  f"ORDER BY {quote(ts)} ASC NULLS FIRST, {KIND} ASC, {CREATED} ASC NULLS FIRST "
                  "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW")
        visible = f"{_LATEST} IS NOT NULL AND {quote(ts)} IS NOT NULL"
        if ttl_seconds is not None:
            visible += f" AND {_LATEST}.{EVENT_TS} >= {quote(ts)} - {_ttl(ttl_seconds)}"
        outputs = [f"CASE WHEN {visible} THEN {_LATEST}.{quote(out)} END AS {quote(out)}" for _, out in features]
        return labels.sparkSession.sql(
            f"SELECT {', '.join([*passed, *outputs])} FROM (SELECT *, last({PAYLOAD}, true) OVER ({window}) AS {_LATEST} "
            f"FROM ({both})) WHERE {KIND} = {LABEL_ROW}")


def _ttl(seconds: int) -> str:
    """A TTL as a Spark SQL day-time interval."""
    return f"make_dt_interval(0, 0, 0, {int(seconds)})"


@contextmanager
def _views(*frames: DataFrame) -> Iterator[list[str]]:
    """Temporary views of ``frames`` under names no other query uses (quoted), dropped afterwards:
    a DataFrame keeps the plan it was analysed with, so the views are only needed while analysing."""
    names = [f"__fs_view_{uuid.uuid4().hex}" for _ in frames]
    for frame, name in zip(frames, names):
        frame.createOrReplaceTempView(name)
    try:
        yield [quote(n) for n in names]
    finally:
        for frame, name in zip(frames, names):
            frame.sparkSession.catalog.dropTempView(name)
