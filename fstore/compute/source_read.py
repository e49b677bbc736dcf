"""What of a source a run read: its files with size and mtime (a Delta source: its version and files).

DESIGN.md: new data is found by what was read, not by event time. Each run
records ``take(source)`` before it reads; the next incremental run compares the
source with it (``new_files``), so an event arriving late — in a new or changed
file, whatever its event time — is processed, and a run that finds nothing new
writes nothing. ``as_of`` reads windows from the files a version's run read
(``read_pinned``), so asking again later gives the same rows; a file that changed
since is refused by name rather than read.

Sources that are not local paths (Spark tables, queries, remote paths) have no
listing (``take`` gives None): their incremental runs go by event time, as before.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fstore.core.errors import Conflict

if TYPE_CHECKING:
    from fstore.definitions.model import Source
    from fstore.core.settings import Settings
    from fstore.core.context import StoreContext


def _local(path: str) -> str | None:
    if "://" in path and not path.startswith("file:"):
        return None
    return path[len("file://"):] if path.startswith("file://") else path.removeprefix("file:")


def take(source: "Source | None") -> dict[str, Any] | None:
    """The source's data files now: ``{"kind", "files": {path: [size, mtime_ns]}, "version"?}``, or None."""
    if source is None or not source.path:
        return None
    root = _local(source.path)
    if root is None or not os.path.exists(root):
        return None
    if source.format == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(root)
        paths = [_local(uri) or uri for uri in table.file_uris()]
        return {"kind": "delta", "version": table.version(), "files": _stat(paths)}
    from fstore.engine.sources import data_files

    extension = ".parquet" if source.format == "parquet" else ""
    return {"kind": "files", "files": _stat(data_files(root, extension))}


def _stat(paths: list[str]) -> dict[str, list[int]]:
    out = {}
    for path in paths:
        info = os.stat(path)
        out[os.path.abspath(path)] = [info.st_size, info.st_mtime_ns]
    return out


def new_files(previous: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str] | None:
    """Files of ``current`` that ``previous`` did not read as they are now; None when it cannot tell."""
    if previous is None or current is None:
        return None
    before = previous.get("files", {})
    return sorted(p for p, stat in current.get("files", {}).items() if before.get(p) != stat)


def file_source(source: "Source", path: str) -> "Source":
    """``source`` restricted to one of its files (same format and options)."""
    fmt = "parquet" if source.format == "delta" else source.format
    return dataclasses.replace(source, path=path, format=fmt)


def check_unchanged(snapshot: dict[str, Any], what: str) -> list[str]:
    """The snapshot's files, after checking each is still there as it was read (``Conflict`` naming it)."""
    paths = []
    for path, stat in snapshot.get("files", {}).items():
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise Conflict(f"{what} read source file {path}, which no longer exists; its windows cannot be "
                           "computed as they were") from None
        if [info.st_size, info.st_mtime_ns] != list(stat):
            raise Conflict(f"{what} read source file {path}, which has changed since (size or mtime); its windows "
                           "cannot be computed as they were")
        paths.append(path)
    return paths


def scan_late(store: "StoreContext", source: "Source", files: list[str],
              cutoff: datetime | None) -> tuple[datetime | None, int]:
    """Over ``files``: the earliest event time, and how many events are before ``cutoff`` (naive UTC)."""
    from fstore.engine.sources import to_utc_naive

    earliest, dropped = None, 0
    column = source.event_timestamp_column
    for path in files:
        one = file_source(source, path)
        if store.settings.compute_engine == "duckdb":
            from fstore.engine import duckdb as engine

            con = engine.connect(store.settings.max_compute_threads)
            try:
                relation = engine.read_source(con, one, settings=store.settings)
                ts = f"CAST({engine.ident(column)} AS TIMESTAMPTZ)"
                late = f"{ts} < TIMESTAMPTZ '{cutoff.isoformat(sep=' ')}+00'" if cutoff else "false"
                low, n = relation.aggregate(f"min({ts}), count(*) FILTER (WHERE {late})").fetchall()[0]
            finally:
                con.close()
        else:
            from pyspark.sql import functions as F

            from fstore.engine.spark import read_source, ts_literal

            df = read_source(store.spark, one, settings=store.settings)
            ts = F.col(f"`{column}`").cast("timestamp")
            late = ts < F.expr(ts_literal(cutoff)) if cutoff else F.lit(False)
            row = df.agg(F.min(ts).alias("low"), F.count(F.when(late, 1)).alias("n")).collect()[0]
            low, n = row["low"], row["n"]
        if low is not None:
            low = to_utc_naive(low)
            earliest = low if earliest is None or low < earliest else earliest
        dropped += int(n or 0)
    return earliest, dropped


def read_pinned_spark(spark, source: "Source", snapshot: dict[str, Any], what: str, *, settings: "Settings"):
    """The source as ``snapshot`` recorded it, on Spark (a Delta source at its version)."""
    from fstore.engine.spark import read_delta, read_source
    from fstore.definitions.guard import check_source

    check_source(settings, source)
    if snapshot.get("kind") == "delta":
        return read_delta(spark, _local(source.path) or source.path, version=int(snapshot["version"]))
    frames = [read_source(spark, file_source(source, p), settings=settings) for p in check_unchanged(snapshot, what)]
    if not frames:
        return read_source(spark, source, settings=settings).limit(0)
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame, allowMissingColumns=True)
    return out


def read_pinned_duckdb(con, source: "Source", snapshot: dict[str, Any], what: str, *, settings: "Settings"):
    """The source as ``snapshot`` recorded it, as a DuckDB relation (a Delta source at its version)."""
    from fstore.engine import duckdb as engine
    from fstore.definitions.guard import check_source

    check_source(settings, source)
    if snapshot.get("kind") == "delta":
        from deltalake import DeltaTable

        return con.from_arrow(DeltaTable(_local(source.path) or source.path,
                                         version=int(snapshot["version"])).to_pyarrow_dataset())
    paths = check_unchanged(snapshot, what)
    if not paths:
        return engine.read_source(con, source, settings=settings).limit(0)
    views = []
    for i, path in enumerate(paths):
        name = f"__fs_pinned{id(snapshot)}_{i}"
        con.register(name, engine.read_source(con, file_source(source, path), settings=settings))
        views.append(name)
    return con.sql(" UNION ALL BY NAME ".join(f"SELECT * FROM {v}" for v in views))
