"""Historical retrieval: entity rows with timestamps → point-in-time-correct features (Spark or DuckDB).

Which value each kind of feature takes, for an entity row with keys ``k`` and
timestamp ``t`` (UTC):

* **Row, composite and python features** come from the feature set's offline
  store (as it was at ``as_of`` when given): the row of key ``k`` with the
  greatest ``event_timestamp <= t``, ties on event time broken by the greatest
  ``created_timestamp``. Its value is taken as it is, NULL included (an older
  non-null value never shows through). No row at or before ``t`` → NULL. A row
  older than the set's TTL (``event_timestamp < t - ttl``; an age of exactly the
  TTL is still valid) → NULL. Nothing after ``t`` is ever visible.
* **Windowed features** are the window evaluated *at* ``t``: the aggregate over
  the source events of key ``k`` with event time in ``(t - size, t]``, read
  from the set's source (not the offline store, which only holds values at
  event times). The TTL does not apply: the window already ages events out.
  An empty window gives 0 for counts and NULL otherwise, like materialization.
* **Composite features that depend (directly or not) on a windowed feature**
  are recomputed at ``t`` from the exact window values and the point-in-time
  values of their other inputs, then cast to the feature's type. A composite
  whose expression also reads raw source columns cannot be evaluated without a
  source row, so it keeps its point-in-time offline value (as a row feature).
  Python features always come from the offline store.

Output: every entity row, in the original order, duplicates kept, with every
column of the entity frame (its timestamp column normalized to UTC), followed
by one column per requested feature, named as requested: a bare name stays
bare (``txn_count_30d``), a name given with its set (``transactions:txn_count_30d``
or ``transactions@3:txn_count_30d``) becomes ``transactions__txn_count_30d``,
so one call can ask the same feature name of two sets.

Plan on Spark: one union + running-window shuffle for the point-in-time join
of every set sharing the same join keys (``fstore.retrieval.pit.as_of_join_many``:
ten sets of a hundred features are one pass, not ten chained ones), and, per set
with windowed features, one more for the windows (``fstore.retrieval.windows``),
joined back on the row number. Entity columns ride along in one struct.

With ``COMPUTE_ENGINE=duckdb`` the same contract and plan run in this process
(``fstore.retrieval.historical_duckdb``): no Spark session is started, and the
result holds an Arrow table (``to_spark`` builds a DataFrame only when asked).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from fstore.compiler.dialect import quote
from fstore.errors import InvalidDefinition, NotFound
from fstore.references import FeatureGroup
from fstore.retrieval.entities import ROW, TS, Entities, check_keys

if TYPE_CHECKING:
    from fstore.definitions import Feature, FeatureSetVersion
    from fstore.store import FeatureStore

LABEL = "__fs_label"
# Up to this many entity rows, their keys are broadcast to drop other keys' feature rows before the shuffle.
BROADCAST_MAX_ROWS = 2_000_000


def output_name(written: str) -> str:
    """The column a requested feature is answered under (see the module docstring)."""
    if ":" not in written:
        return written
    set_part, name = written.split(":", 1)
    return f"{set_part.split('@', 1)[0]}__{name}"


@dataclass
class RetrievalResult:
    """The features of each entity row: a Spark plan computed when asked for, or (DuckDB) an Arrow table."""

    spark_df: Any  # Spark engine: unordered, with the row number column; None when ``arrow`` holds the rows
    columns: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    arrow: Any = None  # DuckDB engine: a pyarrow Table of ``columns``, in the entity frame's order
    spark_session: Callable[[], Any] | None = None  # where ``to_spark`` turns ``arrow`` into a DataFrame

    def to_spark(self, spark=None):
        """A Spark DataFrame of the rows in the entity frame's order (in ``spark``, default the store's session)."""
        if self.arrow is not None:
            return _arrow_to_spark(spark or self.spark_session(), self.arrow)
        return self.spark_df.orderBy(ROW).selectExpr(*[quote(c) for c in self.columns])

    def to_df(self):
        """A pandas DataFrame of the rows in the entity frame's order (index 0..n-1)."""
        if self.arrow is not None:
            return arrow_to_pandas(self.arrow)
        frame = self.spark_df.selectExpr(ROW, *[quote(c) for c in self.columns]).toPandas()
        frame = frame.sort_values(ROW, kind="stable").reset_index(drop=True)
        return frame.drop(columns=[ROW])


def arrow_to_pandas(table):
    """An Arrow result as Spark's ``toPandas`` gives it: timestamps naive UTC ``datetime64[ns]``, maps as dicts,
    nulls as Spark's."""
    import pandas as pd
    import pyarrow as pa

    frame = table.to_pandas(maps_as_pydicts="strict")
    for name, arrow_type in zip(table.column_names, table.schema.types):
        if pa.types.is_timestamp(arrow_type):
            values = frame[name]
            if isinstance(values.dtype, pd.DatetimeTZDtype):
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            frame[name] = values.astype("datetime64[ns]")
    return frame


def utc_timestamps(table):
    """``table`` with every naive timestamp column marked UTC (what it means), as Spark writes timestamps."""
    import pyarrow as pa

    for i, arrow_type in enumerate(table.schema.types):
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is None:
            table = table.set_column(i, table.schema.field(i).name,
                                     table.column(i).cast(pa.timestamp(arrow_type.unit, tz="UTC")))
    return table


def _arrow_to_spark(spark, table):
    return spark.createDataFrame(utc_timestamps(table))


def _text(value: str) -> str:
    """A Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def normalize_as_of(as_of: Any, set_names: list[str]) -> int | datetime | None:
    """``as_of`` as a Delta version (one set only) or a naive UTC timestamp."""
    from fstore.engine.spark import to_utc_naive

    if as_of is None or as_of == "":
        return None
    if isinstance(as_of, bool):
        raise InvalidDefinition("as_of must be a Delta version or a timestamp", field="as_of")
    if isinstance(as_of, str) and as_of.strip().isascii() and as_of.strip().isdigit():
        as_of = int(as_of.strip())
    if isinstance(as_of, int):
        if as_of < 0:
            raise InvalidDefinition("as_of version must be >= 0", field="as_of")
        if len(set(set_names)) != 1:
            raise InvalidDefinition(f"as_of as a Delta version applies to one feature set; this request reads "
                                    f"{', '.join(sorted(set(set_names)))}: give a timestamp instead", field="as_of")
        return as_of
    if isinstance(as_of, (str, datetime)):
        try:
            return to_utc_naive(as_of)
        except InvalidDefinition:
            raise InvalidDefinition(f"as_of {as_of!r} is neither a Delta version nor an ISO 8601 timestamp",
                                    field="as_of") from None
    raise InvalidDefinition("as_of must be a Delta version or a timestamp", field="as_of")


def _dependencies(fsv: "FeatureSetVersion", feature: "Feature") -> set[str]:
    """The features of the set a composite reads (declared, or named in its expression)."""
    from fstore.compiler.dialect import column_names

    names = {f.name for f in fsv.features}
    deps = set(feature.source_features)
    if feature.transformation and not feature.python and feature.window is None:
        try:
            deps |= column_names(feature.transformation, feature.dialect, feature=feature.name) & names
        except InvalidDefinition:
            pass
    return deps - {feature.name}


def _reads_only_features(fsv: "FeatureSetVersion", feature: "Feature") -> bool:
    """Whether an expression reads nothing but other features of its set (so it can run at label time)."""
    from fstore.compiler.dialect import column_names

    if not feature.transformation:
        return False
    try:
        used = column_names(feature.transformation, feature.dialect, feature=feature.name)
    except InvalidDefinition:
        return False
    return used <= {f.name for f in fsv.features} - {feature.name}


@dataclass(frozen=True)
class _SetPlan:
    """How each feature of one set is computed at label time."""

    windows: dict[str, Any]        # name -> WindowSpec
    recompute: list[str]           # composites over windows, in dependency order
    offline: list[str]             # read point-in-time from the offline store


def plan_set(fsv: "FeatureSetVersion", wanted: tuple[str, ...]) -> _SetPlan:
    """Split the wanted features (and what their recomputation needs) into the three kinds.

    The set's SQL passes the policy first (``fstore.compiler.sql_policy``): a retrieval recomputes
    windows and composites from the stored definitions, which must not run refused SQL either.
    """
    from fstore.compiler.sql_policy import check_feature_set
    from fstore.compiler.windows import window_spec

    check_feature_set(fsv)
    specs = {f.name: window_spec(fsv, f, event_time=TS) for f in fsv.features}
    windowed = {n for n, s in specs.items() if s is not None}
    deps = {f.name: _dependencies(fsv, f) for f in fsv.features}
    over_windows: dict[str, bool] = {}

    def depends_on_window(name: str, seen: frozenset = frozenset()) -> bool:
        if name not in over_windows:
            feature = fsv.feature(name)
            if name in windowed:
                over_windows[name] = True
            elif feature.python or name in seen or not _reads_only_features(fsv, feature):
                # A composite that also reads source columns has no source row at label time:
                # it keeps its point-in-time value from the offline store.
                over_windows[name] = False
            else:
                over_windows[name] = any(depends_on_window(d, seen | {name}) for d in deps[name])
        return over_windows[name]

    needed: set[str] = set()

    def need(name: str) -> None:
        if name in needed:
            return
        needed.add(name)
        if name not in windowed and depends_on_window(name):
            for d in deps[name]:
                need(d)

    for name in wanted:
        need(name)
    recompute = {n for n in needed if n not in windowed and depends_on_window(n)}
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in recompute:
            return
        for d in sorted(deps[name]):
            visit(d)
        ordered.append(name)

    for f in fsv.features:
        visit(f.name)
    return _SetPlan(windows={f.name: specs[f.name] for f in fsv.features if f.name in needed and f.name in windowed},
                    recompute=ordered,
                    offline=[f.name for f in fsv.features if f.name in needed and f.name not in windowed
                             and f.name not in recompute])


def offline_hint(fsv: "FeatureSetVersion", as_of: Any) -> str:
    """Why a set may have no offline data to read, for the error saying so."""
    if not fsv.feature_set.offline_enabled:
        return "its offline_enabled is false, so its runs keep no offline data: enable it, then materialize"
    return "materialize it first" + ("; or the as_of is before its first version" if as_of is not None else "")


def _offline_rows(store: "FeatureStore", fsv: "FeatureSetVersion", names: list[str], as_of: int | datetime | None,
                  entities: Entities, *, time_bounds: bool):
    """The set's offline rows, the Delta version read, the created time column, and the condition
    keeping only the rows some entity row can see.

    The condition always prunes the days no entity row can see. ``time_bounds`` adds the entity rows'
    first and last times as literals; without it the caller bounds each key's rows itself (the broadcast
    semi join of ``as_of_join``). Spark's generated code holds literals, so a condition on them compiles
    new code for every entity frame (0.25 s of a 100,000-row retrieval, measured), while a day filter
    only prunes files and compiles nothing."""
    from fstore import offline
    from fstore.engine.spark import ts_literal

    try:
        rows, version = offline.read_table_version(store.spark, store.settings, fsv.name, as_of=as_of)
    except NotFound as exc:
        raise NotFound(f"feature set {fsv.name} has no offline data to retrieve from ({offline_hint(fsv, as_of)}): "
                       f"{exc.message}", field=exc.field or "features") from None
    missing = [n for n in names if n not in rows.columns]
    if missing:
        raise InvalidDefinition(f"the offline store of feature set {fsv.name} has no column for {', '.join(missing)}; "
                                f"materialize version {fsv.version} of the set first", field="features")
    # Only rows some entity row can see: at or before the last label, not older than TTL before the first.
    lower = entities.min_ts - timedelta(seconds=fsv.ttl_seconds) if fsv.ttl_seconds else None
    conditions = []
    if time_bounds:
        conditions.append(f"event_timestamp <= {ts_literal(entities.max_ts)}")
        if lower is not None:
            conditions.append(f"event_timestamp >= {ts_literal(lower)}")
    columns = rows.columns
    if "event_date" in columns:  # partition pruning
        conditions.append(f"event_date <= DATE'{entities.max_ts.date().isoformat()}'")
        if lower is not None:
            conditions.append(f"event_date >= DATE'{lower.date().isoformat()}'")
    created = "created_timestamp" if "created_timestamp" in columns else None
    return rows, version, created, " AND ".join(conditions)


def pinned_read(store: "FeatureStore", fsv: "FeatureSetVersion", as_of: int | datetime | None,
                version: int | None) -> dict[str, Any] | None:
    """For a retrieval ``as_of`` an offline version: what of the source the run that wrote that version read
    (``fstore.source_read``), so windows at label time see the events that version saw, not today's."""
    if as_of is None:
        return None
    from fstore import offline
    from fstore.registry import runs

    if version is None:
        try:
            version = offline.delta_table(store.settings, fsv.name, as_of).version()
        except Exception:  # noqa: BLE001 - no table at that time: nothing recorded to pin to
            return None
    with store.transaction() as s:
        return runs.source_read_at(s, runs.feature_set_row(s, fsv.name).id, int(version))


def _source_events(store: "FeatureStore", fsv: "FeatureSetVersion", longest: int, entities: Entities,
                   source: Any = None, snapshot: dict[str, Any] | None = None):
    """The source rows whose events fall in some label row's window, keyed by the set's join keys
    (``source``: the pinned copy a training set reads instead of the set's source)."""
    from pyspark.sql import functions as F

    from fstore.compiler.windows import source_key_columns
    from fstore.engine.spark import read_source

    from fstore.retrieval.pinned import reading_settings

    settings = reading_settings(store.settings) if source is not None else store.settings
    source = source or fsv.feature_set.source
    if source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has windowed features but no source to compute them from",
                                field="features")
    if snapshot is not None:
        from fstore.source_read import read_pinned_spark

        events = read_pinned_spark(store.spark, source, snapshot, f"the run of {fsv.name}'s offline version read",
                                   settings=settings)
    else:
        events = read_source(store.spark, source, settings=settings, start=entities.min_ts,
                             end=entities.max_ts + timedelta(microseconds=1), lookback_seconds=longest)
    for src, key in zip(source_key_columns(fsv), fsv.join_keys):
        if src not in events.columns:
            raise InvalidDefinition(f"the source of feature set {fsv.name} has no key column {src}", field="source")
        if src != key:
            events = events.withColumn(key, F.col(src))
    return events, source.event_timestamp_column


def output_columns(entities: Entities, groups: list[FeatureGroup]) -> list[tuple[str, str]]:
    """``(internal column, output name)`` per requested feature, after checking keys and names (both engines)."""
    outputs: list[tuple[str, str]] = []
    for group in groups:
        check_keys(entities, group.version.join_keys, group.version.name)
    for group in groups:
        for written in group.output_names:
            out = output_name(written)
            if out in entities.columns:
                raise InvalidDefinition(f"feature {written} would be answered as column {out}, which the entity_df "
                                        "already has; rename that column", field="features")
            if out in [o for _, o in outputs]:
                raise InvalidDefinition(f"two requested features would both be answered as column {out}", field="features")
            outputs.append((f"__fs_o{len(outputs)}", out))
    return outputs


def set_meta(group: FeatureGroup, plan: _SetPlan, version: int | None, as_of: int | datetime | None) -> dict[str, Any]:
    """What a retrieval records of one feature set (``meta["feature_sets"]``, training sets)."""
    fsv = group.version
    return {
        "feature_set": fsv.name, "version": fsv.version, "features": list(group.features),
        "output_names": list(group.output_names),
        "feature_versions": {n: fsv.feature_versions.get(n) for n in group.features},
        "offline_version": version,
        "as_of": as_of.isoformat() + "Z" if isinstance(as_of, datetime) else None,
        "exact_windows": sorted(plan.windows), "recomputed": plan.recompute,
    }


def retrieve(store: "FeatureStore", entities: Entities, groups: list[FeatureGroup],
             as_of: dict[str, int | datetime | None], sources: dict[str, Any] | None = None) -> RetrievalResult:
    """Compute the features of ``groups`` for the prepared entity rows (see the module docstring).

    ``sources``: per feature set, the pinned copy of its events to compute windows from
    (``fstore.retrieval.pinned``) instead of its live source.

    The plan's size grows with the number of features, not with their square: every set's offline
    features join in one as-of pass per join-key tuple (``pit.as_of_join_many``), and each set with
    exact windows adds one window pass over the bare label rows, joined back on the row number."""
    from fstore.retrieval.pit import Side, as_of_join_many

    outputs = output_columns(entities, groups)
    label = ", ".join(f"{_text(c)}, {quote(c)}" for c in entities.columns)
    base = entities.df.selectExpr(ROW, TS, f"named_struct({label}) AS {LABEL}")
    plans = [plan_set(group.version, group.features) for group in groups]
    column: dict[tuple[int, str], str] = {}  # (group index, feature name) -> its column in ``frame``

    def name_of(i: int, feature: str) -> str:
        return column.setdefault((i, feature), f"__fs_s{i}_{len(column)}")

    broadcast = entities.count <= BROADCAST_MAX_ROWS
    versions: dict[int, int | None] = {}
    passes: dict[tuple[str, ...], list[Side]] = {}
    for i, (group, plan) in enumerate(zip(groups, plans)):
        fsv = group.version
        versions[i] = None
        if plan.offline:
            rows, versions[i], created, visible = _offline_rows(store, fsv, plan.offline, as_of.get(fsv.name),
                                                                entities, time_bounds=not broadcast)
            passes.setdefault(tuple(fsv.join_keys), []).append(
                Side(rows=rows, features=[(n, name_of(i, n)) for n in plan.offline], ttl_seconds=fsv.ttl_seconds,
                     created_ts=created, where=visible))
    frame = base
    for n, (keys, sides) in enumerate(passes.items()):
        # The first pass carries the entity columns through; a pass over other keys is joined on the row number.
        labels = base.selectExpr(ROW, TS, *([LABEL] if n == 0 else []),
                                 *[f"{LABEL}.{quote(k)} AS {quote(k)}" for k in keys])
        joined = as_of_join_many(labels, sides, keys=keys, ts=TS, broadcast_keys=broadcast)
        found = [out for side in sides for _, out in side.features]
        frame = joined.select(ROW, TS, LABEL, *found) if n == 0 else frame.join(joined.select(ROW, *found), ROW)
    for i, (group, plan) in enumerate(zip(groups, plans)):
        if plan.windows:
            frame = frame.join(_windows_at_labels(store, base, group.version, plan, entities, as_of.get(group.version.name),
                                                  versions[i], (sources or {}).get(group.version.name), name_of, i), ROW)
        if plan.recompute:
            frame = _recompute(frame, group.version, plan, {n: c for (j, n), c in column.items() if j == i}, name_of, i)
    answers, position = [], 0
    for i, group in enumerate(groups):
        mine = outputs[position:position + len(group.features)]
        position += len(group.features)
        answers += [f"{quote(name_of(i, feature))} AS {quote(out)}" for feature, (_, out) in zip(group.features, mine)]
    result = frame.selectExpr(ROW, *[f"{LABEL}.{quote(c)} AS {quote(c)}" for c in entities.columns], *answers)
    sets = [set_meta(group, plan, versions[i], as_of.get(group.version.name))
            for i, (group, plan) in enumerate(zip(groups, plans))]
    return RetrievalResult(spark_df=result, columns=tuple(entities.columns) + tuple(o for _, o in outputs),
                           meta={"feature_sets": sets, "entity_count": entities.count,
                                 "timestamp_column": entities.timestamp_column})


def _windows_at_labels(store: "FeatureStore", base, fsv: "FeatureSetVersion", plan: _SetPlan, entities: Entities,
                       set_as_of: int | datetime | None, version: int | None, pinned_source: Any,
                       name_of: Callable[[int, str], str], i: int):
    """``(row number, each exact window of the set at the row's time)``, cast to the features' types."""
    from fstore.compiler import spark_type
    from fstore.retrieval.windows import exact_windows

    keys = fsv.join_keys
    longest = max(spec.size_seconds for spec in plan.windows.values())
    snapshot = pinned_read(store, fsv, set_as_of, version) if pinned_source is None else None
    events, event_ts = _source_events(store, fsv, longest, entities, pinned_source, snapshot)
    labels = base.selectExpr(ROW, TS, *[f"{LABEL}.{quote(k)} AS {quote(k)}" for k in keys])
    windows = exact_windows(labels, events, keys=keys, ts=TS, event_ts=event_ts,
                            windows=[(spec, n) for n, spec in plan.windows.items()],
                            lo=entities.min_ts, hi=entities.max_ts)
    return windows.selectExpr(ROW, *[f"CAST({quote(n)} AS {spark_type(fsv.feature(n).data_type)}) AS "
                                     f"{quote(name_of(i, n))}" for n in plan.windows])


def _recompute(frame, fsv: "FeatureSetVersion", plan: _SetPlan, columns: dict[str, str],
               name_of: Callable[[int, str], str], i: int):
    """``frame`` plus the set's composites over windows, evaluated at the label time from the set's values
    (``columns``: feature name -> column of ``frame``), in dependency order."""
    from fstore.compiler import feature_expression, spark_type

    kept = list(frame.columns)
    scope = frame.selectExpr("*", *[f"{quote(c)} AS {quote(n)}" for n, c in columns.items()])
    for name in plan.recompute:  # a composite's name is none of ``columns`` (those are offline or windowed)
        expression = feature_expression(fsv, name, timestamp=TS)
        scope = scope.selectExpr("*", f"CAST(({expression}) AS {spark_type(fsv.feature(name).data_type)}) AS {quote(name)}")
    return scope.selectExpr(*[quote(c) for c in kept], *[f"{quote(n)} AS {quote(name_of(i, n))}" for n in plan.recompute])


def get_historical_features(store: "FeatureStore", *, entity_df: Any, features: list[str],
                            feature_sets: list[str] | None = None, as_of: int | str | datetime | None = None,
                            timestamp_column: str | None = None, save_as: str | None = None,
                            actor: str = "") -> RetrievalResult:
    """Point-in-time-correct features for each row of ``entity_df`` (see the module docstring).

    ``as_of`` reads the offline store as it was (a Delta version when one set is
    asked, or a timestamp for all). ``save_as`` records the retrieval as a
    training set (written under ``<data_root>/training_sets/<name>/``).
    """
    from fstore.references import resolve
    from fstore.retrieval.entities import key_types, prepare_entities

    groups = resolve(store, features, feature_sets)
    keys = key_types(g.version for g in groups)
    pinned = normalize_as_of(as_of, [g.version.name for g in groups])
    if save_as is not None:
        from fstore.registry.training_sets import check_new_name

        with store.transaction() as s:
            check_new_name(s, save_as)
    pins = {g.version.name: pinned for g in groups}
    if store.settings.compute_engine == "duckdb":
        from fstore.retrieval import historical_duckdb
        from fstore.retrieval.entities import prepare_local

        entities = prepare_local(entity_df, timestamp_column, max_rows=store.settings.max_historical_rows, keys=keys)
        run = historical_duckdb.retrieve
    else:
        entities = prepare_entities(store.spark, entity_df, timestamp_column,
                                    max_rows=store.settings.max_historical_rows, keys=keys)
        run = retrieve
    if save_as is None:
        return run(store, entities, groups, pins)
    from fstore.retrieval.training import saving

    # A saved set computes its windows from a pinned copy of the events, now and on every re-creation.
    with saving(store, save_as, entities, groups, actor=actor) as (sources, save):
        result = run(store, entities, groups, pins, sources)
        save(result, features=features, feature_sets=feature_sets, as_of=pinned, entity_source=_describe(entity_df))
    return result


def _describe(entity_df: Any) -> dict[str, Any]:
    """Where the entity rows came from, as far as a DataFrame tells."""
    import pandas as pd

    if isinstance(entity_df, pd.DataFrame):
        return {"kind": "pandas", "columns": [str(c) for c in entity_df.columns]}
    return {"kind": "spark", "columns": list(entity_df.columns)}
