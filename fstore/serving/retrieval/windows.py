"""Windowed features exact at the label time, computed on Spark.

The offline store holds a windowed feature's value at each *event* time; at a
label time between two events the value may have changed (a 30-day count drops
the events that aged out since). So for each label row we evaluate the window
itself at the label time: label rows are unioned with the source's event rows
read over ``[min label time - longest window, max label time]``, and the
compiler's own window aggregate (``fstore.compiler.windows.window_sql``, frame
``(t - size, t]``) runs over the union with an event flag, so label rows sit in
the frame without being counted. One shuffle (partition by the keys) serves
every windowed feature of the set.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fstore.compiler.windows import WindowSpec, window_sql
from fstore.serving.retrieval.entities import ts_lit
from fstore.serving.retrieval.pit import align_key_types

EVENT = "__fs_event"
CARRY = "__fs_carry"


def exact_windows(labels: DataFrame, events: DataFrame, *, keys: Sequence[str], ts: str, event_ts: str,
                  windows: Sequence[tuple[WindowSpec, str]], lo: datetime | None = None,
                  hi: datetime | None = None) -> DataFrame:
    """Add to each label row the value of each window at the row's time ``ts``.

    ``labels`` holds ``keys`` (named as the source's key columns) and ``ts``; its
    other columns pass through. ``events`` are raw source rows with ``keys`` and
    the event time column ``event_ts``. ``windows``: pairs ``(spec, output
    column)``. ``lo``/``hi`` bound the label times, to read only the events
    that can fall in a window.
    """
    longest = max(spec.size_seconds for spec, _ in windows)
    events = events.where(F.col(event_ts).isNotNull())
    for key in keys:
        events = events.where(F.col(key).isNotNull())
    if hi is not None:
        events = events.where(F.col(event_ts) <= ts_lit(hi))
    if lo is not None:
        events = events.where(F.col(event_ts) > ts_lit(lo - timedelta(seconds=longest)))
    events = align_key_types(labels, events, keys)
    carried = [c for c in labels.columns if c not in keys and c != ts]
    label_side = labels.select(*[F.col(k) for k in keys], F.col(ts), F.lit(False).alias(EVENT),
                               F.struct(*[F.col(c) for c in carried]).alias(CARRY))
    event_side = events.select("*", F.col(event_ts).cast(T.TimestampType()).alias(ts), F.lit(True).alias(EVENT))
    if event_ts == ts:
        event_side = events.select("*", F.lit(True).alias(EVENT))
    both = label_side.unionByName(event_side, allowMissingColumns=True)
    aggregates = [F.expr(window_sql(spec, keys=tuple(keys), timestamp=ts, event_flag=EVENT)).alias(out)
                  for spec, out in windows]
    out = both.select(F.col(EVENT), F.col(CARRY), *[F.col(k) for k in keys], F.col(ts), *aggregates)
    out = out.where(~F.col(EVENT))
    return out.select(*[F.col(k) for k in keys], F.col(ts), *[F.col(f"{CARRY}.{c}").alias(c) for c in carried],
                      *[F.col(o) for _, o in windows])
