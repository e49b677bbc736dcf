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
from fstore.compiler.dialect import quote
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


def _literal(value: Any) -> str:
    """A Spark SQL literal (strings escaped for Spark's backslash-processing parser)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"CAST('{value}' AS DOUBLE)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"array({', '.join(_literal(v) for v in value)})"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _rules(feature: Feature) -> list[tuple[str, str]]:
    """(rule name, Spark SQL violation condition) for each rule a feature has; a violation is never null."""
    v = quote(feature.name)
    rules = feature.validation
    out = []
    if rules.not_null:
        out.append(("not_null", f"{v} IS NULL"))
    if rules.min_value is not None:
        out.append((f"min_value {rules.min_value}", f"coalesce({v} < {_literal(rules.min_value)}, FALSE)"))
    if rules.max_value is not None:
        out.append((f"max_value {rules.max_value}", f"coalesce({v} > {_literal(rules.max_value)}, FALSE)"))
    if rules.allowed_values is not None:
        allowed = ", ".join(_literal(x) for x in rules.allowed_values)
        out.append(("allowed_values", f"coalesce(NOT {v} IN ({allowed}), FALSE)" if allowed else f"{v} IS NOT NULL"))
    if rules.regex is not None:
        pattern = _literal(f"^(?:{rules.regex})$")
        out.append((f"regex {rules.regex!r}", f"coalesce(NOT CAST({v} AS STRING) RLIKE {pattern}, FALSE)"))
    return out


def _any(conditions: list[str]) -> str:
    return " OR ".join(f"({c})" for c in conditions) if conditions else "FALSE"


def _plan(columns: list[str], fsv: FeatureSetVersion):
    """What one validation needs, as Spark SQL: the checked features, the one-pass aggregates, the drop condition."""
    checked = [(f, _rules(f)) for f in fsv.features if f.name in columns]
    aggs = ["count(1) AS `__rows`"]
    for i, (f, rules) in enumerate(checked):
        v = quote(f.name)
        aggs.append(f"sum(CASE WHEN {v} IS NULL THEN 1 ELSE 0 END) AS `__n{i}`")
        for j, (_, cond) in enumerate(rules):
            aggs.append(f"sum(CASE WHEN {cond} THEN 1 ELSE 0 END) AS `__r{i}_{j}`")
        aggs.append(f"sum(CASE WHEN {_any([c for _, c in rules])} THEN 1 ELSE 0 END) AS `__v{i}`")
        if not f.data_type.startswith("list<") and f.data_type != "bool":
            aggs += [f"min({v}) AS `__min{i}`", f"max({v}) AS `__max{i}`", f"approx_count_distinct({v}) AS `__d{i}`"]
        if f.data_type in _NUMERIC:
            aggs.append(f"avg({v}) AS `__avg{i}`")
    drop = [cond for f, rules in checked if f.validation.on_violation == "drop_row" for _, cond in rules]
    if drop:
        aggs.append(f"sum(CASE WHEN {_any(drop)} THEN 1 ELSE 0 END) AS `__dropped`")
    return checked, aggs, (_any(drop) if drop else None)


def _replacements(checked) -> dict[str, str]:
    """Feature name → its Spark SQL after the null/default policy (only features that have one)."""
    out = {}
    for f, rules in checked:
        policy = f.validation.on_violation
        if not rules or policy in ("drop_row", "fail"):
            continue
        replacement = "NULL"
        if policy == "default" and f.default_value is not None:
            replacement = _literal(f.default_value)
        out[f.name] = (f"CASE WHEN {_any([c for _, c in rules])} THEN CAST({replacement} AS {spark_type(f.data_type)}) "
                       f"ELSE {quote(f.name)} END")
    return out


def _report(row: dict[str, Any], checked) -> tuple[dict[str, dict[str, Any]], int]:
    """The quality report from the aggregate row; raises for a ``fail`` policy that was broken."""
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
    return quality, rows


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def validate(df, fsv: FeatureSetVersion) -> Validated:
    """Check every feature's rules on ``df`` (the compiled output, a Spark DataFrame), apply the policies, report quality."""
    from pyspark.sql import functions as F

    checked, aggs, drop = _plan(df.columns, fsv)
    row = df.agg(*[F.expr(a) for a in aggs]).collect()[0].asDict()
    quality, rows = _report(row, checked)
    out = df if drop is None else df.where(f"NOT ({drop})")
    for name, sql in _replacements(checked).items():
        out = out.withColumn(name, F.expr(sql))
    return Validated(df=out, quality=quality, rows_rejected=int(row.get("__dropped") or 0), rows_checked=rows)


def validate_arrow(con, table, fsv: FeatureSetVersion) -> Validated:
    """``validate`` for a pyarrow Table on the DuckDB engine: the same rules, policies and report."""
    from fstore.engine.duckdb import to_duckdb

    checked, aggs, drop = _plan(table.column_names, fsv)
    con.register("fstore_validated", table)
    try:
        relation = con.sql(to_duckdb(f"SELECT {', '.join(aggs)} FROM fstore_validated"))
        row = dict(zip(relation.columns, relation.fetchall()[0]))
        quality, rows = _report(row, checked)
        replaced = _replacements(checked)
        if drop is None and not replaced:
            out = table
        else:
            columns = [f"{replaced[c]} AS {quote(c)}" if c in replaced else quote(c) for c in table.column_names]
            where = f" WHERE NOT ({drop})" if drop else ""
            out = con.sql(to_duckdb(f"SELECT {', '.join(columns)} FROM fstore_validated{where}")).to_arrow_table()
    finally:
        con.unregister("fstore_validated")
    return Validated(df=out, quality=quality, rows_rejected=int(row.get("__dropped") or 0), rows_checked=rows)
