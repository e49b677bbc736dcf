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

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fstore.compiler.dialect import quote

KIND = "__fs_kind"
CREATED = "__fs_created"
PAYLOAD = "__fs_payload"
EVENT_TS = "__fs_event_ts"
_LATEST = "__fs_latest"
_LAST_LABEL = "__fs_last_label"
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
            rows = rows.withColumn(key, F.col(quote(key)).cast(label_types[key]))
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

    ``broadcast_keys``: first keep only the feature rows some label row can see: of a
    key some label row has, at or before that key's latest label time. A broadcast
    join with each key's latest label time does it without shuffling the feature
    rows; the rows it drops (other keys, and each key's rows after its last label:
    about half of them for labels spread over the feature rows' span) are never
    shuffled or sorted. Worth it when the label rows are few enough to broadcast.

    The plan is written as SQL text (``selectExpr``/``where`` strings): each is one
    call into the JVM, where building it from ``Column`` objects made one call per
    column, function and alias (about 0.4 s of py4j traffic per retrieval, measured).
    """
    quoted_keys = [quote(k) for k in keys]
    rows = rows.where(" AND ".join(f"{c} IS NOT NULL" for c in [quote(event_ts), *quoted_keys]))
    rows = align_key_types(labels, rows, keys)
    if broadcast_keys:
        latest_label = labels.groupBy(*quoted_keys).agg(F.max(quote(ts)).alias(_LAST_LABEL))
        rows = (rows.join(F.broadcast(latest_label), on=list(keys), how="inner")
                .where(f"CAST({quote(event_ts)} AS TIMESTAMP) <= {_LAST_LABEL}").drop(_LAST_LABEL))
    payload = ", ".join([f"'{EVENT_TS}', {quote(event_ts)}", *(f"'{out}', {quote(src)}" for src, out in features)])
    created = f"CAST({quote(created_ts)} AS TIMESTAMP)" if created_ts else "CAST(NULL AS TIMESTAMP)"
    feature_side = rows.selectExpr(*quoted_keys, f"CAST({quote(event_ts)} AS TIMESTAMP) AS {quote(ts)}",
                                   f"{FEATURE_ROW} AS {KIND}", f"{created} AS {CREATED}",
                                   f"named_struct({payload}) AS {PAYLOAD}")
    # The label rows lack CREATED and PAYLOAD: the union fills them with NULLs of the feature side's types.
    label_side = labels.selectExpr("*", f"{LABEL_ROW} AS {KIND}")
    both = label_side.unionByName(feature_side, allowMissingColumns=True)
    window = (f"PARTITION BY {', '.join(quoted_keys)} "
              f"ORDER BY {quote(ts)} ASC NULLS FIRST, {KIND} ASC, {CREATED} ASC NULLS FIRST "
              "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW")
    joined = both.selectExpr("*", f"last({PAYLOAD}, true) OVER ({window}) AS {_LATEST}").where(f"{KIND} = {LABEL_ROW}")
    visible = f"{_LATEST} IS NOT NULL AND {quote(ts)} IS NOT NULL"
    if ttl_seconds is not None:
        visible += f" AND {_LATEST}.{EVENT_TS} >= {quote(ts)} - make_dt_interval(0, 0, 0, {int(ttl_seconds)})"
    outputs = [f"CASE WHEN {visible} THEN {_LATEST}.{quote(out)} END AS {quote(out)}" for _, out in features]
    return joined.selectExpr(*[quote(c) for c in labels.columns], *outputs)
