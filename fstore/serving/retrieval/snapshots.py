"""Retrieval without an entity frame: every entity of the sets, at each instant of a range (feast#1611).

``get_snapshot_features(store, feature_sets=[…], start=…, end=…, every="1d")`` builds the entity rows
itself, then answers them exactly as ``get_historical_features`` would (same plan, same engines, same
columns): for each instant ``start, start + every, …`` before ``end`` (``[start, end)``, as a
materialization range), one row per entity key of the sets that has an offline row at or before that
instant (an entity that does not exist yet gets no row). The keys come from the sets' offline tables; all
the sets must share their join keys. The result's timestamp column is ``event_timestamp``.

A daily training set of snapshots is then one call. Large ones go to ``output_path`` (Parquet or Delta,
written as a batch retrieval writes: Spark's executors, or pyarrow on DuckDB) instead of memory, and
are not held to ``MAX_HISTORICAL_ROWS``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fstore.core.errors import InvalidDefinition

if TYPE_CHECKING:
    from fstore.registry.references import FeatureGroup
    from fstore.serving.retrieval.plan import RetrievalResult
    from fstore.core.context import StoreContext

TIMESTAMP = "event_timestamp"
MAX_INSTANTS = 100_000


def instants(start: Any, end: Any, every: Any) -> list[datetime]:
    """``start, start + every, …`` before ``end`` (naive UTC)."""
    from fstore.definitions.model import parse_duration
    from fstore.engine.sources import to_utc_naive

    if start is None or end is None or every is None:
        raise InvalidDefinition("a retrieval without entity rows needs start, end and every", field="every")
    start, end = to_utc_naive(start), to_utc_naive(end)
    step = parse_duration(every, field_name="every")
    if step <= 0:
        raise InvalidDefinition("every must be a positive duration like 1d", field="every")
    if end <= start:
        raise InvalidDefinition("end must be after start", field="end")
    count = -(-int((end - start).total_seconds()) // step)
    if count > MAX_INSTANTS:
        raise InvalidDefinition(f"start, end and every give {count} instants; at most {MAX_INSTANTS}", field="every")
    return [start + timedelta(seconds=i * step) for i in range(count)]


def _shared_keys(groups: list["FeatureGroup"]) -> list[str]:
    keys = {tuple(g.version.join_keys) for g in groups}
    if len(keys) != 1:
        raise InvalidDefinition("a retrieval without entity rows needs feature sets with the same join keys; these "
                                "have " + " and ".join(", ".join(k) for k in sorted(keys)), field="feature_sets")
    return list(next(iter(keys)))


def _spark_entities(store: "StoreContext", groups: list["FeatureGroup"], keys: list[str], times: list[datetime]):
    """Every (key, instant) with an offline row of some set at or before the instant, as a Spark DataFrame."""
    from pyspark.sql import functions as F

    from fstore.storage import offline
    from fstore.compiler.dialect import quote

    firsts = None
    for group in groups:
        rows = offline.read_table(store.spark, store.settings, group.version.name)
        # A row after the last instant makes no entity exist at any instant.
        first = rows.where(F.col("event_timestamp") <= F.lit(times[-1].replace(tzinfo=timezone.utc))).groupBy(*[quote(k) for k in keys]).agg(F.min("event_timestamp").alias("__fs_first"))
        firsts = first if firsts is None else firsts.unionByName(first)
    firsts = firsts.groupBy(*[quote(k) for k in keys]).agg(F.min("__fs_first").alias("__fs_first"))
    at = store.spark.createDataFrame([(t.replace(tzinfo=timezone.utc),) for t in times], f"{TIMESTAMP} timestamp")
    return (firsts.crossJoin(F.broadcast(at)).where(F.col("__fs_first") <= F.col(TIMESTAMP))
            .select(*[quote(k) for k in keys], TIMESTAMP))


def _local_entities(store: "StoreContext", groups: list["FeatureGroup"], keys: list[str], times: list[datetime]):
    """The same rows as ``_spark_entities``, as a pandas frame computed by DuckDB from the offline files."""
    import pandas as pd

    from fstore.engine import duckdb as engine
    from fstore.engine.duckdb import ident
    from fstore.storage.offline_arrow import read_files

    con = engine.connect(store.settings.max_compute_threads)
    try:
        parts = []
        for group in groups:
            files = read_files(store.settings, group.version.name, as_of=None, lo=None, hi=times[-1])
            if files.paths:
                engine.allow_files(con, files.paths)
                relation = con.read_parquet(files.paths, union_by_name=True)
            elif files.dataset is not None:
                relation = con.from_arrow(files.dataset)
            else:
                continue
            name = f"__fs_rows_{len(parts)}"
            con.register(name, relation)
            parts.append(f"SELECT {', '.join(ident(k) for k in keys)}, event_timestamp FROM {name}")
        if not parts:
            return pd.DataFrame({**{k: [] for k in keys}, TIMESTAMP: pd.Series([], dtype="datetime64[us, UTC]")})
        at = pd.DataFrame({TIMESTAMP: pd.Series(times, dtype="datetime64[us]").dt.tz_localize("UTC")})
        con.register("__fs_instants", at)
        k = ", ".join(ident(c) for c in keys)
        sql = (f"SELECT {k}, i.{TIMESTAMP} FROM (SELECT {k}, min(event_timestamp) AS __fs_first FROM "
               f"({' UNION ALL '.join(parts)}) GROUP BY {k}) f JOIN __fs_instants i ON f.__fs_first <= i.{TIMESTAMP} "
               f"ORDER BY i.{TIMESTAMP}, {k}")
        return con.sql(sql).df()
    finally:
        con.close()


def get_snapshot_features(store: "StoreContext", *, feature_sets: list[str], features: list[str] | None = None,
                          start: Any, end: Any, every: Any, output_path: str | None = None,
                          output_format: str = "parquet") -> "RetrievalResult":
    """Features of every entity of ``feature_sets`` at each instant of ``[start, end)`` spaced ``every``
    (see the module docstring). ``features`` default to every feature of the sets (answered as
    ``set__feature``). With ``output_path`` the rows are written there too (Parquet or Delta)."""
    from fstore.registry.references import resolve
    from fstore.serving.retrieval.entities import key_types, prepare_entities, prepare_local
    from fstore.serving.retrieval.historical import retrieve

    if not isinstance(feature_sets, list) or not feature_sets:
        raise InvalidDefinition("feature_sets must be a non-empty list of feature set names", field="feature_sets")
    times = instants(start, end, every)
    if not features:
        features = [f"{name}:{f.name}" for name in dict.fromkeys(feature_sets)
                    for f in store.feature_set_version(name).features]
    groups = resolve(store, features, feature_sets)
    keys = _shared_keys(groups)
    types = key_types(g.version for g in groups)
    if output_path is not None:
        from fstore.serving.retrieval.batch import check_output

        output_path, output_format = check_output(store.settings, output_path, output_format)
    limit = None if output_path is not None else store.settings.max_historical_rows
    pins = {g.version.name: None for g in groups}
    if store.settings.compute_engine == "duckdb":
        from fstore.serving.retrieval import historical_duckdb

        entities = prepare_local(_local_entities(store, groups, keys, times), TIMESTAMP, max_rows=limit, keys=types)
        result = historical_duckdb.retrieve(store, entities, groups, pins)
    else:
        entities = prepare_entities(store.spark, _spark_entities(store, groups, keys, times), TIMESTAMP,
                                    max_rows=limit, keys=types)
        result = retrieve(store, entities, groups, pins)
    result.meta.update(start=times[0].isoformat() + "Z", end=to_iso(end), every=every, instants=len(times))
    if output_path is not None:
        from fstore.serving.retrieval.batch import write_result

        write_result(result, store.settings, output_path, output_format)
        result.meta.update(output_path=output_path, output_format=output_format)
    return result


def to_iso(value: Any) -> str:
    from fstore.engine.sources import to_utc_naive

    return to_utc_naive(value).isoformat() + "Z"
