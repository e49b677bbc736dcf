"""The compiler: a ``FeatureSetVersion`` → one readable Spark SQL query.

The query reads a temp view of the source rows (``CompiledQuery.source_view``;
the engine registers it) and is built of CTE stages:

1. ``source_rows`` — the source with the event time as a TIMESTAMP (rows
   without one are dropped) and the created time (the source's
   ``created_timestamp_column``, else the event time, so that two runs of a
   range give identical rows);
2. ``row_features`` — every row feature (a Spark SQL expression over the
   source's columns; ``dialect: postgres`` is transpiled with sqlglot) and
   every windowed aggregation, per entity key, over ``(t - size, t]`` on the
   event time (see ``fstore.compiler.windows``);
3. ``composite_<n>`` — composite features over other features of the set, in
   dependency order, one stage per level;
4. the final select — join keys, ``event_timestamp``, ``created_timestamp`` and
   each feature CAST to its data type.

Python features (``module:function``) are listed in ``CompiledQuery.python_features``
and applied by the engine between the last stage and the final select, with
``mapInPandas`` on the executors, batch by batch. The function receives a pandas
DataFrame with the source's columns and every SQL feature (by its name; a
feature shadows a source column of the same name) and returns a Series of the
same length (or a DataFrame: the column named like the feature, else its first
column). Its module is shipped to the executors by value unless it is an
installed package. SQL features cannot read python features.

Time inside a transformation: ``current_date``, ``current_timestamp`` and
``now()`` mean the ROW'S EVENT TIME (``current_date`` is its date), never the
wall clock. ``EXTRACT(YEAR FROM AGE(current_date, date_of_birth))`` is therefore
the age at the event, and recomputing a past range gives the same answer; no
training row can see a value that depends on when the job ran.

Intermediate feature columns are named ``__f_<feature>`` so that a feature may
share its name with a source column; a composite's references to other features
are rewritten to those columns.

Building blocks for computing features at other times (historical retrieval at
label time): ``feature_expression(fsv, feature)`` and
``aggregate_expression(fsv, feature, event_flag=...)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fstore.compiler.dialect import column_names, quote, to_spark
from fstore.compiler.sql_policy import check_feature, check_feature_set
from fstore.compiler.windows import WindowSpec, source_key_columns, window_spec, window_sql
from fstore.definitions.model import Feature, FeatureSetVersion, composite_order
from fstore.core.errors import InvalidDefinition

EVENT_TIME = "__fs_event_time"
CREATED_TIME = "__fs_created_time"
RESERVED = ("event_timestamp", "created_timestamp", "event_date")
_SPARK_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "STRING", "bool": "BOOLEAN", "timestamp": "TIMESTAMP"}

__all__ = ["CompiledQuery", "compile_feature_set", "feature_expression", "aggregate_expression",
           "spark_type", "internal_column", "EVENT_TIME", "CREATED_TIME"]


def spark_type(data_type: str) -> str:
    """The Spark SQL type a feature's data type is cast to (``int`` → BIGINT, ``list<float>`` → ARRAY<DOUBLE>)."""
    if data_type.startswith("list<"):
        return f"ARRAY<{_SPARK_TYPES[data_type[5:-1]]}>"
    return _SPARK_TYPES[data_type]


def internal_column(feature: str) -> str:
    """The column a feature lives in between stages."""
    return f"__f_{feature}"


@dataclass(frozen=True, kw_only=True)
class CompiledQuery:
    """The compiled form of a feature set version."""

    sql: str
    source_view: str
    lookback_seconds: int
    key_columns: tuple[str, ...]
    feature_columns: tuple[str, ...]
    # The query up to (not including) the final select: source columns + internal feature columns.
    wide_sql: str = ""
    # The final select's expressions, applied to ``wide_sql``'s output after the python features.
    projection: tuple[str, ...] = ()
    # (feature name, "module:function", Spark type) for each python feature, in definition order.
    python_features: tuple[tuple[str, str, str], ...] = ()


def feature_dependencies(feature: Feature, names: set[str]) -> tuple[str, ...]:
    """Features a SQL feature reads: declared ``source_features``, plus other features it names."""
    deps = list(feature.source_features)
    if feature.transformation and not feature.python and feature.window is None:
        try:
            used = column_names(feature.transformation, feature.dialect, feature=feature.name)
        except InvalidDefinition:
            used = set()
        deps += sorted((used & names) - {feature.name} - set(deps))
    return tuple(deps)


def features_read(fsv: FeatureSetVersion, feature: Feature) -> set[str]:
    """The features of the set a composite reads (declared, or named in its expression)."""
    names = {f.name for f in fsv.features}
    deps = set(feature.source_features)
    if feature.transformation and not feature.python and feature.window is None:
        try:
            deps |= column_names(feature.transformation, feature.dialect, feature=feature.name) & names
        except InvalidDefinition:
            pass
    return deps - {feature.name}


def reads_only_features(fsv: FeatureSetVersion, feature: Feature) -> bool:
    """Whether an expression reads nothing but other features of its set (so it can run at label time)."""
    if not feature.transformation:
        return False
    try:
        used = column_names(feature.transformation, feature.dialect, feature=feature.name)
    except InvalidDefinition:
        return False
    return used <= {f.name for f in fsv.features} - {feature.name}


@dataclass(frozen=True)
class _Plan:
    row: list[tuple[Feature, str]]           # (feature, Spark SQL) in the row_features stage
    levels: list[list[tuple[Feature, str]]]  # composite stages
    windows: dict[str, WindowSpec]
    python: list[Feature]


def _plan(fsv: FeatureSetVersion) -> _Plan:
    names = {f.name for f in fsv.features}
    keys = set(fsv.join_keys)
    for f in fsv.features:
        if f.name in RESERVED or f.name in keys or f.name.startswith("__"):
            raise InvalidDefinition(f"feature {f.name}: the name is taken by a column every feature set has "
                                    f"({', '.join(RESERVED + tuple(sorted(keys)))})", field="name")
    windows: dict[str, WindowSpec] = {}
    for f in fsv.features:
        spec = window_spec(fsv, f, event_time=EVENT_TIME)
        if spec is not None:
            windows[f.name] = spec
    with_deps = [f if f.name in windows or f.python else dataclasses.replace(f, source_features=feature_dependencies(f, names))
                 for f in fsv.features]
    ordered = composite_order(with_deps)
    python_names = {f.name for f in fsv.features if f.python}
    level: dict[str, int] = {}
    row: list[tuple[Feature, str]] = []
    levels: list[list[tuple[Feature, str]]] = []
    for f in ordered:
        if f.python:
            continue
        if f.name in windows or not f.source_features:
            level[f.name] = 0
            if f.name not in windows:
                row.append((f, to_spark(f.transformation or "NULL", f.dialect, event_time=EVENT_TIME, feature=f.name)))
            continue
        bad = [d for d in f.source_features if d in python_names]
        if bad:
            raise InvalidDefinition(f"feature {f.name} depends on python feature(s) {', '.join(bad)}; python features are "
                                    "computed after every SQL feature, so SQL features cannot read them", field="source_features")
        if not f.transformation:
            raise InvalidDefinition(f"feature {f.name} has source_features but no transformation combining them",
                                    field="transformation")
        n = 1 + max(level[d] for d in f.source_features)
        level[f.name] = n
        rename = {d: internal_column(d) for d in names if d not in python_names}
        ints = frozenset(d for d in f.source_features if fsv.feature(d).data_type == "int")
        sql = to_spark(f.transformation, f.dialect, event_time=EVENT_TIME, feature=f.name, rename=rename, int_columns=ints)
        while len(levels) < n:
            levels.append([])
        levels[n - 1].append((f, sql))
    return _Plan(row=row, levels=levels, windows=windows, python=[f for f in fsv.features if f.python])


def _source_view(fsv: FeatureSetVersion) -> str:
    return f"fstore_source_{fsv.name}_v{fsv.version}"


def compile_feature_set(fsv: FeatureSetVersion) -> CompiledQuery:
    """One Spark SQL query (CTE stages) computing every feature of ``fsv`` at every source event.

    The SQL policy (``fstore.compiler.sql_policy``) runs first, whatever the caller: every engine
    compiles before it computes, so a definition stored before the policy existed cannot run.
    """
    check_feature_set(fsv)
    plan = _plan(fsv)
    source = fsv.feature_set.source
    ts_col = source.event_timestamp_column if source else "event_timestamp"
    created = source.created_timestamp_column if source else None
    keys = fsv.join_keys
    view = _source_view(fsv)
    renames = [f"{quote(s)} AS {quote(k)}" for s, k in zip(source_key_columns(fsv), keys) if s != k]
    source_select = ", ".join(["*"] + renames + [
        f"CAST({quote(ts_col)} AS TIMESTAMP) AS {EVENT_TIME}",
        f"CAST({quote(created) if created else quote(ts_col)} AS TIMESTAMP) AS {CREATED_TIME}",
    ])
    stages = [f"source_rows AS (\n  SELECT {source_select}\n  FROM {quote(view)}\n  WHERE {quote(ts_col)} IS NOT NULL\n)"]
    items = [f"{sql} AS {quote(internal_column(f.name))}" for f, sql in plan.row]
    items += [f"{window_sql(spec, keys=keys, timestamp=EVENT_TIME)} AS {quote(internal_column(name))}"
              for name, spec in plan.windows.items()]
    stages.append("row_features AS (\n  SELECT *" + "".join(f",\n    {i}" for i in items) + "\n  FROM source_rows\n)")
    previous = "row_features"
    for n, group in enumerate(plan.levels, start=1):
        body = "".join(f",\n    {sql} AS {quote(internal_column(f.name))}" for f, sql in group)
        stages.append(f"composite_{n} AS (\n  SELECT *{body}\n  FROM {previous}\n)")
        previous = f"composite_{n}"
    projection = tuple([quote(k) for k in keys]
                       + [f"{EVENT_TIME} AS event_timestamp", f"{CREATED_TIME} AS created_timestamp"]
                       + [f"CAST({quote(internal_column(f.name))} AS {spark_type(f.data_type)}) AS {quote(f.name)}"
                          for f in fsv.features])
    header = (f"-- feature set {fsv.name} v{fsv.version}: one row per source event; windows cover (t - size, t] "
              f"of the event time; current_date/now() mean the row's event time\n")
    wide_sql = header + "WITH " + ",\n".join(stages) + f"\nSELECT * FROM {previous}"
    python = tuple((f.name, f.python, spark_type(f.data_type)) for f in plan.python)
    note = "".join(f"-- python feature {name} = {fn}(...) is applied here by the engine (mapInPandas)\n"
                   for name, fn, _ in python)
    sql = header + "WITH " + ",\n".join(stages) + "\n" + note + "SELECT " + ",\n  ".join(projection) + f"\nFROM {previous}"
    return CompiledQuery(
        sql=sql, source_view=view,
        lookback_seconds=max((s.size_seconds for s in plan.windows.values()), default=0),
        key_columns=keys, feature_columns=tuple(f.name for f in fsv.features),
        wide_sql=wide_sql, projection=projection, python_features=python,
    )


def feature_expression(fsv: FeatureSetVersion, feature: str | Feature, *, timestamp: str = "event_timestamp") -> str:
    """A row or composite feature's Spark SQL (after dialect translation), uncast.

    ``current_date``/``now()`` read column ``timestamp``; a composite's references to other features
    stay plain feature names, so the caller evaluates it where those are columns.
    """
    f = fsv.feature(feature) if isinstance(feature, str) else feature
    if f.python:
        raise InvalidDefinition(f"feature {f.name} is a python feature and has no SQL expression", field="python")
    check_feature(f)
    if window_spec(fsv, f, event_time=timestamp) is not None:
        raise InvalidDefinition(f"feature {f.name} is a window aggregate; use aggregate_expression", field="transformation")
    return to_spark(f.transformation or "NULL", f.dialect, event_time=timestamp, feature=f.name)


def aggregate_expression(fsv: FeatureSetVersion, feature: str | Feature, *, event_flag: str,
                         timestamp: str = "event_timestamp") -> str:
    """A window feature's aggregate over ``(t - size, t]``, ignoring rows whose ``event_flag`` column is false.

    The caller's frame needs the join key columns, the TIMESTAMP column ``timestamp`` (event time
    for event rows, label time for label rows) and the source columns the aggregate reads (null on
    label rows). Same semantics as the materialized value.
    """
    f = fsv.feature(feature) if isinstance(feature, str) else feature
    check_feature(f)
    spec = window_spec(fsv, f, event_time=timestamp)
    if spec is None:
        raise InvalidDefinition(f"feature {f.name} is not a window aggregate", field="window_size")
    return window_sql(spec, keys=fsv.join_keys, timestamp=timestamp, event_flag=event_flag)

