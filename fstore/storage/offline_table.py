"""One offline table's place and shape: where it lives, how to open a version, its day partitions.

Shared by every writer and reader of the offline store (``offline`` with delta-rs,
``offline_arrow``, ``offline_spark_delta``): the table's URI under
``<data_root>/offline/<feature_set>``, storage options and a pyarrow filesystem for
local disk or S3, a Delta version opened by number or time, the ``event_date``
partition column and how Spark lays rows out by day.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from fstore.core.errors import ComputeError, NotFound
from fstore.core.settings import Settings
from fstore.engine import s3
from fstore.engine.sources import delta_arrow_schema

PARTITION = "event_date"

# Every offline table keeps its whole commit log. Training sets pin table versions (``recreate`` and ``as_of``
# read them a year later); Delta's writers (delta-spark at its checkpoints, delta-rs in its post-commit hook)
# otherwise delete commits older than ``delta.logRetentionDuration`` (30 days), and a version whose commits are
# gone cannot be read again. The log is small (a JSON file per run); ``fstore vacuum`` and retention decide
# what data files go, keeping the pinned versions'.
TABLE_PROPERTIES = {"delta.enableExpiredLogCleanup": "false"}


def table_uri(settings: Settings, name: str) -> str:
    """Where the offline table of feature set ``name`` lives (a path or an ``s3a://`` URI)."""
    return f"{settings.data_root}/offline/{name}"


def delta_uri(uri: str) -> str:
    return s3.delta_uri(uri)


def storage_options(settings: Settings) -> dict[str, str] | None:
    """``deltalake`` storage options for S3 (endpoint, region, keys: ``fstore.engine.s3``); None for local files."""
    if settings.storage_backend != "s3":
        return None
    return s3.delta_options(settings)


def filesystem(settings: Settings):
    """A pyarrow filesystem and a function turning a table URI into its path on it."""
    from pyarrow import fs

    if settings.storage_backend == "s3":
        return s3.filesystem(settings), s3.path_on
    return fs.LocalFileSystem(), lambda uri: uri


def delta_table(settings: Settings, name: str, version: int | str | datetime | None = None):
    """The ``deltalake.DeltaTable`` of a feature set (at ``version``: a number or a time), None before its first write."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = delta_uri(table_uri(settings, name))
    try:
        table = DeltaTable(uri, storage_options=storage_options(settings))
    except TableNotFoundError:
        return None
    except OSError as exc:  # S3 refused or unreachable: name the bucket and endpoint, never the secret
        if settings.storage_backend == "s3":
            raise s3.access_error(settings, exc, doing=f"opening offline table {name}", uri=uri) from None
        raise
    if version is not None:
        latest = table.version()
        if isinstance(version, int) and not 0 <= version <= latest:
            raise NotFound(f"offline table {name} has no version {version}; its versions are 0 to {latest}")
        if isinstance(version, datetime):  # Delta would answer version 0 for a time before the table existed
            first = min((c["timestamp"] for c in table.history() if c.get("timestamp") is not None), default=None)
            created = None if first is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=first)
            if created is not None and version < created:
                raise NotFound(f"offline table {name} has no data as of {version.isoformat()}: the as_of is before its "
                               f"first version (written {created.isoformat(timespec='milliseconds')})", field="as_of")
        try:
            table.load_as_version(version)
        except Exception as exc:  # noqa: BLE001 - deltalake raises several types for a version it cannot find
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NotFound(f"offline table {name} has no version as of {version!r} (its versions are 0 to {latest}): "
                           f"{first}") from None
        if settings.storage_backend == "local" and not all(os.path.exists(_local_file(u)) for u in table.file_uris()):
            raise NotFound(f"version {table.version()} of offline table {name} is no longer readable: vacuum removed "
                           "its files (a training set's versions are kept; others only for the retention period)")
    return table


def _local_file(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def current_version(settings: Settings, name: str) -> int | None:
    """The latest Delta version of ``name``'s offline table; None when it does not exist (or in Parquet mode)."""
    if settings.storage_format != "delta":
        return None
    table = delta_table(settings, name)
    return None if table is None else table.version()


def release_failed_writers(spark) -> None:
    """Let the JVM close the files of a Spark write that failed.

    A Parquet task whose write failed (a full disk) drops its output stream without closing it: the file
    is deleted with its staging folder but its space stays taken while the JVM holds the descriptor
    (measured: a failed 5-day write on a 64 MB tmpfs kept 0.6 MB, a day's file, until the driver
    collected garbage). A full GC runs the streams' cleaners, which close them. Local sessions only:
    on a cluster the executors' JVMs are not reachable from here.
    """
    try:
        spark._jvm.java.lang.System.gc()
    except Exception:  # noqa: BLE001 - Spark Connect has no JVM here; the space comes back on the next GC
        pass


def schema_changes(table, schema) -> list:
    """New columns of ``schema`` (a feature added in a later version); a changed type is refused."""
    current = delta_arrow_schema(table)
    added = []
    for field in schema:
        if field.name not in current.names:
            added.append(field)
        elif current.field(field.name).type != field.type:
            raise ComputeError(f"column {field.name} of the offline table is {current.field(field.name).type} but the "
                               f"feature set now makes it {field.type}; give the changed feature a new name")
    return added


def by_day(spark, rows):
    """``rows`` laid out for the write partitioned by day: each task writes one file per day it holds.

    On a local session the rows stay where they are, merged into at most one task per core (no
    shuffle): at most that many files per day. The benchmark's 1M rows were written 0.3-1.4 s
    faster in each of 7 interleaved pairs on a warm session (1.9-2.9 s against 2.4-3.8 s shuffled
    by day; 2.9 against 5.6 s in the first pair). Elsewhere (a cluster) the rows are shuffled by day
    first, so that a day is one file however many tasks read the source. Over Spark Connect the
    server's master decides the same way.
    """
    cores = _local_cores(spark)
    if cores:
        return rows.coalesce(cores)
    return rows.repartition(PARTITION)


def _local_cores(spark) -> int | None:
    """The cores of a local master (its default parallelism), None on a cluster or when it cannot be told."""
    try:
        context = spark.sparkContext
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext: ask the server's settings
        context = None
    if context is not None:
        return context.defaultParallelism if context.master.startswith("local") else None
    try:
        master = spark.conf.get("spark.master", "") or ""
        parallelism = spark.conf.get("spark.default.parallelism", "") or ""
    except Exception:  # noqa: BLE001 - a server that will not say: shuffle, as on a cluster
        return None
    if not master.startswith("local"):
        return None
    if parallelism.isdigit():
        return int(parallelism)
    from fstore.engine.spark_env import local_cores

    return local_cores(master)


def parquet_writer(rows):
    """``rows.write`` without Parquet dictionaries for float columns and the event time.

    A dictionary only pays for repeated values. On high-cardinality doubles and event times,
    parquet-mr builds one per column per file, overflows it and falls back to plain encoding:
    measured on the benchmark's 1M rows × 10 float features, a partitioned write took 7.2 s with
    dictionaries and 4.4 s without them on those columns. Keys, strings, booleans and the
    created time (often one value per run) keep theirs.
    """
    writer = rows.write
    for name, spark_type in rows.dtypes:
        if spark_type in ("double", "float") or name == "event_timestamp":
            writer = writer.option(f"parquet.enable.dictionary#{name}", "false")
    return writer


def commit_added_bytes(settings: Settings, name: str, version: int) -> int | None:
    """The bytes of the data files Delta commit ``version`` of ``name``'s table added (the sum of its ``add``
    actions' ``size``, what delta-spark's ``numOutputBytes`` counts); None when the commit cannot be read."""
    import json

    fs, path_of = filesystem(settings)
    log_file = path_of(f"{table_uri(settings, name)}/_delta_log/{version:020d}.json")
    try:
        with fs.open_input_stream(log_file) as stream:
            text = stream.read().decode()
    except (OSError, FileNotFoundError):
        return None
    total = 0
    for line in text.splitlines():
        if line.strip():
            action = json.loads(line)
            if "add" in action:
                total += int(action["add"].get("size") or 0)
    return total


def table_bytes(settings: Settings, name: str) -> int | None:
    """The offline size of a feature set: the bytes of the files its current Delta version reads (older versions'
    files that vacuum has not removed yet are not counted); None before the first write or in Parquet mode."""
    if settings.storage_format != "delta":
        return None
    import pyarrow as pa

    table = delta_table(settings, name)
    if table is None:
        return None
    sizes = pa.table(table.get_add_actions(flatten=True)).column("size_bytes").to_pylist()
    return int(sum(sizes))


def keep_log(table) -> bool:
    """Give a table written before ``TABLE_PROPERTIES`` existed the same properties (one metadata commit, once);
    True when it committed."""
    if table is None or all(table.metadata().configuration.get(k) == v for k, v in TABLE_PROPERTIES.items()):
        return False
    table.alter.set_table_properties(TABLE_PROPERTIES)
    return True
