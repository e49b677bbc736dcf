"""The offline store without Spark: the same tables read and written in this process (the DuckDB engine).

``fstore.storage.offline`` owns the store: layout, Delta versions, the staging folder,
the one commit per write and its stats. This module is its Arrow side.

**Write** (``write_range_arrow``): rows computed in this process as an Arrow
table replace exactly the rows with event time in ``[start, end)``, as
``offline.write_range`` does for a Spark DataFrame. pyarrow reads the rows of
the touched days to keep and writes one file per day (snappy, the dictionary
choices of ``offline.parquet_writer``, the column types Spark's writer gives the
same feature set), into the same staging folder and the same single commit.
Versions written by either engine mix in one table.

**Read** (``read_files``): the data files of one Delta version (or the version
current at an ``as_of`` time), resolved as ``offline.read_table_version``
resolves it. Files are pruned with what the Delta log already knows (the
``event_date`` partition and the per-file min/max of ``event_timestamp``), so days
no label row can see are never opened. Local tables come back as paths (DuckDB's
own Parquet reader, which can number the rows of each file: the order the Spark
engine reads them in, used to break exact ties); a table elsewhere
(``STORAGE_BACKEND=s3``) as a pyarrow dataset over ``deltalake``'s file system
(tests/integration/test_s3.py); DuckDB scans it in process, without file numbers,
so exact ties there fall in the dataset's order.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from fstore.storage import offline
from fstore.definitions.model import FeatureSetVersion
from fstore.engine.sources import to_utc_naive
from fstore.core.errors import ComputeError, InvalidDefinition, NotFound
from fstore.core.settings import Settings

if TYPE_CHECKING:
    import pyarrow


# -- write ------------------------------------------------------------------------------------------


def write_range_arrow(settings: Settings, fsv: FeatureSetVersion, table: pyarrow.Table, start: datetime,
                      end: datetime) -> int | None:
    """Like write_range, for rows already computed in this process as an Arrow table (the DuckDB engine); no Spark."""
    start, end = offline.check_range(start, end)
    rows = _prepare_arrow(table, fsv, start, end)
    if settings.storage_format == "parquet":
        _write_parquet_arrow(settings, fsv.name, rows, start, end)
        return None
    from fstore.storage import cold

    cold.refuse_cold_range(settings, fsv.name, start, end)
    staged = stage_delta_arrow(settings, fsv.name, rows, start, end)
    return offline.commit_delta_files(settings, fsv.name, staged)


def _utc_micros():
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC")


def _arrow_type(spark_type: str):
    """The Arrow type Spark's ``to_arrow_schema`` gives a feature of this Spark SQL type (``compiler.spark_type``)."""
    import pyarrow as pa

    if spark_type.startswith("ARRAY<"):
        return pa.list_(pa.field("element", _arrow_type(spark_type[len("ARRAY<"):-1])))
    return {"BIGINT": pa.int64(), "DOUBLE": pa.float64(), "STRING": pa.string(), "BOOLEAN": pa.bool_(),
            "TIMESTAMP": _utc_micros()}[spark_type]


def _spark_like(arrow_type):
    """A join key's Arrow type as Spark writes it: no large, view or dictionary types; UTC microseconds."""
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(arrow_type):
        return _spark_like(arrow_type.value_type)
    if t.is_large_string(arrow_type) or t.is_string_view(arrow_type):
        return pa.string()
    if t.is_large_binary(arrow_type) or t.is_binary_view(arrow_type):
        return pa.binary()
    if t.is_timestamp(arrow_type):
        return _utc_micros()
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_list_view(arrow_type):
        return pa.list_(pa.field("element", _spark_like(arrow_type.value_type)))
    return arrow_type


def _utc_scalar(value: datetime):
    import pyarrow as pa

    return pa.scalar(value.replace(tzinfo=timezone.utc), type=_utc_micros())


def _with_event_date(rows):
    import pyarrow as pa
    import pyarrow.compute as pc

    return rows.append_column(pa.field(offline.PARTITION, pa.date32()), pc.cast(rows.column("event_timestamp"), pa.date32()))


def _prepare_arrow(table: pyarrow.Table, fsv: FeatureSetVersion, start: datetime, end: datetime) -> pyarrow.Table:
    """``_prepare`` for an Arrow table: the expected columns in the types Spark's path writes, in the range.

    Every column is nullable, as Spark makes a cast feature (a column added later is null in older rows anyway).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from fstore.compiler import spark_type

    types = {name: _utc_micros() for name in ("event_timestamp", "created_timestamp")}
    types.update({f.name: _arrow_type(spark_type(f.data_type)) for f in fsv.features})
    columns = list(fsv.join_keys) + ["event_timestamp", "created_timestamp"] + [f.name for f in fsv.features]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ComputeError(f"the rows to write for {fsv.name} lack column(s) {', '.join(missing)}")
    arrays, fields = [], []
    for name in columns:
        column = table.column(name)
        target = types.get(name) or _spark_like(column.type)
        if column.type != target:
            try:  # Spark keeps microseconds: finer timestamps are truncated, every other cast must be exact
                column = column.cast(target, safe=not pa.types.is_timestamp(target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ComputeError(f"column {name} of the rows to write for {fsv.name} is {column.type}, "
                                   f"which does not convert to {target}: {exc}") from None
        arrays.append(column)
        fields.append(pa.field(name, target))
    rows = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    event, low, high = rows.column("event_timestamp"), _utc_scalar(start), _utc_scalar(end)
    bounds = pc.min_max(event)
    # Filtering copies every column: skip it when the rows already lie in the range (the usual case).
    if event.null_count or (rows.num_rows and not low.as_py() <= bounds["min"].as_py() <= bounds["max"].as_py()
                            < high.as_py()):
        rows = rows.filter((pc.field("event_timestamp") >= low) & (pc.field("event_timestamp") < high))
    return _with_event_date(rows)


def _read_outside_arrow(settings: Settings, paths: list[str], schema, start: datetime, end: datetime):
    """The rows of some Parquet files with event time outside ``[start, end)``, in ``schema`` (missing columns
    are null), with ``event_date``."""
    import pyarrow.dataset as ds

    fs, _ = offline.filesystem(settings)
    data_schema = schema.remove(schema.get_field_index(offline.PARTITION))
    event = ds.field("event_timestamp")
    old = ds.dataset(paths, schema=data_schema, format="parquet", filesystem=fs)
    return _with_event_date(old.to_table(filter=(event < _utc_scalar(start)) | (event >= _utc_scalar(end))))


def _write_days_arrow(settings: Settings, rows, folder: str) -> None:
    """Write ``rows`` under ``folder/event_date=YYYY-MM-DD/`` as Spark's partitioned write does: one file a day
    (a big day splits every ``_ROWS_PER_FILE``), snappy, dictionaries as ``parquet_writer`` chooses.
    pyarrow groups the rows by day and writes the days on its own threads."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    fs, to_path = offline.filesystem(settings)
    # Spark's "parquet.enable.dictionary#<column>" names a top-level column: an array's leaf keeps its dictionary.
    dictionary = [f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in rows.schema
                  if f.name != offline.PARTITION and not (pa.types.is_floating(f.type) or f.name == "event_timestamp")]
    options = ds.ParquetFileFormat().make_write_options(compression="snappy", use_dictionary=dictionary)
    fs.create_dir(to_path(folder), recursive=True)
    ds.write_dataset(rows, to_path(folder), format="parquet", filesystem=fs, file_options=options,
                     partitioning=ds.partitioning(pa.schema([rows.schema.field(offline.PARTITION)]), flavor="hive"),
                     basename_template=f"part-{{i}}-{uuid.uuid4()}.c000.snappy.parquet",
                     max_rows_per_file=_ROWS_PER_FILE, min_rows_per_group=_ROWS_PER_GROUP,
                     max_rows_per_group=_ROWS_PER_GROUP, existing_data_behavior="overwrite_or_ignore",
                     max_partitions=1 << 20)  # one per day: years of days are fine


_ROWS_PER_GROUP = 1 << 20
_ROWS_PER_FILE = 4 << 20


def stage_delta_arrow(settings: Settings, name: str, rows, start: datetime, end: datetime) -> offline.StagedWrite:
    """``stage_delta_files`` for Arrow rows (``_prepare_arrow``'s): pyarrow reads the rows to keep and writes."""
    import pyarrow as pa

    uri = offline.table_uri(settings, name)
    table, removes, kept = offline.plan_replace(settings, name, rows.schema, start, end)
    if kept:
        rows = pa.concat_tables([rows, _read_outside_arrow(settings, offline.file_paths(settings, uri, kept), rows.schema,
                                                           start, end)])
    folder = offline.staging_folder(uri)
    try:
        _write_days_arrow(settings, rows, folder)
    except BaseException:
        offline.discard_write(settings, folder)  # a full disk must not stay full of a failed run's files
        raise
    adds = offline.add_staged_files(settings, uri, folder, [c for c in rows.column_names if c != offline.PARTITION])
    return offline.StagedWrite(adds=adds, removes=removes, schema=rows.schema, first=table is None, start=start, end=end)


def _write_parquet_arrow(settings: Settings, name: str, rows, start: datetime, end: datetime) -> None:
    """``_write_parquet`` for Arrow rows: pyarrow reads the kept rows of the touched days and writes the new ones."""
    import pyarrow as pa

    uri, days, existing = offline.parquet_days(settings, name, start, end)
    files = [os.path.join(folder, f) for folder in existing for f in sorted(os.listdir(folder))
             if f.endswith(".parquet") and not f.startswith(("_", "."))]  # as Spark lists them
    if files:
        rows = pa.concat_tables([rows, _read_outside_arrow(settings, files, rows.schema, start, end)])
    staging = f"{uri}/_staging/{uuid.uuid4().hex}"
    try:
        _write_days_arrow(settings, rows, staging)
    except BaseException:
        offline.discard_write(settings, staging)
        raise
    offline.swap_days(uri, staging, days)


# -- read -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineFiles:
    """What to scan for one read of a feature set's offline table."""

    version: int | None              # the Delta version read; None for STORAGE_FORMAT=parquet
    paths: list[str] = field(default_factory=list)  # local data files, in the table's order, pruned
    dataset: Any = None              # a pyarrow dataset instead of ``paths`` (a table not on local disk)
    schema: Any = None               # the table's pyarrow schema (for a version with no files left)


def open_version(settings: Settings, name: str, as_of: int | str | datetime | None = None):
    """The ``deltalake.DeltaTable`` of ``name`` at ``as_of`` (a version, or the version current at a time)."""
    table = offline.delta_table(settings, name, offline.as_of_version(as_of))
    if table is None:
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at "
                       f"{offline.table_uri(settings, name)})")
    return table


def read_files(settings: Settings, name: str, *, as_of: int | str | datetime | None = None,
               lo: datetime | None = None, hi: datetime | None = None) -> OfflineFiles:
    """The files of ``name``'s offline table (at ``as_of``) that can hold rows with event time in ``[lo, hi]``.

    ``lo``/``hi`` are naive UTC and only prune whole files; the caller still filters the rows.
    """
    if settings.storage_format == "parquet":
        if as_of is not None:
            raise InvalidDefinition("as_of needs STORAGE_FORMAT=delta; Parquet tables keep no versions", field="as_of")
        return OfflineFiles(version=None, paths=_parquet_files(settings, name, lo, hi))
    table = open_version(settings, name, as_of)
    from fstore.engine.sources import delta_arrow_schema
    from fstore.storage import cold

    schema = delta_arrow_schema(table)
    # Rows moved to the cold tier are read with it: warm at this version plus the cold version it names,
    # the cold files after the warm ones (a read's order of rows stays the order of each table's log).
    tables = [table, *([c] if (c := cold.complement(settings, name, table)) is not None else [])]
    if not all(_local(t) for t in tables):
        import pyarrow as pa
        import pyarrow.dataset as ds

        if len(tables) == 1:
            return OfflineFiles(version=table.version(), dataset=table.to_pyarrow_dataset(), schema=schema)
        parts = [t.to_pyarrow_dataset() for t in tables]
        unified = pa.unify_schemas([p.schema for p in parts], promote_options="permissive")
        return OfflineFiles(version=table.version(), schema=schema,
                            dataset=ds.dataset([ds.dataset(p.files, schema=unified, format="parquet",
                                                           filesystem=p.filesystem, partitioning="hive")
                                                for p in parts]))
    paths = [p for t in tables for p in _pruned_paths(t, lo, hi)]
    return OfflineFiles(version=table.version(), paths=paths, schema=schema)


def _local(table) -> bool:
    root = table.table_uri.rstrip("/")
    return root.startswith("file://") or "://" not in root


def _pruned_paths(table, lo: datetime | None, hi: datetime | None) -> list[str]:
    """A local Delta table's data files (in its log's order) that can hold event times in ``[lo, hi]``."""
    import pyarrow as pa

    root = table.table_uri.rstrip("/")
    actions = pa.table(table.get_add_actions(flatten=True))
    base = root[len("file://"):] if root.startswith("file://") else root
    columns = {c: actions.column(c).to_pylist() for c in actions.column_names
               if c in ("path", f"partition.{offline.PARTITION}", "min.event_timestamp", "max.event_timestamp")}
    paths = []
    for i, path in enumerate(columns["path"]):
        day = columns.get(f"partition.{offline.PARTITION}", [None] * len(columns["path"]))[i]
        first = _naive(columns.get("min.event_timestamp", [None] * len(columns["path"]))[i])
        last = _naive(columns.get("max.event_timestamp", [None] * len(columns["path"]))[i])
        if hi is not None and ((day is not None and _as_date(day) > hi.date()) or (first is not None and first > hi)):
            continue
        if lo is not None and ((day is not None and _as_date(day) < lo.date()) or (last is not None and last < lo)):
            continue
        paths.append(path if path.startswith("/") else f"{base}/{path}")
    return paths


def _naive(value: Any) -> datetime | None:
    return to_utc_naive(value) if isinstance(value, datetime) else None


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _parquet_files(settings: Settings, name: str, lo: datetime | None, hi: datetime | None) -> list[str]:
    """A plain Parquet table's files as Spark lists them (hidden ``_``/``.`` entries skipped), days pruned."""
    uri = offline.table_uri(settings, name)
    if settings.storage_backend != "local" or not os.path.isdir(uri):
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at {uri})")
    paths = []
    for folder in sorted(os.listdir(uri)):
        if folder.startswith(("_", ".")):
            continue
        if folder.startswith(f"{offline.PARTITION}="):
            day = _as_date(folder.split("=", 1)[1])
            if (hi is not None and day > hi.date()) or (lo is not None and day < lo.date()):
                continue
        full = os.path.join(uri, folder)
        names = sorted(os.listdir(full)) if os.path.isdir(full) else []
        paths += [os.path.join(full, n) for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
    return paths


# -- idempotent append (pushed rows) ----------------------------------------------------------------

EVENT_ID = "push_id"  # the offline column naming each pushed row's event (null in materialized rows)


def append_new(settings: Settings, fsv: FeatureSetVersion, table: pyarrow.Table, ids: list[str]) -> dict[str, Any]:
    """Append the rows of ``table`` (computed features, as a run writes them) whose event id in ``ids`` the
    offline table does not hold yet for their days: one Delta append, so the same rows pushed twice are stored
    once. The caller holds the set's lock (``fstore.compute.materialize.take_set_lock``), so no other writer
    adds ids between the look-up and the commit. Returns ``{"appended", "skipped", "offline_version"}``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties

    if settings.storage_format == "parquet":
        raise InvalidDefinition(f"pushing offline needs a Delta offline store; {fsv.name} is stored as plain Parquet "
                                "(STORAGE_FORMAT=parquet), which has no atomic append", field="to")
    if table.num_rows == 0:
        return {"appended": 0, "skipped": 0, "offline_version": offline.current_version(settings, fsv.name)}
    event = pc.min_max(table.column("event_timestamp"))
    low = to_utc_naive(event["min"].as_py())
    high = to_utc_naive(event["max"].as_py())
    rows = _prepare_arrow(table, fsv, low, high + timedelta(microseconds=1))
    rows = rows.append_column(pa.field(EVENT_ID, pa.string()), pa.array(ids, pa.string()))
    days = pc.unique(rows.column(offline.PARTITION))
    seen: set[str] = set()
    current = offline.delta_table(settings, fsv.name)
    if current is not None and EVENT_ID in offline_table_columns(current):
        stored = current.to_pyarrow_dataset().to_table(
            columns=[EVENT_ID], filter=ds.field(offline.PARTITION).isin(days) & ds.field(EVENT_ID).is_valid())
        seen = set(stored.column(EVENT_ID).to_pylist())
    keep = []
    for i, event_id in enumerate(ids):
        if event_id not in seen:
            seen.add(event_id)  # a row given twice in one push is stored once too
            keep.append(i)
    if not keep:
        return {"appended": 0, "skipped": len(ids), "offline_version": current.version() if current else None}
    new = rows.take(pa.array(keep, pa.int64()))
    uri = offline.delta_uri(offline.table_uri(settings, fsv.name))
    write_deltalake(uri, new, mode="append", partition_by=[offline.PARTITION], schema_mode="merge",
                    configuration=offline.TABLE_PROPERTIES,
                    storage_options=offline.storage_options(settings),
                    commit_properties=CommitProperties(custom_metadata={"fstore.operation": "push"}))
    return {"appended": len(keep), "skipped": len(ids) - len(keep),
            "offline_version": offline.current_version(settings, fsv.name)}


def offline_table_columns(table) -> list[str]:
    """The column names of a Delta table's current schema."""
    return [f.name for f in table.schema().fields]


def append_batch(settings: Settings, fsv: FeatureSetVersion, table: pyarrow.Table, ids: list[str], *, app_id: str,
                 version: int) -> dict[str, Any]:
    """Append one stream micro-batch exactly once: Delta's idempotent write (the protocol's ``txn`` action, what
    delta-spark's ``txnAppId``/``txnVersion`` options write). The commit records ``(app_id, version)``; a batch
    whose version the table already holds for ``app_id`` (a replay after a crash between the commit and the
    stream's checkpoint) is skipped whole. One writer per ``app_id`` (the stream holds its set's stream lock).
    ``ids`` (each event's ``topic:partition:offset``) go to the ``push_id`` column. Rows without an event time
    are not written (counted in ``dropped``). Returns ``{"appended", "dropped", "replayed", "offline_version"}``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import write_deltalake
    from deltalake.transaction import CommitProperties, Transaction

    if settings.storage_format == "parquet":
        raise InvalidDefinition(f"streaming offline needs a Delta offline store; {fsv.name} is stored as plain Parquet "
                                "(STORAGE_FORMAT=parquet), which has no idempotent append", field="offline_enabled")
    current = offline.delta_table(settings, fsv.name)
    done = current.transaction_version(app_id) if current is not None else None
    if done is not None and done >= version:
        return {"appended": 0, "dropped": 0, "replayed": True, "offline_version": current.version()}
    event = pc.min_max(table.column("event_timestamp"))
    if table.num_rows == 0 or event["min"].as_py() is None:
        return {"appended": 0, "dropped": table.num_rows, "replayed": False,
                "offline_version": current.version() if current is not None else None}
    low, high = to_utc_naive(event["min"].as_py()), to_utc_naive(event["max"].as_py())
    valid = pc.is_valid(table.column("event_timestamp"))
    kept = table.filter(valid)
    rows = _prepare_arrow(kept, fsv, low, high + timedelta(microseconds=1))
    if rows.num_rows != kept.num_rows:  # every row lies in [min, max]: a difference is a bug, never silent loss
        raise ComputeError(f"stream batch {version} of {fsv.name}: {kept.num_rows - rows.num_rows} row(s) lost preparing")
    rows = rows.append_column(pa.field(EVENT_ID, pa.string()), pa.array(ids, pa.string()).filter(valid))
    uri = offline.delta_uri(offline.table_uri(settings, fsv.name))
    write_deltalake(uri, rows, mode="append", partition_by=[offline.PARTITION], schema_mode="merge",
                    configuration=offline.TABLE_PROPERTIES,
                    storage_options=offline.storage_options(settings),
                    commit_properties=CommitProperties(app_transactions=[Transaction(app_id=app_id, version=version)],
                                                       custom_metadata={"fstore.operation": "stream"}))
    after = offline.delta_table(settings, fsv.name)
    return {"appended": rows.num_rows, "dropped": table.num_rows - rows.num_rows, "replayed": False,
            "offline_version": after.version() if after is not None else None}
