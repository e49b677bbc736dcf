"""Validation of computed features in Spark: rules, policies and a quality report.

Each feature's ``validation_rules`` are checked on the already-cast values:
``min_value``/``max_value`` (inclusive bounds), ``allowed_values``,
``not_null``, ``regex`` (the whole string must match, Java regex syntax as
Spark uses it). A null value only violates ``not_null``.

What happens to a violating value is the feature's ``on_violation`` policy:
``null`` (the value becomes null), ``default`` (the feature's
``default_value``), ``drop_row`` (the row is not written) or ``fail`` (a
``ComputeError`` naming the feature, the rule and how many values broke it;
the caller writes nothing).

The quality report is computed in ONE aggregation pass over the rows, before
any policy is applied: per feature ``count``, ``nulls``, ``violations``,
``min``, ``max``, ``mean`` (numeric features) and ``distinct`` (an
approximate count). That same pass counts the rows ``drop_row`` removes and
the violations ``fail`` refuses, so validating costs one Spark job.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fstore.compiler import spark_type
from fstore.definitions import Feature, FeatureSetVersion
from fstore.errors import ComputeError

_NUMERIC = ("int", "float")


@dataclass(frozen=True)
class Validated:
    """The rows after the policies, a quality report per feature, how many rows were checked and dropped."""

    df: Any
    quality: dict[str, dict[str, Any]]
    rows_rejected: int
    rows_checked: int = 0


def _rules(feature: Feature) -> list[tuple[str, Any]]:
    """(rule name, violation Column) for each rule a feature has; a violation is never null."""
    from pyspark.sql import functions as F

    v = F.col(f"`{feature.name}`")
    rules = feature.validation
    out = []
    if rules.not_null:
        out.append(("not_null", v.isNull()))
    if rules.min_value is not None:
        out.append((f"min_value {rules.min_value}", F.coalesce(v < F.lit(rules.min_value), F.lit(False))))
    if rules.max_value is not None:
        out.append((f"max_value {rules.max_value}", F.coalesce(v > F.lit(rules.max_value), F.lit(False))))
    if rules.allowed_values is not None:
        allowed = [F.lit(x) for x in rules.allowed_values]
        out.append(("allowed_values", F.coalesce(~v.isin(*allowed), F.lit(False)) if allowed else v.isNotNull()))
    if rules.regex is not None:
        pattern = f"^(?:{rules.regex})$"
        out.append((f"regex {rules.regex!r}", F.coalesce(~v.cast("string").rlike(pattern), F.lit(False))))
    return out


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def validate(df, fsv: FeatureSetVersion) -> Validated:
    """Check every feature's rules on ``df`` (the compiled output), apply the policies, report quality."""
    from pyspark.sql import functions as F

    checked = [(f, _rules(f)) for f in fsv.features if f.name in df.columns]
    aggs = [F.count(F.lit(1)).alias("__rows")]
    for i, (f, rules) in enumerate(checked):
        v = F.col(f"`{f.name}`")
        aggs.append(F.sum(F.when(v.isNull(), 1).otherwise(0)).alias(f"__n{i}"))
        any_violation = F.lit(False)
        for j, (_, cond) in enumerate(rules):
            aggs.append(F.sum(F.when(cond, 1).otherwise(0)).alias(f"__r{i}_{j}"))
            any_violation = any_violation | cond
        aggs.append(F.sum(F.when(any_violation, 1).otherwise(0)).alias(f"__v{i}"))
        if not f.data_type.startswith("list<") and f.data_type != "bool":
            aggs += [F.min(v).alias(f"__min{i}"), F.max(v).alias(f"__max{i}"),
                     F.approx_count_distinct(v).alias(f"__d{i}")]
        if f.data_type in _NUMERIC:
            aggs.append(F.avg(v).alias(f"__avg{i}"))
    drop_conds = [cond for f, rules in checked if f.validation.on_violation == "drop_row" for _, cond in rules]
    drop_any = None
    for cond in drop_conds:
        drop_any = cond if drop_any is None else drop_any | cond
    if drop_any is not None:
        aggs.append(F.sum(F.when(drop_any, 1).otherwise(0)).alias("__dropped"))
    row = df.agg(*aggs).collect()[0].asDict()

    quality: dict[str, dict[str, Any]] = {}
    rows = int(row["__rows"])
    for i, (f, rules) in enumerate(checked):
        quality[f.name] = {
            "count": rows, "nulls": int(row[f"__n{i}"] or 0), "violations": int(row[f"__v{i}"] or 0),
            "min": _json(row.get(f"__min{i}")), "max": _json(row.get(f"__max{i}")),
            "mean": _json(row.get(f"__avg{i}")), "distinct": row.get(f"__d{i}"),
        }
        if f.validation.on_violation == "fail":
            broken = [(name, int(row[f"__r{i}_{j}"] or 0)) for j, (name, _) in enumerate(rules) if row[f"__r{i}_{j}"]]
            if broken:
                detail = ", ".join(f"{name}: {n} value{'s' if n != 1 else ''}" for name, n in broken)
                raise ComputeError(f"feature {f.name} failed validation ({detail} of {rows} rows); "
                                   "its policy is fail, so nothing was written")

    out = df
    if drop_any is not None:
        out = out.where(~drop_any)
    for f, rules in checked:
        policy = f.validation.on_violation
        if not rules or policy in ("drop_row", "fail"):
            continue
        violated = rules[0][1]
        for _, cond in rules[1:]:
            violated = violated | cond
        replacement = F.lit(None)
        if policy == "default" and f.default_value is not None:
            replacement = F.lit(f.default_value)
        if f.data_type.startswith("list<") and policy == "default" and f.default_value is not None:
            replacement = F.array(*[F.lit(x) for x in f.default_value])
        out = out.withColumn(f.name, F.when(violated, replacement.cast(spark_type(f.data_type)))
                             .otherwise(F.col(f"`{f.name}`")))
    return Validated(df=out, quality=quality, rows_rejected=int(row.get("__dropped") or 0), rows_checked=rows)
