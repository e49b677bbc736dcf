"""Load the window contributions (``fstore.storage.online.windows``) of a materialized range into the online store.

After a run's ordinary online load, the source events the run read (``[start - longest window,
end)``) go through the compiler's own first stages (``wide_sql``: the same keys, event time,
value and filter expressions the windows aggregate), projected to ``(keys, ts, value_i,
counted_i)`` per windowed feature. Per entity key whose last event falls in ``[start, end)``
(and is within what the load keeps: ``load.ttl_cutoff``), the events of ``(last - longest
window, last]`` are encoded into one record (``fstore.storage.online.windows.encode``) and written with
``OnlineStore.write_at``: only where the hash still holds that very row (``@ts`` equal), so a newer row is never given older events and
a row that validation dropped never gets contributions.

On Spark the grouping runs in Spark and the encoding and writes in the executors
(``mapInArrow``), as the main load does; on DuckDB in process.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from fstore.compiler.dialect import quote
from fstore.storage.online.base import Codec
from fstore.storage.online.windows import FIELD, OnlineWindow, encode, online_windows

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.context import StoreContext
    from fstore.core.settings import Settings

BATCH = 500
TS = "__w_ts"


def _specs(fsv: "FeatureSetVersion") -> list[tuple[OnlineWindow, Any]]:
    from fstore.compiler import EVENT_TIME
    from fstore.compiler.windows import window_spec

    windows = online_windows(fsv)
    return [(windows[f.name], window_spec(fsv, f, event_time=EVENT_TIME)) for f in fsv.features if f.name in windows]


def events_query(fsv: "FeatureSetVersion", specs):
    """The compiled query of ``fsv`` projected to each event's keys, time and per-window value and flag."""
    from fstore.compiler import EVENT_TIME, compile_feature_set

    compiled = compile_feature_set(fsv)
    projection = [quote(k) for k in fsv.join_keys] + [f"UNIX_MICROS({EVENT_TIME}) AS {TS}"]
    for i, (_, spec) in enumerate(specs):
        projection.append(f"({spec.value}) AS `__w_v{i}`" if spec.value else f"CAST(NULL AS INT) AS `__w_v{i}`")
        projection.append(f"COALESCE(({spec.filter}), FALSE) AS `__w_c{i}`" if spec.filter else f"TRUE AS `__w_c{i}`")
    return dataclasses.replace(compiled, projection=tuple(projection), python_features=())


def entity_rows(codec: Codec, windows: Sequence[OnlineWindow], rows: Iterable[dict], cutoff: int | None,
                start_us: int | None) -> list[tuple[str, int, list[bytes]]]:
    """Grouped rows (keys, ``last``, ``events``: dicts of ts/values/flags) → ``write_at`` rows."""
    out = []
    n = len(windows)
    for row in rows:
        last = row["last"]
        if last is None or (start_us is not None and last < start_us) or (cutoff is not None and last < cutoff):
            continue
        events = [(e[TS], [(bool(e[f"__w_c{i}"]), e[f"__w_v{i}"]) for i in range(n)]) for e in row["events"]]
        out.append((codec.key_of(row), last, [encode(windows, codec.version, last, events)]))
    return out


def _open(config: dict[str, Any]):
    if config.get("url"):
        from fstore.storage.online.redis_store import RedisOnlineStore

        return RedisOnlineStore(config["url"], pool_size=1, timeout=config["timeout"], breaker=None)
    from fstore.storage.online.embedded import EmbeddedOnlineStore

    return EmbeddedOnlineStore(config["path"])


def _config(settings: "Settings") -> dict[str, Any]:
    if settings.redis_url:
        return {"url": settings.redis_url, "timeout": max(settings.redis_timeout, 30.0)}
    return {"path": str(settings.embedded_online_path)}


def _write(config: dict[str, Any], codec: Codec, windows: Sequence[OnlineWindow], cutoff: int | None,
           start_us: int | None, batches: Iterable[list[dict]]) -> int:
    store = _open(config)
    fields = [FIELD]
    written = 0
    try:
        for rows in batches:
            ready = entity_rows(codec, windows, rows, cutoff, start_us)
            for at in range(0, len(ready), BATCH):
                written += store.write_at(codec.name, fields, ready[at:at + BATCH])
    finally:
        store.close()
    return written


def _tasks(config, codec, windows, cutoff, start_us, batches: Iterable) -> Iterator:
    """``mapInArrow`` body: encode and write one task's grouped keys; yield the count written."""
    import pyarrow as pa

    written = _write(config, codec, windows, cutoff, start_us, (b.to_pylist() for b in batches))
    yield pa.RecordBatch.from_pydict({"written": [written]}, schema=pa.schema([("written", pa.int64())]))


def _micros(value: datetime | None) -> int | None:
    from fstore.storage.online.base import to_micros

    return None if value is None else to_micros(value)


def load_windows(store: "StoreContext", fsv: "FeatureSetVersion", start: datetime | None, end: datetime | None, *,
                 now_micros: int | None = None, rows=None) -> int:
    """Write the window contributions of ``fsv``'s entities whose last event is in ``[start, end)``;
    returns keys written (0 for a set without windowed features). ``rows``: the source already read for the
    run (a pyarrow Table on DuckDB, a DataFrame on Spark, holding at least the look-back), or None to read it."""
    from fstore.storage.online.load import ttl_cutoff

    specs = _specs(fsv)
    if not specs or not fsv.feature_set.online_enabled or fsv.feature_set.source is None:
        return 0
    codec = Codec.from_version(fsv)
    windows = [w for w, _ in specs]
    query = events_query(fsv, specs)
    cutoff = ttl_cutoff(codec, now_micros)
    config = _config(store.settings)
    start_us = _micros(start)
    if store.settings.compute_engine == "duckdb":
        return _load_duckdb(store, fsv, query, start, end, lambda found: _write(config, codec, windows, cutoff, start_us, [found]),
                            rows)
    from pyspark.sql import functions as F

    from fstore.engine.spark import in_range, read_source, run_compiled

    if rows is None:
        source_df = read_source(store.spark, fsv.feature_set.source, settings=store.settings, start=start, end=end,
                                lookback_seconds=query.lookback_seconds)
    else:
        source_df = in_range(rows, fsv.feature_set.source.event_timestamp_column, start, end, query.lookback_seconds)
    df = run_compiled(store.spark, fsv, query, source_df, settings=store.settings)
    keys = list(fsv.join_keys)
    df = df.where(" AND ".join([f"{TS} IS NOT NULL", *(f"{quote(k)} IS NOT NULL" for k in keys)]))
    others = [c for c in df.columns if c not in keys]
    grouped = df.groupBy(*keys).agg(F.max(TS).alias("last"), F.collect_list(F.struct(*others)).alias("events"))
    tasks = grouped.mapInArrow(partial(_tasks, config, codec, windows, cutoff, start_us), "written long")
    return int(tasks.agg(F.sum("written")).collect()[0][0] or 0)


def _load_duckdb(store: "StoreContext", fsv: "FeatureSetVersion", query, start: datetime | None, end: datetime | None, write,
                 rows=None) -> int:
    from fstore.engine import duckdb as engine
    from fstore.engine.duckdb import ident
    from fstore.engine.duckdb import _timestamp_literal as literal

    source = fsv.feature_set.source
    con = engine.connect(store.settings.max_compute_threads)
    try:
        relation = engine.read_source(con, source, settings=store.settings) if rows is None else con.from_arrow(rows)
        column = f"CAST({ident(source.event_timestamp_column)} AS TIMESTAMPTZ)"
        conds = []
        if start is not None:
            conds.append(f"{column} >= {literal(start - timedelta(seconds=query.lookback_seconds))}")
        if end is not None:
            conds.append(f"{column} < {literal(end)}")
        if conds:
            relation = relation.filter(" AND ".join(conds))
        engine.seal(con)
        table = engine.run_compiled(con, fsv, query, relation, settings=store.settings)
    finally:
        con.close()
    keys = list(fsv.join_keys)
    grouped: dict[tuple, dict] = {}
    for event in table.to_pylist():
        if event[TS] is None or any(event[k] is None for k in keys):
            continue
        ident_ = tuple(event[k] for k in keys)
        row = grouped.get(ident_)
        if row is None:
            row = grouped[ident_] = {**{k: event[k] for k in keys}, "last": event[TS], "events": []}
        row["last"] = max(row["last"], event[TS])
        row["events"].append(event)
    return write(list(grouped.values()))
