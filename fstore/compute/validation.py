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
the violations ``fail`` refuses, so validating costs one Spark job. A run
that breaks ``fail`` rules raises one ``ComputeError`` naming every failing
feature, carrying the quality report so the failed run keeps it.

Composite features see their inputs *after* validation: a composite reading
only other features of its set (``c_half = c_amount / 2``) is recomputed, in
dependency order, from its inputs' values once their policies replaced them, and
its own rules are then checked on that value. Each checked feature's value before
its own policy is kept in a ``__fs_raw<i>`` column for the report and the
``drop_row`` condition, then dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fstore.compiler import spark_type
from fstore.compiler.dialect import quote
from fstore.definitions.model import Feature, FeatureSetVersion
from fstore.core.errors import ComputeError

_NUMERIC = ("int", "float")


@dataclass(frozen=True)
class Validated:
    """The rows after the policies, a quality report per feature, how many rows were checked and dropped."""

    df: Any
    quality: dict[str, dict[str, Any]]
    rows_rejected: int
    rows_checked: int = 0
    profile: dict[str, Any] | None = None  # fstore.compute.profile: asked for with ``profile=True``


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


def _rules(feature: Feature, column: str | None = None) -> list[tuple[str, str]]:
    """(rule name, Spark SQL violation condition on ``column``, default the feature's) for each rule a feature
    has; a violation is never null."""
    v = quote(column or feature.name)
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


def _raw(i: int) -> str:
    return f"__fs_raw{i}"


def _plan(columns: list[str], fsv: FeatureSetVersion, profile: bool = False, engine: str = "spark"):
    """What one validation needs, as Spark SQL: the checked features, the column assignments that apply the
    policies (and recompute composites over validated inputs), the one-pass aggregates (with the profile's
    when ``profile``), the drop condition, the columns before each policy."""
    steps, before = _steps(columns, fsv)
    checked = [(f, _rules(f, before[f.name])) for f in fsv.features if f.name in columns]
    aggs = ["count(1) AS `__rows`"]
    for i, (f, rules) in enumerate(checked):
        v = quote(before[f.name])
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
    if profile:
        from fstore.compute import profile as profiles

        aggs += profiles.aggregates([f for f, _ in checked], before, profiles.entity_key(fsv, columns), columns, engine)
    return checked, steps, aggs, (_any(drop) if drop else None), before


def _steps(columns: list[str], fsv: FeatureSetVersion) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``(column, Spark SQL)`` assignments in order, and per feature the column holding its value before its
    own policy. Per feature (dependency order): its recomputation when it is a composite over a feature a
    policy may have replaced; for a feature whose null/default policy may replace values, the copy of its
    value before (``__fs_raw<i>``), then its value after the policy."""
    from fstore.compiler import features_read, reads_only_features

    present = [f for f in fsv.features if f.name in columns]
    index = {f.name: i for i, f in enumerate(present)}
    deps = {f.name: features_read(fsv, f) & set(index) for f in present}
    replaced = {f.name for f in present if _rules(f) and f.validation.on_violation in ("null", "default")}
    changed: set[str] = set()
    steps: list[tuple[str, str]] = []
    done: set[str] = set()
    before = {f.name: f.name for f in present}

    def visit(f: Feature, seen: frozenset = frozenset()) -> None:
        if f.name in done or f.name in seen:
            return
        for d in sorted(deps[f.name]):
            visit(fsv.feature(d), seen | {f.name})
        done.add(f.name)
        if (deps[f.name] & changed and not f.python and f.window is None and reads_only_features(fsv, f)):
            from fstore.compiler import feature_expression

            steps.append((f.name, f"CAST(({feature_expression(fsv, f)}) AS {spark_type(f.data_type)})"))
            changed.add(f.name)
        if f.name in replaced:
            before[f.name] = _raw(index[f.name])
            steps.append((before[f.name], quote(f.name)))
            rules = _rules(f, before[f.name])
            replacement = _literal(f.default_value) if f.validation.on_violation == "default" else "NULL"
            steps.append((f.name, f"CASE WHEN {_any([c for _, c in rules])} THEN CAST({replacement} AS "
                                  f"{spark_type(f.data_type)}) ELSE {quote(_raw(index[f.name]))} END"))
            changed.add(f.name)

    for f in present:
        visit(f)
    return steps, before


def _report(row: dict[str, Any], checked) -> tuple[dict[str, dict[str, Any]], int]:
    """The quality report from the aggregate row; raises, naming every feature whose ``fail`` policy was
    broken and carrying the report (``fstore_figures``), so a failed run keeps it."""
    quality: dict[str, dict[str, Any]] = {}
    rows = int(row["__rows"])
    failures = []
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
                failures.append(f"feature {f.name} failed validation ({detail} of {rows} rows)")
    if failures:
        error = ComputeError(f"{'; '.join(failures)}; "
                             f"{'its policy is' if len(failures) == 1 else 'their policies are'} fail, so nothing was written")
        error.fstore_figures = {"quality": quality, "rows_read": rows}  # type: ignore[attr-defined]
        raise error
    return quality, rows


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def validate(df, fsv: FeatureSetVersion, *, profile: bool = False) -> Validated:
    """Check every feature's rules on ``df`` (the compiled output, a Spark DataFrame), apply the policies,
    report quality (and profile the features: ``fstore.compute.profile``; cache ``df`` first)."""
    from pyspark.sql import functions as F

    columns = list(df.columns)
    checked, steps, aggs, drop, before = _plan(columns, fsv, profile)
    wide = df
    for name, sql in steps:
        wide = wide.withColumn(name, F.expr(sql))
    row = wide.agg(*[F.expr(a) for a in aggs]).collect()[0].asDict()
    quality, rows = _report(row, checked)
    profiled = None
    if profile:
        from fstore.compute import profile as profiles

        sql = profiles.second_pass("{w}", [f for f, _ in checked], before)
        groups = [tuple(r) for r in df.sparkSession.sql(sql, w=wide).collect()] if sql and rows else []
        profiled = profiles.build(quality, [f for f, _ in checked], row, groups)
    out = wide if drop is None else wide.where(f"NOT ({drop})")
    out = out.select(*[F.col(quote(c)) for c in columns])
    return Validated(df=out, quality=quality, rows_rejected=int(row.get("__dropped") or 0), rows_checked=rows,
                     profile=profiled)


def _layered_sql(table: str, columns: list[str], steps: list[tuple[str, str]]) -> str:
    """Spark SQL applying ``steps`` (column assignments) in order over ``table``, one nested select each."""
    current = list(columns)
    sql = f"SELECT * FROM {table}"
    for name, expression in steps:
        items = [f"{expression} AS {quote(c)}" if c == name else quote(c) for c in current]
        if name not in current:
            items.append(f"{expression} AS {quote(name)}")
            current.append(name)
        sql = f"SELECT {', '.join(items)} FROM ({sql}) AS s"
    return sql


def validate_arrow(con, table, fsv: FeatureSetVersion, *, profile: bool = False) -> Validated:
    """``validate`` for a pyarrow Table on the DuckDB engine: the same rules, policies, report and profile."""
    from fstore.engine.duckdb import to_duckdb

    columns = list(table.column_names)
    checked, steps, aggs, drop, before = _plan(columns, fsv, profile, "duckdb")
    con.register("fstore_validated", table)
    profiled = None
    try:
        wide = _layered_sql("fstore_validated", columns, steps)
        relation = con.sql(to_duckdb(f"SELECT {', '.join(aggs)} FROM ({wide}) AS w"))
        row = dict(zip(relation.columns, relation.fetchall()[0]))
        quality, rows = _report(row, checked)
        if profile:
            from fstore.compute import profile as profiles

            features = [f for f, _ in checked]
            sql = profiles.sampled_quantiles(to_duckdb(wide), features, before)
            if sql and rows:
                quantiles = con.sql(sql)
                row.update(zip(quantiles.columns, quantiles.fetchall()[0]))
            sql = profiles.second_pass(f"({wide}) AS w", features, before)
            groups = con.sql(to_duckdb(sql)).fetchall() if sql and rows else []
            profiled = profiles.build(quality, features, row, groups)
        if drop is None and not steps:
            out = table
        else:
            where = f" WHERE NOT ({drop})" if drop else ""
            out = con.sql(to_duckdb(f"SELECT {', '.join(quote(c) for c in columns)} FROM ({wide}) AS w{where}")
                          ).to_arrow_table()
    finally:
        con.unregister("fstore_validated")
    return Validated(df=out, quality=quality, rows_rejected=int(row.get("__dropped") or 0), rows_checked=rows,
                     profile=profiled)
