"""The offline store's Delta writes and reads through delta-spark's own ``format("delta")``.

``fstore.storage.offline`` owns the store (layout, versions, vacuum, checkpoints, the
``as_of`` rules); this module is the one place where Spark talks Delta itself,
used when delta-spark's jars are on the session's class path (set-up caches
them: ``fstore.engine.jars``) and ``DELTA_WRITER`` is ``auto`` or ``spark``.
Otherwise Spark writes Parquet and ``fstore.storage.offline`` commits it with delta-rs.
Both make the same table: same layout (``event_date=YYYY-MM-DD/`` folders),
same schema, the same versions for the same writes, so either reads the other.

- **Write**: the rows of ``[start, end)`` replace the table's rows in that range
  in ONE commit (``mode("overwrite")`` + ``replaceWhere`` on the event time: Delta
  rewrites the touched files keeping their rows outside the range). A feature
  added by a new feature set version is added first by an append of no rows with
  ``mergeSchema`` (a metadata-only commit, as the delta-rs path does); a changed type is
  refused before anything is written. delta-spark writes its checkpoints itself
  every 10 commits, the interval the delta-rs path keeps.
- **Read**: ``versionAsOf`` of the version ``fstore.storage.offline.delta_table`` resolved.
  An ``as_of`` time is resolved to a version there once, for both engines (DuckDB
  reads through delta-rs), so a time means the same version everywhere, and a
  time after the last commit reads the latest version (Spark's ``timestampAsOf``
  refuses such a time).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime

from fstore.core.errors import Unavailable
from fstore.core.settings import Settings

log = logging.getLogger(__name__)


def in_use(spark, settings: Settings) -> bool:
    """Whether ``spark`` writes and reads Delta itself for ``settings`` (``DELTA_WRITER`` and the class path)."""
    if settings.delta_writer == "delta-rs":
        return False
    try:
        jvm = spark._jvm
    except Exception:  # noqa: BLE001 - Spark Connect: no JVM here; the server's class path decides
        jvm = None
    if jvm is None:
        return settings.delta_writer == "spark"
    from fstore.engine.jars import has_delta_classes

    found = has_delta_classes(jvm)
    if not found and settings.delta_writer == "spark":
        raise Unavailable("DELTA_WRITER=spark, but this Spark session has no Delta classes: fetch the jars with "
                          "`python -m fstore.engine.jars` and start a new session")
    return found


def write_range(spark, settings: Settings, name: str, rows, start: datetime, end: datetime) -> int:
    """Replace the rows of ``name``'s table with event time in ``[start, end)`` by ``rows`` (``offline._prepare``'s,
    with ``event_date``); returns the new version."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from fstore.storage import offline_table
    from fstore.engine.spark import ts_literal

    uri = offline_table.table_uri(settings, name)
    table = offline_table.delta_table(settings, name)
    if table is not None:
        added = {f.name for f in offline_table.schema_changes(table, to_arrow_schema(rows.schema))}
        if added:
            # A metadata-only commit (no rows, schema merged), as the delta-rs path makes. Not ALTER TABLE
            # delta.`path`: spark.sql.runSQLOnFiles is off so that no user SQL can name a path.
            (spark.createDataFrame([], rows.schema).write.format("delta").mode("append")
             .option("mergeSchema", "true").save(uri))
    if settings.storage_backend == "local":
        _no_checksum_files(spark, uri)
    predicate = f"event_timestamp >= {ts_literal(start)} AND event_timestamp < {ts_literal(end)}"
    meta = {"fstore.operation": "write_range", "fstore.start": start.isoformat(), "fstore.end": end.isoformat()}
    began = time.time()
    try:
        (offline_table.parquet_writer(offline_table.by_day(spark, rows)).format("delta").mode("overwrite")
         .partitionBy(offline_table.PARTITION)
         .option("replaceWhere", predicate)
         .option("partitionOverwriteMode", "static")  # spark-defaults' dynamic mode and replaceWhere exclude each other
         .option("userMetadata", json.dumps(meta))
         .save(uri))
    except BaseException:
        _discard_uncommitted(settings, name, uri, began)  # a full disk must not stay full of a failed run's files
        offline_table.release_failed_writers(spark)
        raise
    return offline_table.current_version(settings, name)


def _discard_uncommitted(settings: Settings, name: str, uri: str, since: float) -> None:
    """Delete the data files a failed write put in the table: written since ``since`` and named by no version.

    delta-spark writes straight into the table's day folders and commits at the end, so a write that failed
    leaves its files there (readers ignore them; they only take space until a VACUUM). The run holds the
    set's lock, so no other writer can have written files meanwhile. Best effort: the write's error matters more.
    """
    from pyarrow import fs as pafs

    from fstore.storage import offline_table

    try:
        fs, to_path = offline_table.filesystem(settings)
        root = to_path(uri).rstrip("/")
        table = offline_table.delta_table(settings, name)
        known = {to_path(u) for u in table.file_uris()} if table else set()
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            relative = info.path[len(root) + 1:]
            if (info.type == pafs.FileType.File and not relative.startswith(("_", "."))
                    and "/_" not in relative and info.path not in known
                    and info.mtime is not None and info.mtime.timestamp() >= since - 1):
                fs.delete_file(info.path)
    except Exception:  # noqa: BLE001 - left for vacuum; named in the log
        log.warning("could not remove the files of a failed write to %s", uri, exc_info=True)


def _no_checksum_files(spark, uri: str) -> None:
    """Have Hadoop's local file system write no ``.part-….parquet.crc`` beside each data file.

    Its checksum layer adds one per file; the delta-rs path never leaves them (its Parquet is written to a
    staging folder and only the data files are moved in). Beside a table's files they are clutter that a
    full VACUUM deletes and counts as files. The switch is on the file system instance Hadoop caches for
    ``file://``, which this driver's (local) write tasks share; Delta's log, written through another API,
    keeps its own checksums."""
    try:
        jvm = spark._jvm
        path = jvm.org.apache.hadoop.fs.Path(uri)
        path.getFileSystem(spark._jsc.hadoopConfiguration()).setWriteChecksum(False)
    except Exception:  # noqa: BLE001 - Spark Connect (no JVM here): the sidecars are only clutter
        pass


def read_version(spark, settings: Settings, name: str, version: int):
    """Version ``version`` of ``name``'s table as a Spark DataFrame, read by delta-spark."""
    from fstore.storage import offline_table

    return spark.read.format("delta").option("versionAsOf", version).load(offline_table.table_uri(settings, name))
