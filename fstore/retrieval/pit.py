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

from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

KIND = "__fs_kind"
CREATED = "__fs_created"
PAYLOAD = "__fs_payload"
EVENT_TS = "__fs_event_ts"
_LATEST = "__fs_latest"
FEATURE_ROW, LABEL_ROW = 0, 1


def align_key_types(labels: DataFrame, rows: DataFrame, keys: Sequence[str]) -> DataFrame:
    """Cast the feature rows' key columns to the label rows' types, so ``1`` and ``"1"`` meet.

    The label side keeps its types because its columns are passed through to the
    caller unchanged.
    """
    label_types = {f.name: f.dataType for f in labels.schema.fields}
    row_types = {f.name: f.dataType for f in rows.schema.fields}
    for key in keys:
        if row_types[key] != label_types[key]:
            rows = rows.withColumn(key, F.col(key).cast(label_types[key]))
    return rows


def as_of_join(labels: DataFrame, rows: DataFrame, *, keys: Sequence[str], ts: str,
               features: Sequence[tuple[str, str]], ttl_seconds: int | None,
               event_ts: str = "event_timestamp", created_ts: str | None = "created_timestamp",
               broadcast_keys: bool = False) -> DataFrame:
    """Add to each label row the values of the latest feature row at or before its time.

    ``labels``: the entity rows; they must hold ``keys`` and the TIMESTAMP column
    ``ts``; every other column passes through. ``rows``: feature rows with
    ``keys``, ``event_ts``, optionally ``created_ts``, and the feature columns.
    ``features``: pairs ``(column in rows, output name)``. A label row gets NULL
    for every feature when no feature row of its key is at or before its time, or
    when the latest one is older than ``ttl_seconds`` (an age of exactly the TTL
    is still valid). Label rows with a NULL key or time get NULLs.
    Rows come back unordered; the caller restores its order.

    ``broadcast_keys``: first drop the feature rows of keys no label row has, by a
    broadcast semi-join (no shuffle) — worth it when the label rows are few
    enough to broadcast and cover a fraction of the keys.
    """
    rows = rows.where(F.col(event_ts).isNotNull())
    for key in keys:
        rows = rows.where(F.col(key).isNotNull())
    rows = align_key_types(labels, rows, keys)
    if broadcast_keys:
        rows = rows.join(F.broadcast(labels.select(*keys)), on=list(keys), how="left_semi")
    payload = F.struct(F.col(event_ts).alias(EVENT_TS), *[F.col(src).alias(out) for src, out in features])
    feature_side = rows.select(
        *[F.col(k) for k in keys],
        F.col(event_ts).cast(T.TimestampType()).alias(ts),
        F.lit(FEATURE_ROW).alias(KIND),
        (F.col(created_ts).cast(T.TimestampType()) if created_ts else F.lit(None).cast(T.TimestampType())).alias(CREATED),
        payload.alias(PAYLOAD),
    )
    payload_type = feature_side.schema[PAYLOAD].dataType
    label_side = labels.select(
        "*",
        F.lit(LABEL_ROW).alias(KIND),
        F.lit(None).cast(T.TimestampType()).alias(CREATED),
        F.lit(None).cast(payload_type).alias(PAYLOAD),
    )
    both = label_side.unionByName(feature_side, allowMissingColumns=True)
    window = (Window.partitionBy(*keys)
              .orderBy(F.col(ts).asc_nulls_first(), F.col(KIND).asc(), F.col(CREATED).asc_nulls_first())
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    joined = both.withColumn(_LATEST, F.last(PAYLOAD, ignorenulls=True).over(window)).where(F.col(KIND) == LABEL_ROW)
    latest = F.col(_LATEST)
    visible = latest.isNotNull() & F.col(ts).isNotNull()
    if ttl_seconds is not None:
        visible = visible & (latest[EVENT_TS] >= F.col(ts) - F.make_dt_interval(secs=F.lit(ttl_seconds)))
    outputs = [F.when(visible, latest[out]).alias(out) for _, out in features]
    return joined.select(*[F.col(c) for c in labels.columns], *outputs)
