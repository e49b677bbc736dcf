"""Source events pinned for a saved training set, so its windows are re-created bit for bit.

A windowed feature's value at a label time is an aggregate over source events
(``fstore.serving.retrieval.windows``), and a source moves on: new files, late events,
rewritten files. The offline store's Delta version pins row features; for
windows, saving a training set copies the source events that can fall in one of
its label rows' windows (event time in ``(min label - longest window, max label]``)
as Parquet under ``<data_root>/training_sets/<name>/events/<feature set>``, and
both the saved answer and every re-creation compute the windows from that copy,
never from the live source. Either engine writes a copy the other reads.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from fstore.definitions.model import Source

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.settings import Settings
    from fstore.serving.retrieval.entities import Entities
    from fstore.core.context import StoreContext


def reading_settings(settings: "Settings") -> "Settings":
    """``settings`` that may also read the store's own pinned copies (``training_sets/``), wherever
    SOURCE_ROOTS points: fstore wrote them, a definition never names them."""
    own = f"{settings.data_root.rstrip('/')}/training_sets"
    return settings.with_(source_roots=(*settings.allowed_source_roots, own))


def pinned_source(source: Source, path: str) -> Source:
    """``source`` as read from its pinned copy at ``path`` (Parquet, the same columns)."""
    return dataclasses.replace(source, path=path, format="parquet", table=None, query=None, options={})


def write_events(store: "StoreContext", fsv: "FeatureSetVersion", source: Source, entities: "Entities",
                 longest_seconds: int, path: str, snapshot: dict | None = None) -> Source:
    """Copy the events of ``source`` that the label rows' windows can see to ``path``; the copy as a source.

    ``snapshot`` (a retrieval ``as_of`` an offline version: what the run that wrote it read, from
    ``fstore.compute.source_read``) copies from exactly those files, not from the source as it is today.
    """
    lo = entities.min_ts - timedelta(seconds=longest_seconds)
    hi = entities.max_ts + timedelta(microseconds=1)
    what = f"the run of {fsv.name}'s offline version read"
    if store.settings.compute_engine == "duckdb":
        _write_duckdb(store, source, lo, hi, path, snapshot, what)
    else:
        from pyspark.sql import functions as F

        from fstore.compute.source_read import read_pinned_spark
        from fstore.engine.spark import read_source

        if snapshot is None:
            rows = read_source(store.spark, source, settings=store.settings, start=lo, end=hi)
        else:
            rows = read_pinned_spark(store.spark, source, snapshot, what, settings=store.settings)
            at = F.col(source.event_timestamp_column).cast("timestamp")
            rows = rows.where((at >= F.lit(lo)) & (at < F.lit(hi)))
        rows.coalesce(1).write.mode("overwrite").parquet(path)
    return pinned_source(source, path)


def _write_duckdb(store: "StoreContext", source: Source, lo: datetime, hi: datetime, path: str,
                  snapshot: dict | None, what: str) -> None:
    import pyarrow.parquet as pq

    from fstore.engine import duckdb as engine
    from fstore.storage.offline import filesystem

    con = engine.connect(store.settings.max_compute_threads)
    try:
        if snapshot is None:
            relation = engine.read_source(con, source, settings=store.settings)
        else:
            from fstore.compute.source_read import read_pinned_duckdb

            relation = read_pinned_duckdb(con, source, snapshot, what, settings=store.settings)
        column = f"CAST({engine.ident(source.event_timestamp_column)} AS TIMESTAMPTZ)"
        relation = relation.filter(f"{column} >= TIMESTAMPTZ '{lo.isoformat(sep=' ')}+00' AND "
                                   f"{column} < TIMESTAMPTZ '{hi.isoformat(sep=' ')}+00'")
        table = micros(relation.to_arrow_table())
    finally:
        con.close()
    fs, path_of = filesystem(store.settings)
    folder = path_of(path)
    fs.create_dir(folder, recursive=True)
    fs.delete_dir_contents(folder)
    pq.write_table(utc_timestamps_if_aware(table), f"{folder}/part-00000.parquet", filesystem=fs)


def micros(table):
    """``table`` with nanosecond timestamps as microseconds (what Spark reads; no event time is finer)."""
    import pyarrow as pa

    for i, arrow_type in enumerate(table.schema.types):
        if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns":
            table = table.set_column(i, table.schema.field(i).name,
                                     table.column(i).cast(pa.timestamp("us", tz=arrow_type.tz)))
    return table


def utc_timestamps_if_aware(table):
    """Aware timestamps as UTC (naive ones are kept: they already mean UTC)."""
    import pyarrow as pa

    for i, arrow_type in enumerate(table.schema.types):
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None and arrow_type.tz != "UTC":
            table = table.set_column(i, table.schema.field(i).name,
                                     table.column(i).cast(pa.timestamp(arrow_type.unit, tz="UTC")))
    return table
