"""The DuckDB engine (``COMPUTE_ENGINE=duckdb``): a feature set computed in this process, no JVM.

The same compiled query as on Spark (``fstore.compiler``), transpiled from Spark SQL to
DuckDB's dialect by sqlglot (``to_duckdb``), runs over the source rows; the result is a
``pyarrow.Table`` with the same columns and types as the Spark engine's DataFrame. It is
meant for one machine: sources are local paths (parquet, csv, json, delta) or parquet and
delta on S3 (read through pyarrow: ``_open_s3``), never a Spark table or query, and python features run in-process over Arrow batches.

``compute`` = read (with the look-back the longest window needs) → compiled SQL →
python features (``fstore.engine.python_stage``) → the final projection → only the rows
with event time in ``[start, end)``. The session time zone is UTC, as on Spark, so a
naive timestamp means UTC and ``current_date`` is the UTC date of the event.
"""
from __future__ import annotations

import functools
import threading
import os
from datetime import datetime, timedelta
from typing import Any

import sqlglot
from sqlglot import exp

from fstore.compiler import CompiledQuery, compile_feature_set, internal_column
from fstore.compiler.dialect import quote, sql_error_text
from fstore.engine import s3 as storage_s3
from fstore.definitions.model import FeatureSetVersion, Source
from fstore.engine.sources import check_event_time_type, data_files, local_path_missing, to_utc_naive
from fstore.core.errors import ComputeError, InvalidDefinition, NotFound
from fstore.definitions.guard import check_source
from fstore.core.settings import Settings

SOURCE_VIEW = "fstore_source"
PYTHON_BATCH_ROWS = 100_000
# Spark reader options the DuckDB readers honour, by source format (anything else is refused, not ignored).
_CSV_OPTIONS = {"header": "header", "sep": "delim", "delimiter": "delim", "quote": "quote", "escape": "escape"}


def connect(threads: int = 0):
    """An in-memory DuckDB connection in UTC (``threads`` 0 = DuckDB's default, one per core).

    It can still open files: the reads fstore registers call ``allow_files`` for what they open,
    and ``seal`` then turns DuckDB's external access off before any user SQL runs.
    """
    import duckdb

    from fstore.engine.arrow_memory import prefer_system_allocator

    prefer_system_allocator()  # DuckDB's results are copied in Arrow: see fstore.engine.arrow_memory
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # ICU is built in, but only settable once the connection exists
    # Each parquet footer read once per connection: a retrieval binds a set's files several times (the read, its
    # types, the as-of join); 1,000 features x 17,000 labels, 60 files a set: 4.36 s → 3.57 s a call (means).
    con.execute("SET parquet_metadata_cache = true")
    con.execute(_MACROS)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def allow_files(con, paths) -> None:
    """Let the connection still read ``paths`` once sealed: one file by DuckDB's ``allowed_paths``, several
    by ``allowed_directories`` of the folder holding them all (a source's or offline table's folder; DuckDB
    checks each listed path when it is set, 0.1 ms a path, too slow for tables of thousands of files).

    Only before ``seal``: DuckDB refuses to change the lists once external access is off.
    """
    local = [os.path.abspath(str(p)) for p in paths if "://" not in str(p)]
    if not local:
        return
    root = os.path.commonpath(local)
    if len(local) > 1 and os.path.isdir(root) and root != os.path.dirname(root):  # never the file system's root
        setting, entries = "allowed_directories", [root.rstrip(os.sep) + os.sep]
    else:
        setting, entries = "allowed_paths", local
    current = con.execute(f"SELECT current_setting('{setting}')").fetchone()[0] or []
    con.execute(f"SET {setting} = " + _sql_list(list(dict.fromkeys([*current, *entries]))))


def seal(con) -> None:
    """Turn DuckDB's external access off and lock the configuration: from now on the connection reads
    only the files ``allow_files`` listed (the sources and offline files fstore opened), never a path
    named in SQL (``read_text('/etc/passwd')``, ``glob``, ``COPY``), and no setting can undo that.
    Arrow data registered from Python (Delta sources, entity frames) is not file access and still reads."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


# Spark casts a fractional number to an integer type by truncating it, DuckDB by rounding it: ``fs_int``
# truncates first when the value is fractional (``typeof`` is folded when the query is bound).
_MACROS = """
CREATE TEMP MACRO fs_int(x) AS CASE WHEN typeof(x) IN ('DOUBLE', 'FLOAT') OR typeof(x) LIKE 'DECIMAL%'
  THEN CAST(trunc(TRY_CAST(x AS DOUBLE)) AS BIGINT) ELSE x END;
"""
_INTEGER_TYPES = {exp.DataType.Type.BIGINT, exp.DataType.Type.INT, exp.DataType.Type.SMALLINT, exp.DataType.Type.TINYINT}


def _rewrite(node: exp.Expression) -> exp.Expression:
    """Spark functions DuckDB spells differently or sqlglot does not map."""
    if isinstance(node, exp.Cast) and node.to.this in _INTEGER_TYPES and not (
            isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "FS_INT"):
        cast = node.copy()
        cast.set("this", exp.Anonymous(this="FS_INT", expressions=[node.this.copy()]))
        return cast
    if type(node) is exp.Concat:  # not CONCAT_WS, which skips nulls on both engines
        # Spark's CONCAT is null when any argument is; DuckDB's skips nulls (concat(NULL, '!') = '!') and its
        # ``||`` does not (it casts other types to text as CONCAT does, and joins lists as Spark's CONCAT does)
        parts = [exp.paren(e.copy()) for e in node.expressions] or [exp.Literal.string("")]
        if len(parts) == 1:
            parts.append(exp.Literal.string(""))
        return functools.reduce(lambda a, b: exp.DPipe(this=a, expression=b, safe=True), parts)
    if isinstance(node, exp.UnixMicros):
        return exp.Anonymous(this="EPOCH_US", expressions=[node.this])
    if isinstance(node, exp.ArraySize) and isinstance(node.this, exp.Window) \
            and isinstance(node.this.this, exp.ArrayUniqueAgg):
        # SIZE(COLLECT_SET(x) OVER w): DuckDB counts distinct values in a window directly.
        window = node.this.copy()
        window.set("this", exp.Count(this=exp.Distinct(expressions=[window.this.this])))
        return window
    if isinstance(node, exp.Anonymous) and node.name.upper() == "PMOD" and len(node.expressions) == 2:
        a, b = (exp.paren(e.copy()) for e in node.expressions)
        return exp.paren(exp.Mod(this=exp.paren(exp.Add(this=exp.paren(exp.Mod(this=a, expression=b)), expression=b.copy())),
                                 expression=b.copy()))
    if isinstance(node, exp.StrToUnix) and (node.args.get("format") is None or node.args["format"].name == "%Y-%m-%d %H:%M:%S"):
        # unix_timestamp(x): whole seconds since the epoch of a timestamp (or a default-format string)
        seconds = exp.func("EPOCH", exp.cast(node.this.copy(), "TIMESTAMPTZ"))
        return exp.cast(exp.func("FLOOR", seconds), "BIGINT")
    return node


@functools.lru_cache(maxsize=512)
def to_duckdb(spark_sql: str) -> str:
    """One Spark SQL statement in DuckDB's dialect (cached: a push transpiles its set's same query each call)."""
    try:
        tree = sqlglot.parse_one(spark_sql, read="spark")
    except sqlglot.errors.ParseError as exc:
        raise ComputeError(f"the compiled query does not parse: {sql_error_text(exc)}") from None
    # sqlglot does not descend into a node that ``_rewrite`` replaced, so rewrite until nothing changes.
    for _ in range(8):
        rewritten = tree.transform(_rewrite)
        if rewritten == tree:
            break
        tree = rewritten
    return tree.sql(dialect="duckdb")


def ident(name: str) -> str:
    """A DuckDB identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def read_source(con, source: Source, *, settings: Settings):
    """The source as a DuckDB relation (every row; ``compute`` filters the range), with its event time column.

    The path is checked against ``settings`` (SOURCE_ROOTS, fstore's own files: ``fstore.definitions.guard``) before
    DuckDB or deltalake opens anything."""
    relation = open_source(con, source, settings=settings)
    ts = source.event_timestamp_column
    if ts not in relation.columns:
        raise InvalidDefinition(f"the source has no event timestamp column {ts!r}; its columns are: "
                                f"{', '.join(relation.columns)}", field="source.event_timestamp_column")
    check_event_time_type(ts, str(relation.types[relation.columns.index(ts)]))
    return relation


def unsupported(source: Source) -> str | None:
    """Why the DuckDB engine cannot read ``source`` (a Spark table or query, a remote path, Spark-only options),
    or None when it can. The definition itself is fine: such a set runs with COMPUTE_ENGINE=spark."""
    if source.is_stream:
        return f"a kafka source (topic {source.kafka.topic}) is read by a stream (`fstore stream`), not by a batch run"
    if not source.path:
        kind = "table" if source.table else "query"
        return (f"COMPUTE_ENGINE=duckdb reads path sources (parquet, csv, json, delta); this source is a Spark {kind}: "
                "run it with COMPUTE_ENGINE=spark")
    if storage_s3.is_s3(source.path):
        if source.format not in ("parquet", "delta"):
            return (f"COMPUTE_ENGINE=duckdb reads parquet and delta sources on S3, not {source.format} "
                    f"({source.path}); run it with COMPUTE_ENGINE=spark")
    elif "://" in source.path and not source.path.startswith("file:"):
        return (f"COMPUTE_ENGINE=duckdb reads local paths and S3 only, not {source.path}; "
                "run it with COMPUTE_ENGINE=spark")
    if source.format not in ("parquet", "csv", "json", "delta"):
        return f"COMPUTE_ENGINE=duckdb cannot read {source.format} sources; run it with COMPUTE_ENGINE=spark"
    allowed = _CSV_OPTIONS if source.format == "csv" else {}
    unknown = sorted(k for k in source.options if k not in allowed and k != "inferSchema")
    if unknown:
        return (f"COMPUTE_ENGINE=duckdb does not understand source option(s) {', '.join(unknown)} for {source.format}; "
                "run it with COMPUTE_ENGINE=spark")
    return None


def open_source(con, source: Source, *, settings: Settings):
    """Every row of a path source as a DuckDB relation, as Spark's reader would read it (``unsupported`` refused;
    the path checked by ``fstore.definitions.guard`` first)."""
    reason = unsupported(source)
    if reason is not None:
        raise InvalidDefinition(reason, field="source")
    check_source(settings, source)
    if storage_s3.is_s3(source.path):
        return _open_s3(con, source, settings=settings)
    if local_path_missing(source):
        raise NotFound(f"source path {source.path} does not exist")
    path = source.path[len("file://"):] if source.path.startswith("file://") else source.path.removeprefix("file:")
    options = dict(source.options)
    import duckdb

    try:
        if source.format == "delta":
            from deltalake import DeltaTable
            from deltalake.exceptions import TableNotFoundError

            try:
                dataset = DeltaTable(path).to_pyarrow_dataset()
            except TableNotFoundError:
                raise NotFound(f"no Delta table at {source.path}") from None
            return con.from_arrow(dataset)
        extension = {"parquet": ".parquet", "csv": "", "json": ""}[source.format]
        files = data_files(path, extension)
        if not files:
            raise NotFound(f"source path {source.path} holds no {source.format} files")
        allow_files(con, files)
        if source.format == "parquet":
            return con.sql(f"SELECT * FROM read_parquet({_sql_list(files)}, hive_partitioning = true, union_by_name = true)")
        if source.format == "json":
            return con.sql(f"SELECT * FROM read_json({_sql_list(files)}, format = 'newline_delimited')")
        args = {"header": "true"}
        for key, value in options.items():
            if key in _CSV_OPTIONS:
                args[_CSV_OPTIONS[key]] = "'" + str(value).replace("'", "''") + "'" if key != "header" else str(value).lower()
        rendered = ", ".join(f"{k} = {v}" for k, v in args.items())
        return con.sql(f"SELECT * FROM read_csv({_sql_list(files)}, {rendered})")
    except duckdb.Error as exc:
        raise InvalidDefinition(f"source {source.path} cannot be read as {source.format}: {_first_line(exc)}",
                                field="source") from None


def _open_s3(con, source: Source, *, settings: Settings):
    """A parquet or delta source on S3 as a DuckDB relation over a pyarrow dataset (the S3 settings' client:
    ``fstore.engine.s3``). DuckDB scans the Arrow dataset in process, so its own file access stays off
    (``seal``); its httpfs extension is neither bundled nor installable here."""
    import pyarrow.dataset as ds

    try:
        if source.format == "delta":
            from deltalake import DeltaTable
            from deltalake.exceptions import TableNotFoundError

            try:
                dataset = DeltaTable(storage_s3.delta_uri(source.path),
                                     storage_options=storage_s3.delta_options(settings)).to_pyarrow_dataset()
            except TableNotFoundError:
                raise NotFound(f"no Delta table at {source.path}") from None
        else:
            # Spark's listing: hidden (_ or .) entries skipped, key=value folders as columns.
            dataset = ds.dataset(storage_s3.path_on(source.path).rstrip("/"), format="parquet", partitioning="hive",
                                 filesystem=storage_s3.filesystem(settings), exclude_invalid_files=False,
                                 ignore_prefixes=["_", "."])
    except FileNotFoundError:
        raise NotFound(f"source path {source.path} does not exist") from None
    except OSError as exc:
        raise storage_s3.access_error(settings, exc, doing=f"reading source {source.path}", uri=source.path) from None
    if source.format == "parquet" and not dataset.files:
        raise NotFound(f"source path {source.path} holds no parquet files")
    return con.from_arrow(dataset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def query_error(fsv: FeatureSetVersion, exc: BaseException) -> ComputeError:
    """A set's query that DuckDB refused: "does not compile" when it could not be planned (parser, binder,
    catalog), "failed on its rows" when a value broke it at run time (division by zero, a bad cast)."""
    import duckdb

    planning = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
    what = "does not compile against its source" if isinstance(exc, planning) else "failed on its rows"
    return ComputeError(f"feature set {fsv.name} v{fsv.version} {what}: {_first_line(exc)}")


def _timestamp_literal(value: datetime) -> str:
    return f"TIMESTAMPTZ '{to_utc_naive(value).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def run_compiled(con, fsv: FeatureSetVersion, compiled: CompiledQuery, source, *, settings: Settings,
                 keep: str = "") -> Any:
    """``compiled`` over the relation ``source``: a pyarrow Table of the feature columns.

    ``keep`` (DuckDB SQL over the computed rows, e.g. on ``__fs_event_time``) selects the rows
    returned after every window has seen all of ``source``; empty keeps them all.
    """
    import duckdb
    import pyarrow as pa

    con.register(SOURCE_VIEW, source)
    try:
        wide_sql = compiled.wide_sql.replace(f"`{compiled.source_view}`", quote(SOURCE_VIEW))
        projection = to_duckdb("SELECT " + ", ".join(compiled.projection) + " FROM wide") + (
            f" WHERE {keep}" if keep else "")
        if not compiled.python_features:
            return con.sql(f"WITH wide AS ({to_duckdb(_strip_header(wide_sql))}) {projection}").to_arrow_table()
        from fstore.engine.python_stage import apply_batch, load_functions

        funcs = load_functions(compiled, settings)
        reader = con.sql(to_duckdb(_strip_header(wide_sql))).to_arrow_reader(PYTHON_BATCH_ROWS)
        try:  # closed before the source view is dropped, or DuckDB's "open result" would hide a function's error
            parts = [pa.Table.from_pandas(apply_batch(batch.to_pandas(), funcs), preserve_index=False) for batch in reader]
            if not parts:  # no rows (an apply-time check reads none): the python columns, empty
                empty = con.sql(to_duckdb(_strip_header(wide_sql))).limit(0).to_arrow_table()
                for name, _, _ in compiled.python_features:
                    empty = empty.append_column(internal_column(name), pa.nulls(0))
                parts = [empty]
        finally:
            reader.close()
        wide = pa.concat_tables(parts)
        con.register("wide", wide)
        try:
            return con.sql(projection).to_arrow_table()
        finally:
            con.unregister("wide")
    except duckdb.Error as exc:
        raise query_error(fsv, exc) from None
    finally:
        con.unregister(SOURCE_VIEW)


def _strip_header(sql: str) -> str:
    """The query without its leading ``--`` comment lines (they would swallow a wrapping CTE's text)."""
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def compute(con, fsv: FeatureSetVersion, *, settings: Settings, start: datetime | None = None,
            end: datetime | None = None, rows=None):
    """The features of ``fsv`` for every source event with event time in ``[start, end)``, as a pyarrow Table.

    ``rows``: the source already read (a pyarrow Table from ``read_range`` with at least this set's look-back),
    shared by the sets of one ``materialize_many`` over the same source and range; None reads the source.
    ``con`` is sealed (``seal``) once the source is registered, so it reads no other file afterwards:
    use a new connection for each computation.
    """
    if fsv.feature_set.source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has no source to compute from", field="source")
    compiled = compile_feature_set(fsv)
    source = fsv.feature_set.source
    relation = read_source(con, source, settings=settings) if rows is None else con.from_arrow(rows)
    relation = in_range(relation, source, start, end, compiled.lookback_seconds)
    keep = []
    if start is not None:
        keep.append(f"__fs_event_time >= {_timestamp_literal(start)}")  # the look-back rows only feed windows
    if end is not None:
        keep.append(f"__fs_event_time < {_timestamp_literal(end)}")
    seal(con)  # the source is registered: user SQL runs with no file access beyond it
    return run_compiled(con, fsv, compiled, relation, settings=settings, keep=" AND ".join(keep))


def in_range(relation, source: Source, start: datetime | None, end: datetime | None, lookback_seconds: int):
    """The source rows with event time in ``[start - lookback, end)`` (either bound optional)."""
    ts = source.event_timestamp_column
    conds = []
    if start is not None:
        earliest = to_utc_naive(start) - timedelta(seconds=lookback_seconds)
        conds.append(f"CAST({ident(ts)} AS TIMESTAMPTZ) >= {_timestamp_literal(earliest)}")
    if end is not None:
        conds.append(f"CAST({ident(ts)} AS TIMESTAMPTZ) < {_timestamp_literal(end)}")
    return relation.filter(" AND ".join(conds)) if conds else relation


def read_range(source: Source, *, settings: Settings, start: datetime | None, end: datetime | None,
               lookback_seconds: int = 0, threads: int = 0):
    """The source rows with event time in ``[start - lookback, end)`` read once into a pyarrow Table, for
    ``compute(rows=...)`` of several sets over that source (one scan instead of one per set)."""
    con = connect(threads)
    try:
        relation = in_range(read_source(con, source, settings=settings), source, start, end, lookback_seconds)
        seal(con)
        return relation.to_arrow_table()
    finally:
        con.close()


def earliest_event(source: Source, *, settings: Settings) -> datetime | None:
    """The earliest event time in a source (naive UTC), or None when it has no rows."""
    con = connect()
    try:
        relation = read_source(con, source, settings=settings)
        seal(con)
        column = ident(source.event_timestamp_column)
        value = relation.aggregate(f"min(CAST({column} AS TIMESTAMPTZ))").fetchall()[0][0]
    finally:
        con.close()
    return to_utc_naive(value) if value is not None else None


__all__ = ["connect", "allow_files", "seal", "ident", "to_duckdb", "unsupported", "open_source", "read_source", "run_compiled",
           "compute", "in_range", "read_range", "earliest_event"]


_THREAD = threading.local()


def thread_connection():
    """This thread's sealed connection for computations over Arrow rows given to it (pushes, stream batches): it
    never reads a file, and opening one costs ~25 ms, more than a push's computation. Callers register and
    unregister their own views, so one connection serves the thread's computations one after another."""
    con = getattr(_THREAD, "con", None)
    if con is None:
        con = connect(1)
        seal(con)
        _THREAD.con = con
    return con
