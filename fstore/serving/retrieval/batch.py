"""Batch retrieval: a large entity source → features written as Delta or Parquet, as a background job.

``start_batch_retrieval`` checks the request (entity source, features, output),
records a ``batch_retrieval`` job and starts ``python jobs/retrieve.py --job-id
ID`` detached, returning the pending job at once. ``run_batch_job`` (what that
process runs, also reachable through ``spark-submit jobs/retrieve.py``) reads
the entity rows, runs the same point-in-time retrieval as
``get_historical_features`` on the store's engine, writes the result and
records progress, then the output location and row count (or the error) on
the job.

Either engine writes the same layout: Parquet part files in the output folder,
for Delta committed by the driver as version 0 of a new Delta log with
``deltalake`` (no Delta Spark jars, DESIGN.md). The output may be a local folder or
an S3 location (``s3a://BUCKET/…``, through the S3 settings; nothing stored there yet).
Spark writes the files itself;
``COMPUTE_ENGINE=duckdb`` reads the entity rows with DuckDB (local paths, or parquet
and delta on S3 through pyarrow),
retrieves with ``historical_duckdb`` in the job process (the rows and the
result held in its memory) and writes the files with pyarrow. No Spark session
is started there.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fstore.definitions.model import SOURCE_FORMATS
from fstore.core.errors import AlreadyExists, Conflict, FStoreError, InvalidDefinition
from fstore.definitions.guard import check_read_path, check_write_path
from fstore.engine import s3

if TYPE_CHECKING:
    from fstore.core.settings import Settings
    from fstore.core.context import StoreContext

OUTPUT_FORMATS = ("delta", "parquet")
JOB_SCRIPT = Path(__file__).resolve().parents[3] / "jobs" / "retrieve.py"
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file:")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path[len("file:"):] if path.startswith("file:") else path


def check_entity_source(settings: "Settings", entity_source: Any) -> dict[str, Any]:
    """``{"path", "format"}`` or ``{"table"}`` (optionally ``timestamp_column``), normalized; a path must be
    readable under SOURCE_ROOTS and clear of fstore's own files (``fstore.definitions.guard``), checked before it is opened."""
    if not isinstance(entity_source, dict):
        raise InvalidDefinition("entity_source must be an object with path (and format) or table", field="entity_source")
    unknown = sorted(set(entity_source) - {"path", "format", "table", "timestamp_column"})
    if unknown:
        raise InvalidDefinition(f"unknown field(s) for entity_source: {', '.join(unknown)}", field=f"entity_source.{unknown[0]}")
    path, table = entity_source.get("path"), entity_source.get("table")
    if bool(path) == bool(table):
        raise InvalidDefinition("entity_source needs exactly one of path or table", field="entity_source")
    out: dict[str, Any] = {}
    if path:
        if not isinstance(path, str):
            raise InvalidDefinition("entity_source.path must be a string", field="entity_source.path")
        fmt = str(entity_source.get("format") or "parquet").lower()
        if fmt not in SOURCE_FORMATS:
            raise InvalidDefinition(f"entity_source.format {fmt!r} is not one of: {', '.join(SOURCE_FORMATS)}",
                                    field="entity_source.format")
        check_read_path(settings, path, field="entity_source.path")
        if _is_local(path):
            path = os.path.abspath(_local(path))
            if not os.path.exists(path):
                raise InvalidDefinition(f"entity_source.path {path} does not exist", field="entity_source.path")
        out.update(path=path, format=fmt)
    else:
        if not isinstance(table, str) or not _TABLE_RE.match(table):
            raise InvalidDefinition(f"entity_source.table {table!r} is not a valid table name", field="entity_source.table")
        out["table"] = table
    ts = entity_source.get("timestamp_column")
    if ts is not None:
        if not isinstance(ts, str) or not ts:
            raise InvalidDefinition("entity_source.timestamp_column must be a column name", field="entity_source.timestamp_column")
        out["timestamp_column"] = ts
    return out


def check_output(settings: "Settings", output_path: Any, output_format: Any) -> tuple[str, str]:
    """An output location that holds nothing yet (nothing stored is ever overwritten), under SOURCE_ROOTS and
    outside everything fstore keeps (``fstore.definitions.guard``), and a known format."""
    if not isinstance(output_path, str) or not output_path.strip():
        raise InvalidDefinition("output_path is required", field="output_path")
    check_write_path(settings, output_path.strip(), field="output_path")
    fmt = "delta" if output_format is None else str(output_format).lower()
    if fmt not in OUTPUT_FORMATS:
        raise InvalidDefinition(f"output_format {output_format!r} is not one of: {', '.join(OUTPUT_FORMATS)}",
                                field="output_format")
    path = output_path.strip()
    if _is_local(path):
        path = os.path.abspath(_local(path))
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise AlreadyExists(f"output_path {path} already exists and is not empty; choose a new location",
                                field="output_path")
    elif s3.is_s3(path):
        if _s3_holds_anything(settings, path):
            raise AlreadyExists(f"output_path {path} already holds objects; choose a new location", field="output_path")
    elif fmt == "delta":
        raise InvalidDefinition("Delta output is written to a local path or S3; use output_format parquet for "
                                f"{path.split('://', 1)[0]}:// locations", field="output_format")
    return path, fmt


def _s3_holds_anything(settings: "Settings", path: str) -> bool:
    """Whether anything is stored at or under ``path`` on S3 (one listing, through the settings' S3)."""
    from pyarrow.fs import FileSelector, FileType

    fs = s3.filesystem(settings)
    where = s3.path_on(path).rstrip("/")
    try:
        if fs.get_file_info(where).type == FileType.File:
            return True
        return bool(fs.get_file_info(FileSelector(where, allow_not_found=True, recursive=False)))
    except OSError as exc:
        raise s3.access_error(settings, exc, doing=f"checking output_path {path}", uri=path) from None


def check_engine_support(compute_engine: str, source: dict[str, Any], output_path: str) -> None:
    """What ``COMPUTE_ENGINE=duckdb`` cannot run, refused before a job is recorded: it reads an entity
    source the way it reads a feature set's (local parquet, csv, json or delta paths; parquet or delta on S3) and
    writes locally or to S3."""
    if compute_engine != "duckdb":
        return
    from fstore.definitions.model import Source
    from fstore.engine.duckdb import unsupported

    given = {"table": source["table"]} if "table" in source else {"path": source["path"], "format": source["format"]}
    reason = unsupported(Source(**given))
    if reason is not None:
        raise InvalidDefinition(f"entity_source: {reason}", field=f"entity_source.{next(iter(given))}")
    if not _is_local(output_path) and not s3.is_s3(output_path):
        raise InvalidDefinition(f"COMPUTE_ENGINE=duckdb writes batch output to local paths and S3 only, not "
                                f"{output_path}; run it with COMPUTE_ENGINE=spark", field="output_path")


def _refuse_shared_output(s, path: str) -> None:
    """Two unfinished jobs never write one location (the second would find it written, or clobber it)."""
    from sqlalchemy import select

    from fstore.registry.models import JobRow

    for job_id, params in s.execute(select(JobRow.id, JobRow.params).where(
            JobRow.kind == "batch_retrieval", JobRow.status.in_(("pending", "running")))):
        if isinstance(params, dict) and params.get("output_path") == path:
            raise Conflict(f"job {job_id} is already writing to output_path {path}; wait for it or choose another "
                           "location", field="output_path")


def start_batch_retrieval(store: "StoreContext", *, entity_source: dict, features: list[str], output_path: str,
                          output_format: str = "delta", feature_sets: list[str] | None = None,
                          actor: str = "") -> dict:
    """Record a batch retrieval job and start it in a detached process; returns the job (pending)."""
    from fstore.compute.materialize import job_log_path, settings_env
    from fstore.registry.references import resolve
    from fstore.registry.jobs import create_job, update_job

    source = check_entity_source(store.settings, entity_source)
    path, fmt = check_output(store.settings, output_path, output_format)
    check_engine_support(store.settings.compute_engine, source, path)
    resolve(store, features, feature_sets)  # unknown or ambiguous features fail now, not in the job
    params = {"entity_source": source, "features": list(features),
              "feature_sets": list(feature_sets) if feature_sets else None,
              "output_path": path, "output_format": fmt}
    with store.transaction() as s:
        _refuse_shared_output(s, path)
        job = create_job(s, "batch_retrieval", params, actor=actor)
    import subprocess
    import sys
    import threading

    env = {**os.environ, **settings_env(store.settings)}
    root = str(JOB_SCRIPT.parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        with open(job_log_path(store.settings, job["id"]), "ab") as out:
            proc = subprocess.Popen([sys.executable, str(JOB_SCRIPT), "--job-id", job["id"]], env=env, cwd=root,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    except OSError as exc:
        with store.transaction() as s:
            update_job(s, job["id"], status="failed", error=f"could not start the job process: {exc}")
        raise
    threading.Thread(target=proc.wait, name=f"reap-job-{job['id'][:8]}", daemon=True).start()
    return job


def _read_entities(spark, settings: "Settings", source: dict[str, Any]):
    from fstore.engine.spark import read_delta

    if "path" in source:
        check_read_path(settings, source["path"], field="entity_source.path")  # again: the job trusts no record
    if "table" in source:
        if not spark.catalog.tableExists(source["table"]):
            raise InvalidDefinition(f"entity_source.table {source['table']} does not exist", field="entity_source.table")
        return spark.table(source["table"])
    if source["format"] == "delta":
        return read_delta(spark, source["path"])
    reader = spark.read
    if source["format"] == "csv":
        reader = reader.option("header", "true").option("inferSchema", "true")
    return reader.format(source["format"]).load(source["path"])


def _read_entities_duckdb(store: "StoreContext", source: dict[str, Any]):
    """The entity rows of a path source as an Arrow table, read by DuckDB as Spark's reader would read them
    (the path checked again by ``fstore.definitions.guard``: the job trusts no record)."""
    import duckdb

    from fstore.definitions.model import Source
    from fstore.engine import duckdb as engine

    con = engine.connect(store.settings.max_compute_threads)
    try:
        return engine.open_source(con, Source(path=source["path"], format=source["format"]),
                                  settings=store.settings).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidDefinition(f"entity_source.path {source['path']} cannot be read as {source['format']}: {first}",
                                field="entity_source.path") from None
    finally:
        con.close()


def write_result(result, settings: "Settings", path: str, fmt: str) -> None:
    """Write a retrieval's rows with the engine that holds them: Spark's writer, or pyarrow (DuckDB's Arrow rows)."""
    if result.arrow is not None:
        write_arrow_output(result.arrow, settings, path, fmt)
    else:
        write_output(result.to_spark(), settings, path, fmt)


def write_output(spark_df, settings: "Settings", path: str, fmt: str) -> None:
    """Write the result as Parquet, or as a new Delta table (Parquet files committed with deltalake)."""
    check_output(settings, path, fmt)  # still nothing there: never overwrite what another writer put meanwhile
    exists = _is_local(path) and os.path.isdir(path)
    spark_df.write.mode("append" if exists else "error").parquet(path)  # "error": Spark Connect knows no alias
    if fmt == "delta":
        commit_parquet_folder_as_delta(path, settings)


_ROWS_PER_FILE = 4 << 20
_ROWS_PER_GROUP = 1 << 20


def write_arrow_output(table, settings: "Settings", path: str, fmt: str) -> None:
    """``write_output`` for an Arrow table (the DuckDB engine), in Spark's layout and types.

    Snappy Parquet part files in the folder, rows in order; timestamps as Spark writes them (UTC
    microseconds); for Delta, the same commit of the folder as version 0.
    """
    import uuid

    import pyarrow.dataset as ds

    from fstore.serving.retrieval.plan import utc_timestamps

    check_output(settings, path, fmt)  # still nothing there: never overwrite what another writer put meanwhile
    fs, where = _output_filesystem(settings, path)
    fs.create_dir(where, recursive=True)
    options = ds.ParquetFileFormat().make_write_options(compression="snappy")
    ds.write_dataset(_microseconds(utc_timestamps(table)), where, format="parquet", file_options=options, filesystem=fs,
                     basename_template=f"part-{{i}}-{uuid.uuid4()}-c000.snappy.parquet", preserve_order=True,
                     max_rows_per_file=_ROWS_PER_FILE, min_rows_per_group=_ROWS_PER_GROUP,
                     max_rows_per_group=_ROWS_PER_GROUP, existing_data_behavior="error")
    if fmt == "delta":
        commit_parquet_folder_as_delta(path, settings)


def _output_filesystem(settings: "Settings", path: str):
    """A pyarrow filesystem for an output location and the path on it (S3 through the settings' keys)."""
    from pyarrow import fs

    if s3.is_s3(path):
        return s3.filesystem(settings), s3.path_on(path).rstrip("/")
    return fs.LocalFileSystem(), path


def _microseconds(table):
    """Timestamp columns in microseconds (Spark's precision; Delta has no nanosecond timestamps)."""
    import pyarrow as pa

    for i, arrow_type in enumerate(table.schema.types):
        if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "ns":
            table = table.set_column(i, table.schema.field(i).name,
                                     table.column(i).cast(pa.timestamp("us", tz=arrow_type.tz), safe=False))
    return table


def commit_parquet_folder_as_delta(path: str, settings: "Settings | None" = None) -> None:
    """Turn a folder of Parquet files (written by Spark or pyarrow; local or on S3) into version 0 of a Delta table."""
    import pyarrow.parquet as pq
    from deltalake import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions
    from pyarrow.fs import FileSelector

    on_s3 = s3.is_s3(path)
    if on_s3 and settings is None:
        raise FStoreError(f"committing {path} as Delta needs the S3 settings")
    fs, where = _output_filesystem(settings, path) if on_s3 else _output_filesystem(None, path)
    files = sorted((f for f in fs.get_file_info(FileSelector(where)) if f.is_file and f.base_name.endswith(".parquet")),
                   key=lambda f: f.base_name)
    if not files:
        raise FStoreError(f"no Parquet files were written to {path}")
    actions, schema = [], None
    for file in files:
        with fs.open_input_file(file.path) as handle:
            footer = pq.ParquetFile(handle)
            schema = schema or footer.schema_arrow
            rows = footer.metadata.num_rows
        actions.append(AddAction(path=file.base_name, size=file.size, partition_values={},
                                 modification_time=int(file.mtime.timestamp() * 1000), data_change=True,
                                 stats=json.dumps({"numRecords": rows})))
    create_table_with_add_actions(s3.delta_uri(path) if on_s3 else path, Schema.from_arrow(schema), actions,
                                  mode="error", storage_options=s3.delta_options(settings) if on_s3 else None)


def run_batch_job(store: "StoreContext", job_id: str) -> dict:
    """Execute a recorded batch retrieval job (in the job process); returns the finished job.

    The process holds the lease ``job:<id>`` while it works and renews it; if it dies, readers of
    the job see the lease end and report the job failed (``fstore.registry.jobs``).
    """
    from fstore.registry import runs
    from fstore.registry.jobs import JOB_LEASE_SECONDS, get_job, lease_name, update_job

    with store.transaction() as s:
        job = get_job(s, job_id)
        if job["status"] != "pending":
            raise InvalidDefinition(f"job {job_id} is {job['status']}, not pending", field="job_id")
    # The lease first, then "running": a reader never sees a running job without a live lease.
    holder = runs.try_acquire_lock(store.engine, lease_name(job_id), job_id, JOB_LEASE_SECONDS)
    if holder is not None and not holder.get("taken_over"):
        raise InvalidDefinition(f"job {job_id} is already being run by another process", field="job_id")
    try:
        with runs.keep_lease(store.engine, lease_name(job_id), job_id, JOB_LEASE_SECONDS):
            with store.transaction() as s:
                update_job(s, job_id, status="running", progress=0.05)
            return _run_job(store, job_id, job["params"])
    finally:
        runs.release_lock(store.engine, lease_name(job_id), job_id)


def _run_job(store: "StoreContext", job_id: str, params: dict) -> dict:
    """The work of a running job: entities, retrieval, output; records progress and the outcome."""
    from fstore.registry.references import resolve
    from fstore.registry.jobs import update_job

    try:
        source = params["entity_source"]
        on_duckdb = store.settings.compute_engine == "duckdb"
        if on_duckdb:
            from fstore.serving.retrieval.entities import prepare_arrow

            entities = prepare_arrow(_read_entities_duckdb(store, source), source.get("timestamp_column"))
        else:
            from fstore.serving.retrieval.entities import prepare_entities

            entities = prepare_entities(store.spark, _read_entities(store.spark, store.settings, source),
                                        source.get("timestamp_column"))
        with store.transaction() as s:
            update_job(s, job_id, progress=0.3)
        groups = resolve(store, params["features"], params["feature_sets"])
        pins = {g.version.name: None for g in groups}
        if on_duckdb:
            from fstore.serving.retrieval.historical_duckdb import retrieve
        else:
            from fstore.serving.retrieval.historical import retrieve
        result = retrieve(store, entities, groups, pins)
        with store.transaction() as s:
            update_job(s, job_id, progress=0.5)
        write_result(result, store.settings, params["output_path"], params["output_format"])
        outcome = {"output_path": params["output_path"], "output_format": params["output_format"],
                   "row_count": entities.count, "columns": list(result.columns),
                   "feature_sets": result.meta["feature_sets"], "compute_engine": store.settings.compute_engine}
        with store.transaction() as s:
            return update_job(s, job_id, status="succeeded", progress=1.0, result=outcome)
    except Exception as exc:
        message = exc.message if isinstance(exc, FStoreError) else f"{type(exc).__name__}: {exc}"
        with store.transaction() as s:
            update_job(s, job_id, status="failed", error=message)
        raise
