"""Historical retrieval on Spark: ``retrieve`` answers the resolved feature sets for prepared entity rows.

The contract (which value each kind of feature takes) is in ``fstore.serving.retrieval.request``;
the per-set plan in ``fstore.serving.retrieval.plan``. One union + running-window shuffle for the
point-in-time join of every set sharing the same join keys (``pit.as_of_join_many``: ten sets of a
hundred features are one pass, not ten chained ones), and, per set with windowed features, one more
for the windows (``fstore.serving.retrieval.windows``), joined back on the row number. Entity columns
ride along in one struct.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from fstore.compiler.dialect import quote
from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.references import FeatureGroup
from fstore.serving.retrieval.entities import ROW, TS, Entities
from fstore.serving.retrieval.plan import (RetrievalResult, offline_hint, output_columns, pinned_read, plan_set,
                                           set_meta)

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.context import StoreContext
    from fstore.serving.retrieval.plan import _SetPlan

LABEL = "__fs_label"
# Up to this many entity rows, their keys are broadcast to drop other keys' feature rows before the shuffle.
BROADCAST_MAX_ROWS = 2_000_000


def _text(value: str) -> str:
    """A Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _offline_rows(store: "StoreContext", fsv: "FeatureSetVersion", names: list[str], as_of: int | datetime | None,
                  entities: Entities, *, time_bounds: bool):
    """The set's offline rows, the Delta version read, the created time column, and the condition
    keeping only the rows some entity row can see.

    The condition always prunes the days no entity row can see. ``time_bounds`` adds the entity rows'
    first and last times as literals; without it the caller bounds each key's rows itself (the broadcast
    semi join of ``as_of_join``). Spark's generated code holds literals, so a condition on them compiles
    new code for every entity frame (0.25 s of a 100,000-row retrieval, measured), while a day filter
    only prunes files and compiles nothing."""
    from fstore.storage import offline
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


def _source_events(store: "StoreContext", fsv: "FeatureSetVersion", longest: int, entities: Entities,
                   source: Any = None, snapshot: dict[str, Any] | None = None):
    """The source rows whose events fall in some label row's window, keyed by the set's join keys
    (``source``: the pinned copy a training set reads instead of the set's source)."""
    from pyspark.sql import functions as F

    from fstore.compiler.windows import source_key_columns
    from fstore.engine.spark import read_source

    from fstore.serving.retrieval.pinned import reading_settings

    settings = reading_settings(store.settings) if source is not None else store.settings
    source = source or fsv.feature_set.source
    if source is None:
        raise InvalidDefinition(f"feature set {fsv.name} has windowed features but no source to compute them from",
                                field="features")
    if snapshot is not None:
        from fstore.compute.source_read import read_pinned_spark

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


def retrieve(store: "StoreContext", entities: Entities, groups: list[FeatureGroup],
             as_of: dict[str, int | datetime | None], sources: dict[str, Any] | None = None) -> RetrievalResult:
    """Compute the features of ``groups`` for the prepared entity rows (see the module docstring).

    ``sources``: per feature set, the pinned copy of its events to compute windows from
    (``fstore.retrieval.pinned``) instead of its live source.

    The plan's size grows with the number of features, not with their square: every set's offline
    features join in one as-of pass per join-key tuple (``pit.as_of_join_many``), and each set with
    exact windows adds one window pass over the bare label rows, joined back on the row number."""
    from fstore.serving.retrieval.pit import Side, as_of_join_many

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


def _windows_at_labels(store: "StoreContext", base, fsv: "FeatureSetVersion", plan: "_SetPlan", entities: Entities,
                       set_as_of: int | datetime | None, version: int | None, pinned_source: Any,
                       name_of: Callable[[int, str], str], i: int):
    """``(row number, each exact window of the set at the row's time)``, cast to the features' types."""
    from fstore.compiler import spark_type
    from fstore.serving.retrieval.windows import exact_windows

    keys = fsv.join_keys
    longest = max(spec.size_seconds for spec in plan.windows.values())
    snapshot = pinned_read(store, fsv, set_as_of, version) if pinned_source is None else None
    events, event_ts = _source_events(store, fsv, longest, entities, pinned_source, snapshot)
    labels = base.selectExpr(ROW, TS, *[f"{LABEL}.{quote(k)} AS {quote(k)}" for k in keys])
    windows = exact_windows(labels, events, keys=keys, ts=TS, event_ts=event_ts,
                            windows=[(spec, n) for n, spec in plan.windows.items()],
                            lo=entities.min_ts, hi=entities.max_ts)
    # Nullable whatever the plan (a count is never null here, but Spark's nullability follows the plan's shape,
    # which differs by entity input): every path, the SDK's and a batch job's, writes the same schema.
    return windows.selectExpr(ROW, *[f"IF({ROW} IS NULL, NULL, CAST({quote(n)} AS {spark_type(fsv.feature(n).data_type)})) "
                                     f"AS {quote(name_of(i, n))}" for n in plan.windows])


def _recompute(frame, fsv: "FeatureSetVersion", plan: "_SetPlan", columns: dict[str, str],
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
