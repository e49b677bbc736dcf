"""Windowed aggregations: recognising them and writing them as Spark SQL.

A feature is windowed when it declares ``window_size``/``aggregation`` or when
its transformation is itself a window aggregate, e.g. the seed's
``COUNT(*) OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL
'30 days' PRECEDING AND CURRENT ROW)``. Both become one ``WindowSpec``.

Semantics, whatever the spelling: per entity key, the window at an event time
``t`` covers the events with event time in ``(t - size, t]`` — exactly ``size``
before is outside, ``size - 1µs`` before is inside, and every event at the same
instant as ``t`` is inside. (PostgreSQL's own RANGE frame would include the
event exactly ``size`` before; fstore's windows never do.) Spark orders by the
event time in microseconds with ``RANGE BETWEEN size_us - 1 PRECEDING AND
CURRENT ROW``.

Aggregations: ``count`` (events, or non-null values when a column is given),
``sum``, ``avg``, ``min``, ``max``, ``stddev`` (sample; null for fewer than two
values), ``count_distinct`` (``size(collect_set(x))``, Spark has no DISTINCT in
window functions), ``last`` (the latest non-null value in the window; events at
the same instant are ordered by their value, so the greatest wins — a
deterministic rule independent of the order Spark reads rows in). An optional
filter keeps only events where it is true. An empty window gives 0 for
``count``/``count_distinct`` and null otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from fstore.compiler.dialect import parse, quote, rewrite, to_spark
from fstore.definitions.model import Feature, FeatureSetVersion, parse_duration
from fstore.core.errors import InvalidDefinition

_FUNCTIONS: dict[type, str] = {
    exp.Sum: "sum", exp.Avg: "avg", exp.Min: "min", exp.Max: "max", exp.Stddev: "stddev",
    exp.StddevSamp: "stddev", exp.LastValue: "last", exp.Last: "last",
}


@dataclass(frozen=True, kw_only=True)
class WindowSpec:
    """A resolved window aggregate: function, size, the value and filter as Spark SQL."""

    function: str
    size_seconds: int
    value: str | None = None
    filter: str | None = None


def _interval_seconds(node: exp.Expression | None, feature: str) -> int:
    if isinstance(node, exp.Interval):
        unit = node.args.get("unit")
        text = f"{node.this.name if isinstance(node.this, exp.Literal) else node.this.sql()} {unit.name if unit else ''}"
    elif isinstance(node, exp.Literal):
        text = node.this
    else:
        raise InvalidDefinition(f"feature {feature}: the window frame must start at INTERVAL '<n> days|hours|minutes|seconds' PRECEDING",
                                field="transformation")
    text = text.strip().lower().replace("'", "")
    try:
        return parse_duration(text, field_name="transformation")
    except InvalidDefinition:
        raise InvalidDefinition(f"feature {feature}: window interval {text!r} is not a fixed duration "
                                "(use seconds, minutes, hours, days or weeks)", field="transformation") from None


def _from_over(node: exp.Window, fsv: FeatureSetVersion, feature: Feature, event_time: str) -> WindowSpec:
    """A window spec from a parsed ``agg OVER (PARTITION BY … ORDER BY … RANGE …)``."""
    name = feature.name
    source = fsv.feature_set.source
    ts_column = source.event_timestamp_column if source else "event_timestamp"
    keys = set(source_key_columns(fsv)) | set(fsv.join_keys)
    partition = {p.name for p in node.args.get("partition_by") or []}
    if not partition or not partition <= keys or not set(source_key_columns(fsv)) <= partition:
        raise InvalidDefinition(
            f"feature {name}: the window must be PARTITION BY the feature set's join keys "
            f"({', '.join(source_key_columns(fsv))}), not {', '.join(sorted(partition)) or 'nothing'}", field="transformation")
    order = node.args.get("order")
    ordered = order.expressions if order else []
    # A set without a source yet (the seed's bodies) may name its event-time column here; the check
    # runs again, against the source's event_timestamp_column, when a source is given.
    if len(ordered) != 1 or not isinstance(ordered[0].this, exp.Column) or (
            source is not None and ordered[0].this.name not in (ts_column, "event_timestamp")):
        raise InvalidDefinition(f"feature {name}: the window must be ORDER BY the event timestamp column {ts_column}",
                                field="transformation")
    spec = node.args.get("spec")
    if spec is None or str(spec.args.get("kind", "")).upper() != "RANGE" or str(spec.args.get("start_side", "")).upper() != "PRECEDING" \
            or str(spec.args.get("end", "")).upper() != "CURRENT ROW":
        raise InvalidDefinition(f"feature {name}: the window frame must be RANGE BETWEEN INTERVAL '…' PRECEDING AND CURRENT ROW",
                                field="transformation")
    size = _interval_seconds(spec.args.get("start"), name)
    agg = node.this
    filter_sql = None
    if isinstance(agg, exp.Filter):
        where = agg.expression
        filter_node = where.this if isinstance(where, exp.Where) else where
        filter_sql = rewrite(filter_node, event_time=event_time, feature=name).sql(dialect="spark", identify=True)
        agg = agg.this
    value: exp.Expression | None
    if isinstance(agg, exp.Count):
        inner = agg.this
        if isinstance(inner, exp.Distinct):
            function, value = "count_distinct", inner.expressions[0] if len(inner.expressions) == 1 else None
            if value is None:
                raise InvalidDefinition(f"feature {name}: COUNT(DISTINCT …) takes one expression", field="transformation")
        elif inner is None or isinstance(inner, exp.Star):
            function, value = "count", None
        else:
            function, value = "count", inner
    elif type(agg) in _FUNCTIONS:
        function, value = _FUNCTIONS[type(agg)], agg.this
    else:
        raise InvalidDefinition(f"feature {name}: window aggregate {agg.sql()} is not supported; "
                                "use COUNT, COUNT(DISTINCT), SUM, AVG, MIN, MAX, STDDEV or LAST_VALUE", field="transformation")
    value_sql = (rewrite(value, event_time=event_time, feature=name).sql(dialect="spark", identify=True)
                 if value is not None else None)
    if feature.window is not None:
        if feature.window.size_seconds != size:
            raise InvalidDefinition(f"feature {name}: window_size ({feature.window.size_seconds}s) disagrees with the "
                                    f"transformation's RANGE interval ({size}s)", field="window_size")
        if feature.window.function not in ("count", function):
            raise InvalidDefinition(f"feature {name}: aggregation {feature.window.function} disagrees with the "
                                    f"transformation's {function}", field="aggregation")
        if feature.window.filter:
            extra = to_spark(feature.window.filter, feature.dialect, event_time=event_time, feature=name, field="window_filter")
            filter_sql = f"({filter_sql}) AND ({extra})" if filter_sql else extra
    return WindowSpec(function=function, size_seconds=size, value=value_sql, filter=filter_sql)


def source_key_columns(fsv: FeatureSetVersion) -> tuple[str, ...]:
    """The source's column for each join key (``source.entity_columns`` when it renames them)."""
    source = fsv.feature_set.source
    if source is not None and source.entity_columns and len(source.entity_columns) == len(fsv.join_keys):
        return tuple(source.entity_columns)
    return fsv.join_keys


def window_spec(fsv: FeatureSetVersion, feature: Feature, *, event_time: str) -> WindowSpec | None:
    """The window a feature aggregates over, or None for a row/composite/python feature."""
    if feature.python:
        return None
    if feature.transformation:
        node = parse(feature.transformation, feature.dialect, feature=feature.name)
        if isinstance(node, exp.Window):
            return _from_over(node, fsv, feature, event_time)
    if feature.window is None:
        return None
    value = (to_spark(feature.transformation, feature.dialect, event_time=event_time, feature=feature.name)
             if feature.transformation and feature.transformation.strip() != "*" else None)
    filt = (to_spark(feature.window.filter, feature.dialect, event_time=event_time, feature=feature.name, field="window_filter")
            if feature.window.filter else None)
    if value is None and feature.window.function != "count":
        raise InvalidDefinition(f"feature {feature.name}: a {feature.window.function} window needs a column to aggregate",
                                field="transformation")
    return WindowSpec(function=feature.window.function, size_seconds=feature.window.size_seconds, value=value, filter=filt)


def window_sql(spec: WindowSpec, *, keys: tuple[str, ...], timestamp: str, event_flag: str | None = None) -> str:
    """The Spark SQL window aggregate for ``spec`` over ``(t - size, t]``.

    ``keys`` are the partition columns, ``timestamp`` the TIMESTAMP column to order by; rows
    whose ``event_flag`` column is false (e.g. label rows unioned in) are in the frame but
    never counted.
    """
    conds = ([quote(event_flag)] if event_flag else []) + ([f"({spec.filter})"] if spec.filter else [])
    cond = " AND ".join(conds)

    def guarded(value: str) -> str:
        return f"CASE WHEN {cond} THEN {value} END" if cond else value

    value = f"({spec.value})" if spec.value else None
    fn = spec.function
    if fn == "count":
        agg = f"COUNT({guarded(value or '1')})"
    elif fn == "count_distinct":
        agg = f"COLLECT_SET({guarded(value)})"
    elif fn == "stddev":
        agg = f"STDDEV_SAMP({guarded(value)})"
    elif fn == "last":
        ts_us = f"UNIX_MICROS({quote(timestamp)})"
        present = " AND ".join(conds + [f"{value} IS NOT NULL"])
        agg = f"MAX_BY({value}, CASE WHEN {present} THEN STRUCT({ts_us}, {value}) END)"
    else:
        agg = f"{fn.upper()}({guarded(value)})"
    size_us = spec.size_seconds * 1_000_000
    partition = ", ".join(quote(k) for k in keys)
    over = (f"{agg} OVER (PARTITION BY {partition} ORDER BY UNIX_MICROS({quote(timestamp)}) "
            f"RANGE BETWEEN {size_us - 1} PRECEDING AND CURRENT ROW)")
    return f"SIZE({over})" if fn == "count_distinct" else over
