"""The offline store: one table per feature set, partitioned by event date.

Layout: ``<data_root>/offline/<feature_set>``; columns: join keys,
``event_timestamp``, ``created_timestamp``, the features, partition column
``event_date`` (the UTC date of the event time).

``write_range`` replaces exactly the rows with event time in ``[start, end)``,
in ONE Delta commit: the partitions (days) the range touches are rewritten
with their old rows outside the range plus the new rows, and the old files of
those days are removed in the same commit. Two runs of a range give the same
table contents. Spark writes new files under ``_staging/<write id>/``, the
driver moves them into the day folders (``event_date=YYYY-MM-DD/``); a file
becomes part of the table only when the commit names it, so a run killed
before the commit leaves the previous version intact and readable (its
orphaned files are invisible to readers and removable by ``VACUUM``).

``fstore.storage.offline_arrow`` is the same store for rows computed in this process
as an Arrow table (the DuckDB engine, no JVM); the staging, move, stats and
commit steps here are shared by both.

Commits: when delta-spark's jars are on Spark's class path (set-up caches them,
``fstore.engine.jars``) and ``DELTA_WRITER`` allows, Spark writes and reads
``format("delta")`` itself (``replaceWhere``, ``versionAsOf``): that is
``fstore.storage.offline_spark_delta``. Otherwise (``DELTA_WRITER=delta-rs``, or no jars)
Spark writes Parquet and the driver commits the files with ``deltalake``
(``create_table_with_add_actions`` for the first commit,
``DeltaTable.create_write_transaction`` with add and remove actions after),
with per-file stats (numRecords, minValues, maxValues, nullCount) read from
the Parquet footers. Either way the result is a real Delta table with
versions and time travel. ``STORAGE_FORMAT=parquet`` keeps plain Parquet
partitions with the same replace semantics (a day's folder is swapped by
renames, so local storage only).

S3 (``STORAGE_BACKEND=s3``): the same layout under ``s3a://BUCKET/STORAGE_PATH``.
Spark reads and writes through ``s3a://``; delta-rs and pyarrow get their
options from the settings (``fstore.engine.s3``), and delta-rs commits with
conditional puts. tests/integration/test_s3.py runs it all against a moto server.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import Any

from fstore.storage import cold, offline_spark_delta
from fstore.storage.offline_table import (PARTITION, TABLE_PROPERTIES, by_day, current_version,  # noqa: F401
                                          delta_table, delta_uri, filesystem, keep_log, parquet_writer,
                                          release_failed_writers, schema_changes, storage_options, table_uri)
from fstore.definitions.model import FeatureSetVersion
from fstore.engine.spark import ts_literal
from fstore.engine.sources import delta_arrow_schema, to_utc_naive
from fstore.core.errors import ComputeError, InvalidDefinition, NotFound
from fstore.core.settings import Settings


log = logging.getLogger(__name__)


def vacuum(settings: Settings, name: str, *, retain_hours: int, keep_versions: list[int],
           dry_run: bool) -> list[str]:
    """Delta VACUUM of ``name``'s table: files removed over ``retain_hours`` ago (or named by no version and
    that old), except the files of ``keep_versions``; and the ``_staging`` folders of runs that died before
    their commit. Returns the paths deleted (or, with ``dry_run``, that would be). The caller holds the
    set's lock (``fstore.compute.vacuum``), so no run is writing and every staging folder is a dead run's."""
    table = delta_table(settings, name)
    if table is None:
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at {table_uri(settings, name)})")
    current = table.version()
    keep = sorted({v for v in keep_versions if 0 <= v <= current})
    # full: also files no version names (a run killed between moving its files and committing them),
    # once they are older than the retention; enforce_retention_duration off: the caller chose the hours.
    deleted = list(table.vacuum(retention_hours=retain_hours, dry_run=dry_run, enforce_retention_duration=False,
                                full=True, keep_versions=keep or None))
    if not dry_run:
        checkpoint_if_due(settings, name, current)  # VACUUM commits twice (START and END)
    # Delta's VACUUM skips folders starting with "_", where stage_delta_files and offline_arrow stage files.
    return deleted + clear_staging(settings, name, dry_run=dry_run)


def count_older(settings: Settings, name: str, cutoff: datetime, version: int | None = None) -> int:
    """Rows of ``name``'s table (at ``version``, default the current one) with event time before ``cutoff``
    (naive UTC); 0 before the first write."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    table = delta_table(settings, name, version)
    if table is None:
        return 0
    dataset = table.to_pyarrow_dataset()
    kind = dataset.schema.field("event_timestamp").type
    bound = cutoff.replace(tzinfo=timezone.utc) if getattr(kind, "tz", None) else cutoff
    return dataset.count_rows(filter=ds.field("event_timestamp") < pa.scalar(bound, type=kind))


def delete_older(settings: Settings, name: str, cutoff: datetime) -> int:
    """Delete, in one Delta commit (delta-rs ``DELETE``), the rows of ``name`` with event time strictly before
    ``cutoff`` (naive UTC; a row exactly at it stays). Files holding such rows are rewritten without them and
    removed from the new version (still on disk for older versions until a vacuum). Returns the rows deleted.
    delta-rs writes the commit whether Spark or delta-rs wrote the table, so both writers share this path.
    The caller holds the set's lock (``fstore.compute.retention``)."""
    table = delta_table(settings, name)
    if table is None or not count_older(settings, name, cutoff):
        return 0  # no commit for nothing: the version (and what training sets pinned) stays
    before = table.version()
    metrics = table.delete(f"event_timestamp < '{cutoff.strftime('%Y-%m-%d %H:%M:%S.%f')}'")
    checkpoint_if_due(settings, name, before)
    return int(metrics.get("num_deleted_rows", 0))


# -- staging: what a run wrote before its commit ------------------------------------------------------


def staging_root(settings: Settings, name: str) -> str:
    """The folder (on ``filesystem``) under which ``name``'s writes stage their files, one subfolder a write."""
    _, to_path = filesystem(settings)
    return f"{to_path(table_uri(settings, name))}/_staging"


def staging_dirs(settings: Settings, name: str) -> list[str]:
    """The staging subfolders of ``name`` that exist now (each one write's, finished or not)."""
    from pyarrow.fs import FileSelector, FileType

    fs, _ = filesystem(settings)
    return [info.path for info in fs.get_file_info(FileSelector(staging_root(settings, name), allow_not_found=True))
            if info.type == FileType.Directory]


def clear_staging(settings: Settings, name: str, dirs: list[str] | None = None, *, dry_run: bool = False) -> list[str]:
    """Delete staging subfolders of ``name`` (``dirs``, default all); returns the files they held.

    Only for folders no live write uses: the caller holds the set's lock (then every folder is a dead
    run's), or listed ``dirs`` before it saw the lock free."""
    from pyarrow.fs import FileSelector

    fs, _ = filesystem(settings)
    deleted = []
    for folder in staging_dirs(settings, name) if dirs is None else dirs:
        try:
            deleted += [f.path for f in fs.get_file_info(FileSelector(folder, recursive=True)) if f.is_file]
            if not dry_run:
                fs.delete_dir(folder)
        except FileNotFoundError:
            pass  # gone meanwhile (its run cleaned up after itself)
    return deleted


def discard_write(settings: Settings, folder: str | None, moved: list[str] = ()) -> None:
    """Remove what a failed or cancelled write left: its staging ``folder`` and the files it already ``moved``
    into the table's day folders (no commit names them). Best effort: the write's own error matters more."""
    fs, to_path = filesystem(settings)
    for path in moved:
        try:
            fs.delete_file(path)
        except Exception:  # noqa: BLE001 - left for vacuum; named in the log
            log.warning("could not remove uncommitted file %s", path, exc_info=True)
    try:
        if folder is not None:
            fs.delete_dir(to_path(folder))
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 - the next run of any set clears a dead write's staging
        log.warning("could not remove staging folder %s", folder, exc_info=True)


def _days(start: datetime, end: datetime) -> list[date]:
    """The UTC dates a range ``[start, end)`` touches."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _prepare(df, fsv: FeatureSetVersion, start: datetime, end: datetime):
    """The rows to write: exactly the expected columns, in the range, with ``event_date``."""
    from pyspark.sql import functions as F

    columns = list(fsv.join_keys) + ["event_timestamp", "created_timestamp"] + [f.name for f in fsv.features]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ComputeError(f"the rows to write for {fsv.name} lack column(s) {', '.join(missing)}")
    rows = df.select(*columns).where(f"event_timestamp >= {ts_literal(start)} AND event_timestamp < {ts_literal(end)}")
    return rows.withColumn(PARTITION, F.to_date("event_timestamp"))


def _outside(df, start: datetime, end: datetime):
    return df.where(f"event_timestamp < {ts_literal(start)} OR event_timestamp >= {ts_literal(end)}")


def check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = to_utc_naive(start), to_utc_naive(end)
    if end <= start:
        raise InvalidDefinition(f"the range end {end} is not after its start {start}", field="end")
    return start, end


def write_range(spark, settings: Settings, fsv: FeatureSetVersion, df, start: datetime, end: datetime) -> int | None:
    """Replace the rows with event time in ``[start, end)`` by ``df``'s; returns the new Delta version (None for Parquet)."""
    start, end = check_range(start, end)
    rows = _prepare(df, fsv, start, end)
    if settings.storage_format == "parquet":
        _write_parquet(spark, settings, fsv.name, rows, start, end)
        return None
    cold.refuse_cold_range(settings, fsv.name, start, end)
    if offline_spark_delta.in_use(spark, settings):
        version = offline_spark_delta.write_range(spark, settings, fsv.name, rows, start, end)
        table = delta_table(settings, fsv.name)
        # a table delta-spark made before its session's default said so: one more commit, once
        return table.version() if keep_log(table) else version
    staged = stage_delta_files(spark, settings, fsv.name, rows, start, end)
    return commit_delta_files(settings, fsv.name, staged)


# -- Delta through deltalake commits ----------------------------------------------------------------


class StagedWrite:
    """Files Spark wrote for one ``write_range``, not yet part of the table."""

    def __init__(self, *, adds: list, removes: list, schema, first: bool, start: datetime, end: datetime) -> None:
        self.adds, self.removes, self.schema, self.first = adds, removes, schema, first
        self.start, self.end = start, end


def _stats(metadata, columns: list[str]) -> str:
    """Delta file stats from a Parquet footer (numRecords, minValues, maxValues, nullCount)."""
    stats: dict[str, Any] = {"numRecords": metadata.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    schema = metadata.schema
    for i in range(metadata.num_columns):
        name = schema.column(i).path
        if name not in columns:
            continue
        mins, maxs, nulls, complete = [], [], 0, True
        for rg in range(metadata.num_row_groups):
            st = metadata.row_group(rg).column(i).statistics
            if st is None or not st.has_null_count:
                complete = False
                break
            nulls += st.null_count
            if st.has_min_max:
                mins.append(st.min)
                maxs.append(st.max)
        if not complete:
            continue
        stats["nullCount"][name] = nulls
        if mins and all(isinstance(v, (int, float, str, datetime, date)) and not isinstance(v, bool) for v in mins + maxs):
            stats["minValues"][name] = _json_value(min(mins))
            stats["maxValues"][name] = _json_value(max(maxs))
    return json.dumps(stats)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = to_utc_naive(value)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


def stage_delta_files(spark, settings: Settings, name: str, rows, start: datetime, end: datetime) -> StagedWrite:
    """Write the new contents of the touched days with Spark; nothing is visible until ``commit_delta_files``."""
    from pyspark.sql.pandas.types import to_arrow_schema

    uri = table_uri(settings, name)
    schema = to_arrow_schema(rows.schema)
    table, removes, kept = plan_replace(settings, name, schema, start, end)
    combined = rows
    if kept:
        old = _read_files(spark, table, kept)
        combined = rows.unionByName(_outside(old, start, end).select(*rows.columns))
    folder = staging_folder(uri)  # hidden from Spark's listing (leading underscore)
    try:
        parquet_writer(by_day(spark, combined)).partitionBy(PARTITION).parquet(folder)
    except BaseException:
        discard_write(settings, folder)  # a full disk must not stay full of a failed run's files
        release_failed_writers(spark)
        raise
    adds = add_staged_files(settings, uri, folder, [c for c in rows.columns if c != PARTITION])
    return StagedWrite(adds=adds, removes=removes, schema=schema, first=table is None, start=start, end=end)


def plan_replace(settings: Settings, name: str, schema, start: datetime, end: datetime) -> tuple[Any, list, list[str]]:
    """The table (None before its first write), a RemoveAction for each current file of the days ``[start, end)``
    touches, and which of those files hold rows outside the range to keep. A changed type is refused here,
    before anything is written."""
    from deltalake.transaction import RemoveAction

    table = delta_table(settings, name)
    if table is None:
        return None, [], []
    schema_changes(table, schema)
    days = {d.isoformat() for d in _days(start, end)}
    now_ms = int(time.time() * 1000)
    touched = [a for a in _add_actions(table) if a["partition_values"].get(PARTITION) in days]
    removes = [RemoveAction(path=a["path"], data_change=True, deletion_timestamp=now_ms, size=a["size"],
                            partition_values=a["partition_values"]) for a in touched]
    # A touched file whose events all lie inside [start, end) has nothing to keep: it is only removed.
    return table, removes, [a["path"] for a in touched if not _inside(a, start, end)]


def staging_folder(uri: str) -> str:
    return f"{uri}/_staging/{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def file_paths(settings: Settings, uri: str, paths: list[str]) -> list[str]:
    """Paths of a table's files (relative as the Delta log names them, or absolute) on ``filesystem``."""
    _, to_path = filesystem(settings)
    return [to_path(p[len("file://"):] if p.startswith("file://") else p) if "://" in p or p.startswith("/")
            else f"{to_path(uri)}/{p}" for p in paths]


def add_staged_files(settings: Settings, uri: str, folder: str, data_columns: list[str]) -> list:
    """Move the Parquet files staged under ``folder/event_date=…/`` into the table's day folders; their AddActions.

    On any failure (a full disk, a cancel) the staging folder and the files already moved are removed."""
    from pyarrow.fs import FileSelector

    fs, to_path = filesystem(settings)
    now_ms = int(time.time() * 1000)
    moved: list[str] = []
    try:
        written = [info for info in fs.get_file_info(FileSelector(to_path(folder), recursive=True,
                                                                  allow_not_found=True))
                   if info.is_file and info.base_name.endswith(".parquet")]
        for day in {_day_of(info.path) for info in written}:
            fs.create_dir(f"{to_path(uri)}/{PARTITION}={day}", recursive=True)
        adds = _move_staged(settings, uri, written, data_columns, moved, now_ms)
    except BaseException:
        discard_write(settings, folder, moved)  # nothing is committed yet: the moved files are ours alone
        raise
    fs.delete_dir(to_path(folder))
    return adds


def _move_staged(settings: Settings, uri: str, written: list, data_columns: list[str], moved: list[str],
                 now_ms: int) -> list:
    """Move staged files into their day folders (appending each target to ``moved``); their AddActions."""
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    fs, to_path = filesystem(settings)

    def add_action(info) -> AddAction:
        # The writers' file names carry a UUID of their write, so they never collide with earlier writes. Moved
        # beside the table's other files, they are still invisible to readers until the commit names them.
        day = _day_of(info.path)
        relative = f"{PARTITION}={day}/{info.base_name}"
        target = f"{to_path(uri)}/{relative}"
        fs.move(info.path, target)
        moved.append(target)
        with fs.open_input_file(target) as handle:
            metadata = pq.ParquetFile(handle).metadata
        return AddAction(path=relative, size=info.size, partition_values={PARTITION: day},
                         modification_time=int(info.mtime_ns // 1_000_000) if info.mtime_ns else now_ms,
                         data_change=True, stats=_stats(metadata, data_columns))

    # One move and one footer read per file: I/O waits (long ones on object storage), so run them side by side.
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(written)))) as pool:
        return list(pool.map(add_action, written))


def _day_of(path: str) -> str:
    """The ``event_date`` value in a file path (``…/event_date=2024-01-05/part-….parquet``)."""
    return next(p.split("=", 1)[1] for p in path.split("/") if p.startswith(f"{PARTITION}="))


def commit_delta_files(settings: Settings, name: str, staged: StagedWrite) -> int:
    """The one commit that makes a staged write the table's new version; returns that version.

    A commit that fails (a full disk) removes the write's files, which no version names."""
    from deltalake.transaction import CommitProperties

    uri = delta_uri(table_uri(settings, name))
    meta = CommitProperties(custom_metadata={"fstore.operation": "write_range", "fstore.start": staged.start.isoformat(),
                                             "fstore.end": staged.end.isoformat()})
    try:
        before = _commit(uri, settings, name, staged, meta)
    except BaseException:
        _discard_uncommitted(settings, name, staged)
        raise
    return checkpoint_if_due(settings, name, before)


def _discard_uncommitted(settings: Settings, name: str, staged: StagedWrite) -> None:
    """After a failed commit, delete the write's files unless the table names them (the commit landed)."""
    try:
        table = delta_table(settings, name)
        # "…/event_date=D/part-….parquet" → "event_date=D/part-….parquet", as the write's AddActions name them
        named = {"/".join(u.rsplit("/", 2)[-2:]) for u in table.file_uris()} if table is not None else set()
    except Exception:  # noqa: BLE001 - cannot tell whether the commit landed: keep the files (vacuum's job)
        log.warning("could not read %s after a failed commit; its files stay for vacuum", name, exc_info=True)
        return
    uri = table_uri(settings, name)
    ours = [a.path for a in staged.adds]
    if not named.intersection(ours):
        discard_write(settings, None, file_paths(settings, uri, ours))


def _commit(uri: str, settings: Settings, name: str, staged: StagedWrite, meta) -> int:
    """Commit the staged write; returns the table's version before it (0 for a new table)."""
    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    before = 0  # a new table starts at version 0: no checkpoint is due
    if staged.first:
        create_table_with_add_actions(uri, Schema.from_arrow(staged.schema), staged.adds, mode="error",
                                      partition_by=[PARTITION], name=name, storage_options=storage_options(settings),
                                      configuration=TABLE_PROPERTIES, commit_properties=meta)
    else:
        table = delta_table(settings, name)
        before = table.version()
        _evolve_schema(table, staged.schema)
        table.create_write_transaction(staged.adds + staged.removes, mode="append", schema=staged.schema,
                                       partition_by=[PARTITION], commit_properties=meta)
    return before


# Delta's own default (delta-spark writes a checkpoint every 10 commits). Opening a table reads its latest
# checkpoint and replays the commits after it; without checkpoints it replays every commit since the table
# began, and each materialization, retrieval and run opens it. The benchmark's table at version 83 with
# no checkpoint: 158 ms an open; with one: 8 ms (writing the checkpoint: 0.23 s).
CHECKPOINT_INTERVAL = 10


def checkpoint_if_due(settings: Settings, name: str, before: int) -> int:
    """Write a checkpoint when the commits made since version ``before`` reached a multiple of
    ``CHECKPOINT_INTERVAL``; returns the table's version."""
    table = delta_table(settings, name)
    keep_log(table)  # a table from before TABLE_PROPERTIES, or one delta-spark created
    version = table.version()
    if version // CHECKPOINT_INTERVAL > before // CHECKPOINT_INTERVAL:
        table.create_checkpoint()
    return version


def _evolve_schema(table, schema) -> None:
    """Add the columns a new feature set version brought (a metadata-only commit before the data commit)."""
    import pyarrow as pa
    from deltalake import Schema

    added = schema_changes(table, schema)
    if added:
        table.alter.add_columns(Schema.from_arrow(pa.schema(added)).fields)


def _add_actions(table) -> list[dict]:
    """The current files of a Delta table: path, size, partition values and event time bounds (None: no stats)."""
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=False))
    names = actions.column_names
    columns = ["path", "size_bytes", "partition"] + [c for c in ("min", "max") if c in names]
    out = []
    for row in actions.select(columns).to_pylist():
        values = {k: (v.isoformat() if isinstance(v, date) else v) for k, v in (row["partition"] or {}).items()}
        out.append({"path": row["path"], "size": row["size_bytes"], "partition_values": values,
                    "event_min": (row.get("min") or {}).get("event_timestamp"),
                    "event_max": (row.get("max") or {}).get("event_timestamp")})
    return out


def _inside(action: dict, start: datetime, end: datetime) -> bool:
    """True when a file's stats prove every event time in it lies in ``[start, end)``.

    Delta keeps timestamp stats to the millisecond, truncated: the true maximum may be up to
    999 µs above the recorded one, so the file counts as inside only if that still ends before ``end``.
    """
    low, high = action.get("event_min"), action.get("event_max")
    if not isinstance(low, datetime) or not isinstance(high, datetime):
        return False
    low, high = to_utc_naive(low), to_utc_naive(high)
    return low >= start and high + timedelta(milliseconds=1) <= end


def _read_files(spark, table, paths: list[str]):
    """Rows of some of a Delta table's files, with ``event_date`` derived from the event time."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = delta_arrow_schema(table)
    data_schema = from_arrow_schema(schema.remove(schema.get_field_index(PARTITION)))
    root = table.table_uri.rstrip("/")
    bare_root = root[len("file://"):] if root.startswith("file://") else root
    uris = [p if "://" in p or p.startswith("/") else f"{root}/{p}" for p in paths]
    if not uris:
        return spark.createDataFrame([], from_arrow_schema(schema))
    relative = [u[len(root):] if u.startswith(root) else u[len(bare_root):] if u.startswith(bare_root) else None for u in uris]
    if all(r is not None and r.lstrip("/").startswith(f"{PARTITION}=") and r.lstrip("/").count("/") == 1 for r in relative):
        # Hive layout: Spark sees event_date as a partition column and prunes files on it.
        df = spark.read.schema(data_schema).option("basePath", root).parquet(*uris)
        if PARTITION in df.columns:
            return df.withColumn(PARTITION, F.col(PARTITION).cast("date"))
    else:
        df = spark.read.schema(data_schema).parquet(*uris)
    return df.withColumn(PARTITION, F.to_date("event_timestamp"))


def read_table(spark, settings: Settings, name: str, *, as_of: int | str | datetime | None = None):
    """The offline table of ``name`` (as of a version, or the version current at a time) as a Spark DataFrame."""
    return read_table_version(spark, settings, name, as_of=as_of)[0]


def as_of_version(as_of: int | str | datetime | None) -> int | datetime | None:
    """An ``as_of`` as ``delta_table`` takes it: a version number, or an aware UTC time (a digit string is a version)."""
    if isinstance(as_of, str) and not (as_of.strip().isascii() and as_of.strip().isdigit()):
        return to_utc_naive(as_of).replace(tzinfo=timezone.utc)
    if isinstance(as_of, str):
        return int(as_of)
    if isinstance(as_of, datetime):
        return to_utc_naive(as_of).replace(tzinfo=timezone.utc)
    return as_of


def read_table_version(spark, settings: Settings, name: str, *,
                       as_of: int | str | datetime | None = None) -> tuple[Any, int | None]:
    """``read_table`` and the Delta version it read (None for Parquet), from one open of the Delta log."""
    if settings.storage_format == "parquet":
        if as_of is not None:
            raise InvalidDefinition("as_of needs STORAGE_FORMAT=delta; Parquet tables keep no versions", field="as_of")
        return _read_parquet(spark, settings, name), None
    table = delta_table(settings, name, as_of_version(as_of))
    if table is None:
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at {table_uri(settings, name)})")
    # A Delta version never changes, so the DataFrame over its files (Spark's file listing and footer
    # reads, ~0.4 s for 60 files) is built once per session and version and reused by later reads.
    # The table's id (a UUID made at creation) tells a re-created table at the same path apart.
    # Rows moved to the cold tier are read with it: warm at this version plus the cold version it names.
    cold_table = cold.complement(settings, name, table)
    by_delta_spark = offline_spark_delta.in_use(spark, settings)
    key = (id(spark), table.table_uri, table.metadata().id, table.version(), by_delta_spark,
           None if cold_table is None else cold_table.version())
    cached = _VERSION_FRAMES.get(key)
    if cached is None or cached.sparkSession is not spark:
        cached = (offline_spark_delta.read_version(spark, settings, name, table.version()) if by_delta_spark
                  else _read_files(spark, table, table.file_uris()))
        if cold_table is not None:
            cached = cached.unionByName(_read_files(spark, cold_table, [_spark_uri(u) for u in cold_table.file_uris()]),
                                        allowMissingColumns=True)
        if len(_VERSION_FRAMES) >= _VERSION_FRAMES_MAX:
            _VERSION_FRAMES.pop(next(iter(_VERSION_FRAMES)))
        _VERSION_FRAMES[key] = cached
    return cached, table.version()


def _spark_uri(uri: str) -> str:
    """A file URI as delta-rs lists it, as Spark reads it (S3 through ``s3a://``)."""
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


_VERSION_FRAMES: dict[tuple, Any] = {}
_VERSION_FRAMES_MAX = 64


# -- plain Parquet ----------------------------------------------------------------------------------


def _read_parquet(spark, settings: Settings, name: str):
    from pyspark.sql import functions as F

    uri = table_uri(settings, name)
    if settings.storage_backend == "local" and not os.path.isdir(uri):
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at {uri})")
    return spark.read.parquet(uri).withColumn(PARTITION, F.to_date("event_timestamp"))


def _write_parquet(spark, settings: Settings, name: str, rows, start: datetime, end: datetime) -> None:
    """Rewrite the touched days: stage them whole, then swap each day's folder by renames."""
    uri, days, existing = parquet_days(settings, name, start, end)
    combined = rows
    if existing:
        from pyspark.sql import functions as F

        data_schema = rows.drop(PARTITION).schema
        old = spark.read.schema(data_schema).parquet(*existing).withColumn(PARTITION, F.to_date("event_timestamp"))
        combined = rows.unionByName(_outside(old, start, end).select(*rows.columns))
    staging = f"{uri}/_staging/{uuid.uuid4().hex}"
    try:
        parquet_writer(by_day(spark, combined)).partitionBy(PARTITION).parquet(staging)
    except BaseException:
        discard_write(settings, staging)
        release_failed_writers(spark)
        raise
    swap_days(uri, staging, days)


def parquet_days(settings: Settings, name: str, start: datetime, end: datetime) -> tuple[str, list[str], list[str]]:
    """The table's folder, the days ``[start, end)`` touches and the folders of those that exist."""
    if settings.storage_backend != "local":
        raise InvalidDefinition("STORAGE_FORMAT=parquet replaces days by folder renames and needs STORAGE_BACKEND=local; "
                                "use STORAGE_FORMAT=delta on S3", field="STORAGE_FORMAT")
    uri = table_uri(settings, name)
    days = [d.isoformat() for d in _days(start, end)]
    return uri, days, [f"{uri}/{PARTITION}={d}" for d in days if os.path.isdir(f"{uri}/{PARTITION}={d}")]


def swap_days(uri: str, staging: str, days: list[str]) -> None:
    """Put each staged day folder in place of the table's (a day with no rows left loses its folder)."""
    for day in days:
        target, fresh = f"{uri}/{PARTITION}={day}", f"{staging}/{PARTITION}={day}"
        trash = f"{staging}/old-{day}"
        if os.path.isdir(target):
            os.rename(target, trash)
        if os.path.isdir(fresh):
            os.rename(fresh, target)
    shutil.rmtree(staging, ignore_errors=True)
