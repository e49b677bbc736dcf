"""``validate_version``: refuse, at apply time, a feature set version that cannot compute.

Static checks always run and never start Spark: the SQL policy (no file, table
or reflection access; functions from the allow-list), every expression parses and
translates, windows are recognised, the composite order exists (no cycle, no
missing feature), python functions import and are callable. Only when the set
has a source that can be read does it also analyse the compiled query on the
configured engine (Spark, or DuckDB with ``COMPUTE_ENGINE=duckdb``) against the
source's schema; the engine's own message is returned, naming the feature at
fault.
"""
from __future__ import annotations

import dataclasses

from fstore.compiler.dialect import quote
from fstore.definitions.model import FeatureSetVersion
from fstore.core.errors import InvalidDefinition, NotFound
from fstore.engine.python_stage import load_python


TIME_TEXT_SAMPLE = 20  # first non-null values of a text event time column read at apply time



def _analysis_message(exc: Exception) -> str:
    text = getattr(exc, "getMessage", None)
    message = text() if callable(text) else str(exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__


def _closure(fsv: FeatureSetVersion, name: str) -> FeatureSetVersion:
    """A version holding only ``name`` and the features it (transitively) depends on."""
    from fstore.compiler import _plan

    plan = _plan(fsv)
    deps = {f.name: set(f.source_features) for f, _ in plan.row + [x for lvl in plan.levels for x in lvl]}
    keep, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo.extend(deps.get(n, ()))
    return dataclasses.replace(fsv, features=tuple(f for f in fsv.features if f.name in keep))


def validate_version(store, fsv: FeatureSetVersion, *, allow_missing_source: bool = False) -> None:
    """Raise ``InvalidDefinition`` (naming the feature) if ``fsv`` cannot be computed, or if its SQL does
    what ``fstore.compiler.sql_policy`` refuses (checked first, before any engine sees it).

    A local source path that does not exist is refused (naming it): the SQL could not be checked.
    ``allow_missing_source`` accepts it unchecked; the set's first run that fails checks it then."""
    from fstore.compiler import compile_feature_set
    from fstore.compiler.sql_policy import check_feature_set
    from fstore.definitions.guard import check_python, check_source

    check_feature_set(fsv)
    settings = store.settings
    source = fsv.feature_set.source
    if source is not None:
        check_source(settings, source)  # before anything opens it
    compiled = compile_feature_set(fsv)
    for name, spec, _ in compiled.python_features:
        check_python(settings, spec, feature=name)  # every module checked before any is imported
    for name, spec, _ in compiled.python_features:
        load_python(spec, feature=name, settings=settings)
    if settings.compute_engine == "duckdb":
        _check_duckdb_regexes(fsv)
    if source is None or not fsv.features:
        return
    if source.is_stream:
        # Its columns are declared (source.schema): the keys are checked now; the SQL when a stream starts.
        _check_source_columns(fsv, list(source.schema))
        return
    from fstore.engine.sources import local_path_missing

    if local_path_missing(source):
        if allow_missing_source:
            return  # registered ahead of its data: checked when a run fails (materialize._explain_failure)
        raise InvalidDefinition(f"feature set {fsv.name}: source path {source.path} does not exist, so its SQL "
                                "cannot be checked; create it first, or allow it with --allow-missing-sources "
                                "(REST: ?allow_missing_sources=true)", field="source.path")
    analyse = _duckdb_analyser(settings, fsv) if settings.compute_engine == "duckdb" else _spark_analyser(store, fsv)
    if analyse is None:
        return  # not readable yet: the run will say so
    first_error = analyse(compiled)
    if first_error is None:
        return
    from fstore.compiler import _plan

    plan = _plan(fsv)
    ordered = [f for f, _ in plan.row] + [fsv.feature(n) for n in plan.windows] + [f for lvl in plan.levels for f, _ in lvl]
    for feature in ordered:
        closure = _closure(fsv, feature.name)
        error = analyse(compile_feature_set(closure))
        if error is None:
            continue
        if feature.window is not None and feature.window.filter:  # is it the filter, not the transformation?
            unfiltered = dataclasses.replace(feature, window=dataclasses.replace(feature.window, filter=None))
            features = tuple(unfiltered if f.name == feature.name else f for f in closure.features)
            if analyse(compile_feature_set(dataclasses.replace(closure, features=features))) is None:
                raise InvalidDefinition(f"feature {feature.name}: window_filter {feature.window.filter!r} does not "
                                        f"compile against the source: {error}", field="window_filter")
        raise InvalidDefinition(f"feature {feature.name} does not compile against the source: {error}",
                                field="transformation")
    raise InvalidDefinition(f"feature set {fsv.name} does not compile against the source: {first_error}",
                            field="features")


def _check_source_columns(fsv: FeatureSetVersion, columns: list[str]) -> None:
    """The columns the set names must be in the source: its created timestamp and each join key's
    (a mistyped entity name registers a key nobody has)."""
    from fstore.compiler.windows import source_key_columns

    created = fsv.feature_set.source.created_timestamp_column
    if created is not None and created not in columns:
        raise InvalidDefinition(f"feature set {fsv.name}: the source has no created timestamp column {created!r}; its "
                                f"columns are: {', '.join(columns)}", field="source.created_timestamp_column")
    missing = [c for c in source_key_columns(fsv) if c not in columns]
    if missing:
        raise InvalidDefinition(f"feature set {fsv.name}: the source has no column {', '.join(map(repr, missing))} for its "
                                f"entities' join keys (entities {', '.join(fsv.feature_set.entities)}); its columns are: "
                                f"{', '.join(columns)}", field="entities")


def _check_duckdb_regexes(fsv: FeatureSetVersion) -> None:
    """DuckDB validates with RE2, which lacks some of Python's and Java's syntax (look-behind, back-references)."""
    import duckdb

    patterns = [(f.name, f.validation.regex) for f in fsv.features if f.validation.regex is not None]
    if not patterns:
        return
    con = duckdb.connect()
    try:
        for name, pattern in patterns:
            try:
                con.execute("SELECT regexp_matches('', $1)", [pattern])
            except duckdb.Error as exc:
                raise InvalidDefinition(f"feature {name}: validation_rules.regex {pattern!r} does not compile on the DuckDB "
                                        f"engine (RE2): {str(exc).splitlines()[0]}", field="validation_rules.regex") from None
    finally:
        con.close()


def _check_time_text(column: str, sample: list[tuple[str, object]]) -> None:
    """Refuse a text event time column none of whose first values reads as a time: every row would be lost.

    The message never quotes a value: an apply-time error is no way to read a file's rows."""
    if sample and all(parsed is None for _, parsed in sample):
        raise InvalidDefinition(f"the source's event timestamp column {column!r} holds text that is not a time in "
                                f"each of its first {len(sample)} values; it must hold timestamps (ISO 8601 text, "
                                "such as 2026-01-31T12:00:00Z)", field="source.event_timestamp_column")


def _spark_analyser(store, fsv: FeatureSetVersion):
    """A function analysing a compiled query on Spark against the source's schema: None, or Spark's message."""
    from pyspark.errors import AnalysisException, PySparkException

    from fstore.engine.spark import read_source, run_compiled
    from fstore.core.errors import ComputeError

    spark = store.spark
    try:
        df = read_source(spark, fsv.feature_set.source, settings=store.settings)
    except NotFound:
        return None
    _check_source_columns(fsv, df.columns)
    ts = fsv.feature_set.source.event_timestamp_column
    if dict(df.dtypes)[ts] == "string":
        column = quote(ts)
        rows = df.where(f"{column} IS NOT NULL").selectExpr(f"{column} AS v", f"try_cast({column} AS TIMESTAMP) AS t") \
            .limit(TIME_TEXT_SAMPLE).collect()
        _check_time_text(ts, [(r.v, r.t) for r in rows])

    def analyse(compiled) -> str | None:
        try:
            run_compiled(spark, fsv, compiled, df, settings=store.settings).schema  # python features included (mapInPandas, not run)
            return None
        except ComputeError as exc:
            return exc.message.split(": ", 1)[-1]
        except (AnalysisException, PySparkException) as exc:
            return _analysis_message(exc)

    return analyse


def _duckdb_analyser(settings, fsv: FeatureSetVersion):
    """The same on the DuckDB engine: the query is bound against the source (no rows read); DuckDB's message."""
    from fstore.engine import duckdb as engine
    from fstore.core.errors import ComputeError

    if engine.unsupported(fsv.feature_set.source) is not None:
        return None  # a valid definition this engine cannot read: its runs say why, on this engine
    con = engine.connect()
    try:
        source = engine.read_source(con, fsv.feature_set.source, settings=settings)
    except NotFound:
        return None
    _check_source_columns(fsv, source.columns)
    ts = fsv.feature_set.source.event_timestamp_column
    if str(source.types[source.columns.index(ts)]) == "VARCHAR":
        column = engine.ident(ts)
        rows = source.filter(f"{column} IS NOT NULL").limit(TIME_TEXT_SAMPLE) \
            .project(f"{column} AS v, TRY_CAST({column} AS TIMESTAMPTZ) AS t").fetchall()
        _check_time_text(ts, rows)
    engine.seal(con)  # the compiled query is bound with no file access beyond the source

    def analyse(compiled) -> str | None:
        try:
            engine.run_compiled(con, fsv, compiled, source.limit(0), settings=settings)
            return None
        except ComputeError as exc:
            return exc.message.split(": ", 1)[-1]

    return analyse
