"""Expression translation: a feature's SQL text → Spark SQL, with event-time semantics.

Every transformation goes through sqlglot, whatever its dialect, so that three
rewrites happen in one place:

* ``dialect: postgres`` expressions are transpiled to Spark SQL;
* ``current_date``, ``current_timestamp``, ``now()`` (and PostgreSQL's
  ``localtimestamp``, ``transaction_timestamp()``, ``statement_timestamp()``)
  become the ROW'S EVENT TIME (``current_date`` → the event time's date), so a
  recomputation gives the same answer and no training row sees the future;
* ``EXTRACT(YEAR|MONTH|DAY FROM AGE(a, b))`` (also ``date_part('year', age(...))``
  and one-argument ``AGE(b)``, which means ``AGE(current_date, b)``) becomes
  arithmetic that reproduces PostgreSQL's ``age()`` exactly: whole years and
  months, borrowing a month when ``a``'s day (and time of day) is before
  ``b``'s, and the days-in-month of the earlier date for the day part. Someone
  born on 29 Feb turns a year older on 1 Mar in non-leap years, and on the
  birthday itself otherwise. Other uses of ``AGE`` are refused, because Spark
  has no interval type with PostgreSQL's symbolic months.

With ``dialect: postgres``, ``a / b`` of two integers is PostgreSQL's integer
division (truncated toward zero: ``7 / 2`` is 3, ``-7 / 2`` is -3), written as
Spark's ``a DIV b``, when both sides are known to be integers in the expression:
integer literals, casts to an integer type, features of type ``int`` read by a
composite feature, and sums, differences, products, remainders and quotients of
those. A raw source column's type is not known to the compiler (it compiles
without reading the source), so ``col / 2`` stays a fraction: write
``CAST(col AS INT) / 2`` to have PostgreSQL's answer.
"""
from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from fstore.core.errors import InvalidDefinition

_NOW_FUNCTIONS = {"now", "transaction_timestamp", "statement_timestamp", "clock_timestamp", "localtimestamp"}
_AGE_PARTS = {"year", "years", "month", "months", "mon", "day", "days"}


def sql_error_text(exc: SqlglotError) -> str:
    """sqlglot's error as one plain line: what, where, and the text there (its own message holds
    a second line with terminal underline codes around the offending token)."""
    for error in getattr(exc, "errors", None) or []:
        near = (error.get("highlight") or "").strip()
        return (f"{error.get('description')} at line {error.get('line')}, column {error.get('col')}"
                + (f", near {near!r}" if near else ""))
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def quote(name: str) -> str:
    """A Spark SQL identifier in backticks."""
    return "`" + name.replace("`", "``") + "`"


def parse(text: str, dialect: str, *, feature: str, field: str = "transformation") -> exp.Expression:
    """Parse one SQL expression in ``dialect``; a syntax error names the feature. The caller owns the tree it
    gets (a copy of the parsed one, which is kept: a retrieval of 1,000 features parsed 3,000 texts, 0.6 s)."""
    try:
        return _parsed(text, dialect).copy()
    except SqlglotError as exc:
        raise InvalidDefinition(f"feature {feature}: {field} {text!r} is not valid {dialect} SQL: {sql_error_text(exc)}", field=field) from None
    except _NotOneExpression as exc:
        raise InvalidDefinition(f"feature {feature}: {field} must be one SQL expression, not {exc.args[0]}: {text!r}",
                                field=field) from None


class _NotOneExpression(Exception):
    """The text parsed, but is not one expression (the argument says what it is)."""


@functools.lru_cache(maxsize=4096)
def _parsed(text: str, dialect: str) -> exp.Expression:
    statements = [n for n in sqlglot.parse(text, read=dialect) if n is not None]
    if len(statements) > 1:
        raise _NotOneExpression(f"{len(statements)} statements")
    node = statements[0] if statements else None
    if node is None or isinstance(node, (exp.Select, exp.Union, exp.Insert, exp.Create, exp.Drop, exp.Command)):
        raise _NotOneExpression("a statement")
    return node


def _event_time_rewrite(node: exp.Expression, event_time: str) -> exp.Expression:
    """Replace "now" in all its spellings by the row's event time."""
    ts = exp.column(event_time, quoted=True)

    def fn(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.CurrentDate):
            return exp.Cast(this=ts.copy(), to=exp.DataType.build("DATE"))
        if isinstance(n, (exp.CurrentTimestamp, exp.CurrentDatetime)):
            return ts.copy()
        if isinstance(n, exp.Anonymous) and str(n.this).lower() in _NOW_FUNCTIONS and not n.expressions:
            return ts.copy()
        if isinstance(n, exp.Column) and not n.table and n.name.lower() == "localtimestamp" and not n.this.quoted:
            return ts.copy()
        return n

    return node.transform(fn)


def _part_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Literal):
        return node.this.lower()
    return node.name.lower() if node.name else node.sql().lower()


def _age_sql(part: str, a: str, b: str) -> str:
    """Spark SQL for one field of PostgreSQL's ``age(a, b)``; ``a``/``b`` are Spark SQL timestamps."""
    hi, lo = f"GREATEST({a}, {b})", f"LEAST({a}, {b})"
    sign = f"(CASE WHEN {a} < {b} THEN -1 ELSE 1 END)"

    def tod(t: str) -> str:  # microseconds since midnight
        return f"(UNIX_MICROS({t}) - UNIX_MICROS(DATE_TRUNC('DAY', {t})))"

    day_borrow = f"(CASE WHEN {tod(hi)} < {tod(lo)} THEN 1 ELSE 0 END)"
    days = f"(DAY({hi}) - DAY({lo}) - {day_borrow})"
    months = (f"((YEAR({hi}) - YEAR({lo})) * 12 + MONTH({hi}) - MONTH({lo}) "
              f"- (CASE WHEN {days} < 0 THEN 1 ELSE 0 END))")
    if part.startswith("y"):
        return f"CAST({sign} * FLOOR({months} / 12) AS BIGINT)"
    if part.startswith("mon"):
        return f"CAST({sign} * PMOD({months}, 12) AS BIGINT)"
    return f"CAST({sign} * (CASE WHEN {days} < 0 THEN {days} + DAY(LAST_DAY({lo})) ELSE {days} END) AS BIGINT)"


def _age_rewrite(node: exp.Expression, event_time: str, feature: str) -> exp.Expression:
    """``EXTRACT(part FROM AGE(a, b))`` → exact Spark arithmetic; any other AGE is refused."""

    def age_args(call: exp.Expression) -> tuple[str, str] | None:
        if not (isinstance(call, exp.Anonymous) and str(call.this).lower() == "age"):
            return None
        args = list(call.expressions)
        if len(args) == 1:
            args = [exp.Cast(this=exp.column(event_time, quoted=True), to=exp.DataType.build("DATE")), args[0]]
        if len(args) != 2:
            raise InvalidDefinition(f"feature {feature}: AGE takes one or two arguments", field="transformation")
        a, b = (f"CAST({arg.sql(dialect='spark', identify=True)} AS TIMESTAMP)" for arg in args)
        return a, b

    def fn(n: exp.Expression) -> exp.Expression:
        part = inner = None
        if isinstance(n, exp.Extract):
            part, inner = _part_name(n.this), n.expression
        elif isinstance(n, exp.Anonymous) and str(n.this).lower() == "date_part" and len(n.expressions) == 2:
            part, inner = _part_name(n.expressions[0]), n.expressions[1]
        if inner is not None:
            args = age_args(inner)
            if args is not None:
                if part not in _AGE_PARTS:
                    raise InvalidDefinition(
                        f"feature {feature}: EXTRACT({part.upper()} FROM AGE(...)) is not supported; use YEAR, MONTH or DAY",
                        field="transformation")
                return sqlglot.parse_one(_age_sql(part, *args), read="spark")
        return n

    out = node.transform(fn)
    for call in out.find_all(exp.Anonymous):
        if str(call.this).lower() == "age":
            raise InvalidDefinition(
                f"feature {feature}: AGE(...) is only supported as EXTRACT(YEAR|MONTH|DAY FROM AGE(...)); "
                "Spark has no interval with PostgreSQL's months, so compare the extracted parts instead",
                field="transformation")
    return out


_INT_TYPES = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT}


def _is_int(node: exp.Expression, int_columns: frozenset[str]) -> bool:
    """True when ``node`` is an integer by what the expression itself says (see the module docstring)."""
    if isinstance(node, exp.Paren):
        return _is_int(node.this, int_columns)
    if isinstance(node, exp.Literal):
        return node.is_int
    if isinstance(node, exp.Neg):
        return _is_int(node.this, int_columns)
    if isinstance(node, exp.Cast):
        return node.to.this in _INT_TYPES
    if isinstance(node, exp.Column):
        return not node.table and node.name in int_columns
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Mod, exp.Div, exp.IntDiv)):
        return _is_int(node.left, int_columns) and _is_int(node.right, int_columns)
    return False


def postgres_int_division(node: exp.Expression, int_columns: frozenset[str] = frozenset()) -> exp.Expression:
    """PostgreSQL's ``int / int`` (truncating) as Spark's ``DIV``; other divisions are left alone."""

    node = node.copy()
    for div in reversed(list(node.find_all(exp.Div))):  # innermost first: an outer one sees its operands' types
        if _is_int(div.left, int_columns) and _is_int(div.right, int_columns):
            replacement = exp.IntDiv(this=div.left.copy(), expression=div.right.copy())
            if div is node:
                return replacement
            div.replace(replacement)
    return node


def rewrite(node: exp.Expression, *, event_time: str, feature: str) -> exp.Expression:
    """Apply event-time semantics and the AGE translation to a parsed expression."""
    return _age_rewrite(_event_time_rewrite(node, event_time), event_time, feature)


def to_spark(text: str, dialect: str, *, event_time: str, feature: str, rename: dict[str, str] | None = None,
             field: str = "transformation", int_columns: frozenset[str] = frozenset()) -> str:
    """A feature's expression as Spark SQL text over the row whose event time is column ``event_time``.

    ``rename`` maps unqualified column names to other columns (composite features read other
    features from internal columns); ``int_columns`` names the columns known to be integers
    (for PostgreSQL's integer division).
    """
    node = parse(text, dialect, feature=feature, field=field)
    if dialect == "postgres":
        node = postgres_int_division(node, int_columns)
    if node.find(exp.Window):
        raise InvalidDefinition(
            f"feature {feature}: a window function (OVER ...) must be the whole transformation, not part of it",
            field=field)
    node = rewrite(node, event_time=event_time, feature=feature)
    if rename:
        def fn(n: exp.Expression) -> exp.Expression:
            if isinstance(n, exp.Column) and not n.table and n.name in rename:
                return exp.column(rename[n.name], quoted=True)
            return n

        node = node.transform(fn)
    try:
        return node.sql(dialect="spark", identify=True)
    except SqlglotError as exc:
        raise InvalidDefinition(f"feature {feature}: {field} cannot be translated to Spark SQL: {sql_error_text(exc)}",
                                field=field) from None


def column_names(text: str, dialect: str, *, feature: str) -> set[str]:
    """The unqualified column names an expression reads."""
    try:
        return set(_column_names(text, dialect))
    except (SqlglotError, _NotOneExpression):
        parse(text, dialect, feature=feature)  # raises the error naming the feature
        raise


@functools.lru_cache(maxsize=4096)
def _column_names(text: str, dialect: str) -> frozenset[str]:
    return frozenset(c.name for c in _parsed(text, dialect).find_all(exp.Column) if not c.table)
