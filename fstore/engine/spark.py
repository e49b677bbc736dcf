"""The Spark engine: reading sources and running a compiled feature set.

Spark specifics stay here. ``read_source`` reads a path (parquet, csv with a
header and an inferred schema, json, delta), a Spark table or a SQL query, and
keeps the event times in ``[start - lookback, end)``. Delta sources are read
without the Delta jars (the machine cannot fetch them from Maven, see
DESIGN.md): ``deltalake`` lists the current version's files and Spark reads them
as Parquet with ``basePath`` so hive-style partition columns come back.

``compute`` = read (with the look-back the longest window needs) → compiled SQL
→ python features on the executors (``mapInPandas``) → only the rows with event
time in ``[start, end)``.
"""
from __future__ import annotations


from datetime import datetime, timedelta
from typing import Iterator

from fstore.compiler import EVENT_TIME, CompiledQuery, compile_feature_set, internal_column
from fstore.definitions.model import FeatureSetVersion, Source
from fstore.core.errors import ComputeError, InvalidDefinition, NotFound
from fstore.core.settings import Settings
from fstore.engine import s3
from fstore.engine.sources import (check_event_time_type, data_files, delta_arrow_schema, is_local, local_path,
                                   local_path_missing, to_utc_naive)


def ts_literal(value: datetime | str) -> str:
    """A Spark SQL TIMESTAMP literal (the session time zone is UTC)."""
    return f"TIMESTAMP'{to_utc_naive(value).strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def read_delta(spark, path: str, *, version: int | None = None, storage_options: dict | None = None):
    """A Delta table's files (current or ``version``) read as Parquet by Spark, partition columns included."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(path, version=version, storage_options=storage_options)
    except TableNotFoundError:
        raise NotFound(f"no Delta table at {path}") from None
    files = table.file_uris()
    if not files:
        from pyspark.sql.pandas.types import from_arrow_schema

        return spark.createDataFrame([], from_arrow_schema(delta_arrow_schema(table)))
    root = table.table_uri.rstrip("/")
    df = spark.read.option("basePath", root).parquet(*files)
    partitions = table.metadata().partition_columns
    if partitions:
        # Spark infers partition value types from the strings; the table's schema decides.
        arrow = delta_arrow_schema(table)
        from pyspark.sql.pandas.types import from_arrow_type

        for name in partitions:
            df = df.withColumn(name, df[name].cast(from_arrow_type(arrow.field(name).type)))
    return df


def nanosecond_columns(source: Source, settings: Settings | None = None) -> list[str]:
    """The columns of a Parquet source (local, or on S3 with ``settings``) stored as nanosecond timestamps
    (pandas' default), from the files' footers: Spark reads them as longs (``nanosAsLong``) and
    ``read_source`` turns them into timestamps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if source.path and settings is not None and s3.is_s3(source.path):
        filesystem, paths = s3.parquet_files(settings, source.path)
    elif source.path and is_local(source.path):
        filesystem, paths = None, data_files(local_path(source.path), ".parquet")
    else:
        return []
    found: list[str] = []
    for path in paths:
        try:
            schema = pq.read_schema(path, filesystem=filesystem)
        except (OSError, pa.ArrowException):
            continue  # not Parquet: Spark's own read says so
        for field in schema:
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns" and field.name not in found:
                found.append(field.name)
    return found


def read_source(spark, source: Source, *, settings: Settings, start: datetime | None = None,
                end: datetime | None = None, lookback_seconds: int = 0):
    """The source rows with event time in ``[start - lookback, end)`` (either bound optional).

    A path source is checked against ``settings`` (SOURCE_ROOTS, fstore's own files: ``fstore.definitions.guard``)
    before Spark sees it.
    A query or table source passes the SQL policy first (``fstore.compiler.sql_policy``): no file
    paths, table-valued functions or reflection, whatever the registry holds.
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    from fstore.definitions import guard
    from fstore.compiler import sql_policy

    sql_policy.check_source(source)
    if source.is_stream:
        raise InvalidDefinition(f"a kafka source (topic {source.kafka.topic}) is read by a stream (`fstore stream`, "
                                "fstore.compute.stream), not by a batch read", field="source.kafka")
    if source.path:
        guard.check_source(settings, source)
        if local_path_missing(source):
            raise NotFound(f"source path {source.path} does not exist")
        try:
            if source.format == "delta":
                df = read_delta(spark, source.path)
            elif source.format == "csv":
                reader = spark.read.option("header", "true").option("inferSchema", "true")
                df = reader.options(**source.options).csv(source.path)
            else:
                nanos = nanosecond_columns(source, settings) if source.format == "parquet" else []
                if nanos:
                    # Spark refuses TIMESTAMP(NANOS) (pandas' default); read it as a long, then as microseconds.
                    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
                df = spark.read.options(**source.options).format(source.format).load(source.path)
                for name in nanos:
                    column = f"`{name}`"
                    df = df.withColumn(name, F.expr(f"timestamp_micros(({column} - pmod({column}, 1000)) DIV 1000)"))
        except AnalysisException as exc:
            if "PATH_NOT_FOUND" in str(exc):
                raise NotFound(f"source path {source.path} does not exist") from None
            # The first line only: Spark's causes can quote bytes of the file.
            raise InvalidDefinition(f"source {source.path} cannot be read as {source.format}: {_first_line(exc)}",
                                    field="source") from None
    elif source.table:
        if not spark.catalog.tableExists(source.table):
            raise NotFound(f"source table {source.table} does not exist")
        df = spark.table(source.table)
    else:
        try:
            df = spark.sql(source.query)
        except AnalysisException as exc:
            raise InvalidDefinition(f"source query does not run: {exc}", field="source.query") from None
    ts = source.event_timestamp_column
    if ts not in df.columns:
        raise InvalidDefinition(f"the source has no event timestamp column {ts!r}; its columns are: {', '.join(df.columns)}",
                                field="source.event_timestamp_column")
    check_event_time_type(ts, dict(df.dtypes)[ts])
    return in_range(df, ts, start, end, lookback_seconds)


def in_range(df, ts: str, start: datetime | None, end: datetime | None, lookback_seconds: int):
    """The rows of ``df`` with event time ``ts`` in ``[start - lookback, end)`` (either bound optional)."""
    conds = []
    if start is not None:
        conds.append(f"CAST(`{ts}` AS TIMESTAMP) >= {ts_literal(to_utc_naive(start) - timedelta(seconds=lookback_seconds))}")
    if end is not None:
        conds.append(f"CAST(`{ts}` AS TIMESTAMP) < {ts_literal(end)}")
    return df.where(" AND ".join(conds)) if conds else df


def _first_line(exc: BaseException) -> str:
    text = (exc.getMessage() if hasattr(exc, "getMessage") else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ship_by_value(funcs) -> None:
    """Pickle user modules by value (cloudpickle), unless they are installed packages or the standard library."""
    import inspect
    import sys
    import sysconfig

    from pyspark import cloudpickle

    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    for func in funcs:
        module = inspect.getmodule(func)
        path = getattr(module, "__file__", None) or ""
        if module is None or not path or any(path.startswith(p) for p in installed) or path.startswith(sys.base_prefix):
            continue
        cloudpickle.register_pickle_by_value(module)


def _python_stage(df, compiled: CompiledQuery, fsv: FeatureSetVersion, settings: Settings):
    """Append each python feature's column, computed per partition on the executors."""
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    from fstore.engine.python_stage import apply_batch, load_functions

    # Load on the driver (a bad name fails here, naming the feature) and ship the functions by value,
    # so a user module need not be installed on every executor.
    funcs = load_functions(compiled, settings)
    _ship_by_value(func for _, func, _ in funcs)
    py = compiled.python_features
    out_schema = StructType(df.schema.fields + [StructField(internal_column(n), _parse_datatype_string(t), True) for n, _, t in py])

    def apply(batches: Iterator) -> Iterator:
        for pdf in batches:
            yield apply_batch(pdf, funcs)

    return df.mapInPandas(apply, schema=out_schema)


def sql_with_frames(spark, text: str, frames: dict):
    """``spark.sql(text)`` in which each name of ``frames`` (a bare identifier in ``text``) stands for that DataFrame.

    The frames go to ``spark.sql`` as its DataFrame arguments, not as temporary views made and dropped
    around the call: an in-process session analyses the query at once, so a view is only needed meanwhile,
    but a Spark Connect DataFrame is analysed on the server each time it runs, when such a view would be gone
    (and a view kept would leak into the server's long-lived session). Braces in ``text`` (user SQL may hold
    them in literals) are escaped from ``spark.sql``'s formatter.
    """
    escaped = text.replace("{", "{{").replace("}", "}}")
    for name in frames:
        escaped = escaped.replace(name, "{" + name + "}")
    return spark.sql(escaped, **frames)


def wide_frame(spark, compiled: CompiledQuery, source_df):
    """``compiled.wide_sql`` over ``source_df``.

    The source is the query's own DataFrame argument (``sql_with_frames``), never a view by name, so two
    computations of the same feature set version in one Spark session never see each other's rows.
    """
    return sql_with_frames(spark, compiled.wide_sql.replace(f"`{compiled.source_view}`", "__fs_source_frame__"),
                           {"__fs_source_frame__": source_df})


def run_compiled(spark, fsv: FeatureSetVersion, compiled: CompiledQuery, source_df, *, settings: Settings):
    """Run ``compiled`` over ``source_df`` (all its rows): the feature frame, before any range filter."""
    from pyspark.errors import AnalysisException

    try:
        wide = wide_frame(spark, compiled, source_df)
        if compiled.python_features:
            wide = _python_stage(wide, compiled, fsv, settings)
        return wide.selectExpr(*compiled.projection)
    except AnalysisException as exc:
        message = (exc.getMessage() if hasattr(exc, "getMessage") else str(exc)).strip().splitlines()[0]
        raise ComputeError(f"feature set {fsv.name} v{fsv.version} does not compile against its source: {message}") from None


def compute(spark, fsv: FeatureSetVersion, *, settings: Settings, start: datetime | None = None,
            end: datetime | None = None, source_df=None):
    """The features of ``fsv`` for every source event with event time in ``[start, end)``.

    ``source_df``: the source already read (``read_source`` with at least this set's look-back, usually
    persisted), shared by the sets of one ``materialize_many`` over the same source and range; None reads it."""
    if fsv.feature_set.source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has no source to compute from", field="source")
    compiled = compile_feature_set(fsv)
    if source_df is None:
        source_df = read_source(spark, fsv.feature_set.source, settings=settings, start=start, end=end,
                                lookback_seconds=compiled.lookback_seconds)
    else:
        source_df = in_range(source_df, fsv.feature_set.source.event_timestamp_column, start, end,
                              compiled.lookback_seconds)
    df = run_compiled(spark, fsv, compiled, source_df, settings=settings)
    conds = []
    if start is not None:
        conds.append(f"event_timestamp >= {ts_literal(start)}")
    if end is not None:
        conds.append(f"event_timestamp < {ts_literal(end)}")
    return df.where(" AND ".join(conds)) if conds else df


__all__ = ["read_source", "in_range", "compute", "read_delta", "run_compiled", "wide_frame", "sql_with_frames", "ts_literal", "EVENT_TIME"]
