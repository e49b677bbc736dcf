"""What user SQL may do: the allow-list every transformation, window filter and query source passes.

A feature's SQL runs inside the server's engine (Spark's JVM, or DuckDB in the server process),
so a definition must not be able to read what the server can: files (DuckDB's ``read_text``,
``read_csv_auto``, ``glob``; Spark's ``text.`/etc/passwd```), the environment (Spark's
``reflect``/``java_method``, ``${env:NAME}`` variable substitution) or tables other than the
declared source. Each piece of SQL is parsed with sqlglot (in its declared dialect) and refused,
with every offending function or construct named, when it uses:

* a function that is not in ``ALLOWED_FUNCTIONS`` (scalar, aggregate, window, array/map helpers;
  ``fstore sql-functions`` prints them). Reflection (``reflect``, ``java_method``,
  ``try_reflect``) and file readers are never on it;
* in a transformation or window filter: any subquery, ``FROM``, table or path reference — an
  expression reads the row it is given, nothing else;
* in a ``query:`` source: a function in ``FROM`` (a table-valued function), a file path
  (``parquet.`…```, a quoted name with ``/``), or anything but one ``SELECT`` (no ``SET``,
  ``INSERT``, ``CREATE``); it may read catalog tables and views by name, and its own CTEs;
* ``${`` anywhere in the text (Spark substitutes ``${env:…}`` with environment variables).

The same check runs at apply time (``validate_version``) and again before every computation
(``compile_feature_set``, ``feature_expression``, the Spark engine's ``read_source``), so a
definition stored before this check existed cannot run either.
"""
from __future__ import annotations

import functools
import re
from typing import Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from fstore.core.errors import InvalidDefinition

# Functions a transformation, window filter or query source may call, by the names users write
# (Spark SQL and PostgreSQL spellings). sqlglot maps many spellings to one node; a node is allowed
# when any of its names is listed here.
ALLOWED_FUNCTIONS: frozenset[str] = frozenset("""
    count sum avg mean min max stddev stddev_samp stddev_pop std variance var_samp var_pop count_if
    approx_count_distinct approx_distinct percentile percentile_approx approx_percentile percentile_cont
    percentile_disc median mode first first_value last last_value any_value collect_list collect_set array_agg
    max_by min_by arg_max arg_min bool_and bool_or every some any logical_and logical_or corr covar_pop covar_samp
    skewness kurtosis
    row_number rank dense_rank percent_rank cume_dist ntile lag lead nth_value
    abs ceil ceiling floor round bround sqrt cbrt exp expm1 ln log log10 log2 log1p pow power mod pmod sign signum
    greatest least e pi degrees radians sin cos tan asin acos atan atan2 sinh cosh tanh hypot factorial isnan nanvl
    is_nan is_inf positive negative width_bucket try_add try_subtract try_multiply try_divide try_sum try_avg div
    safe_divide trunc bin hex unhex
    coalesce nullif nvl nvl2 ifnull if iff case isnull isnotnull equal_null zeroifnull nullifzero
    cast try_cast to_number try_to_number to_char boolean tinyint smallint int bigint float double decimal string
    date timestamp
    length char_length character_length octet_length bit_length lower upper lcase ucase initcap trim ltrim rtrim
    btrim lpad rpad pad substr substring substring_index left right concat concat_ws replace translate
    regexp_replace regexp_extract regexp_extract_all regexp_like rlike regexp regexp_count regexp_instr
    regexp_substr split split_part instr locate position strpos starts_with startswith ends_with endswith contains
    repeat reverse space ascii chr char format_number format_string printf soundex levenshtein md5 sha sha1 sha2
    crc32 hash xxhash64 base64 unbase64 to_base64 from_base64 encode decode overlay ilike elt find_in_set
    get_json_object from_json to_json json_array_length json_object_keys
    current_date current_timestamp now localtimestamp transaction_timestamp statement_timestamp clock_timestamp
    date_add date_sub dateadd datediff date_diff add_months months_between date_trunc date_format date_part datepart
    extract year quarter month day dayofmonth day_of_month dayofweek day_of_week dayofyear day_of_year weekday
    weekofyear week_of_year week hour minute second last_day next_day make_date make_timestamp make_interval
    make_dt_interval make_ym_interval to_date to_timestamp to_unix_timestamp unix_timestamp from_unixtime
    from_utc_timestamp to_utc_timestamp unix_seconds unix_millis unix_micros unix_date date_from_unix_date
    timestamp_seconds timestamp_millis timestamp_micros timestampadd timestampdiff timestamp_add timestamp_sub
    timestamp_diff convert_timezone age
    array array_contains array_distinct array_except array_intersect array_union array_join array_max array_min
    array_position array_remove array_repeat array_sort array_size array_append array_prepend array_compact
    arrays_overlap array_overlaps arrays_zip cardinality size element_at try_element_at slice sort_array flatten
    sequence transform filter exists forall aggregate reduce zip_with array_length array_to_string
    map map_keys map_values map_entries map_from_arrays map_from_entries map_concat map_contains_key map_filter
    transform_keys transform_values str_to_map struct named_struct get
""".split())

# Nodes sqlglot's parser builds around allowed spellings (``datediff(a, b)`` wraps its arguments in
# TS_OR_DS_TO_DATE, ``instr`` becomes STR_POSITION...): not user-facing names, allowed by node type.
_PARSER_NODES: tuple[type[exp.Expression], ...] = (
    exp.TsOrDsToDate, exp.TsOrDsAdd, exp.TsOrDsDiff, exp.TsOrDsToTimestamp, exp.TsOrDsToDateStr, exp.TimeStrToTime,
    exp.TimeStrToDate, exp.StrToTime, exp.StrToDate, exp.StrToUnix, exp.TimeToStr, exp.TimeToUnix, exp.UnixToTime,
    exp.UnixToStr, exp.StrPosition, exp.DateStrToDate, exp.DateToDateStr, exp.ArrayUniqueAgg, exp.ArrayAll,
    exp.ArrayAny, exp.ArrayConcat, exp.ArrayFilter, exp.ArraySize, exp.ArrayToString, exp.ApproxQuantile,
    exp.ApproxDistinct, exp.ParseJSON, exp.JSONExtract, exp.JSONExtractScalar, exp.RegexpILike, exp.RegexpLike,
    exp.Pad, exp.VarMap, exp.ToMap, exp.StarMap, exp.DateAdd, exp.DateSub, exp.DateDiff, exp.DateTrunc,
    exp.TimestampTrunc, exp.TimestampAdd, exp.TimestampSub, exp.TimestampDiff, exp.DatetimeAdd, exp.DatetimeSub,
    exp.DatetimeDiff, exp.Datetime, exp.CurrentDatetime, exp.Cast, exp.TryCast, exp.Case, exp.If, exp.Extract,
    exp.RegexpSplit,
)
# Operators sqlglot models as function nodes (AND, OR, XOR): syntax, not calls.
_OPERATORS: tuple[type[exp.Expression], ...] = (exp.Binary, exp.Unary, exp.Connector)

# Functions of a query source's LATERAL VIEW (a query may explode its own rows).
_GENERATORS = frozenset({"explode", "explode_outer", "posexplode", "posexplode_outer", "inline", "inline_outer"})
_REFLECTION = frozenset({"reflect", "java_method", "try_reflect"})
_FILE_FUNCTION = re.compile(r"^(read_\w+|\w+_scan|glob|load_\w+|pg_read_\w+|pg_ls_dir|pg_stat_file|lo_\w+|"
                            r"input_file_\w+|sniff_csv|parquet_\w+|delta_\w+|iceberg_\w+|copy_\w+)$", re.IGNORECASE)
# Spark reads `fmt`.`path` as the file at path (runSQLOnFiles): these namespaces never name a table here.
FILE_NAMESPACES = frozenset({"text", "csv", "json", "parquet", "orc", "avro", "delta", "binaryfile", "jdbc", "xml",
                             "libsvm", "image", "hive", "noop", "kafka", "iceberg", "hudi", "file", "files"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def allowed_functions() -> list[str]:
    """The allow-list, sorted (what ``fstore sql-functions`` prints)."""
    return sorted(ALLOWED_FUNCTIONS)


def _names(node: exp.Func) -> list[str]:
    """The names a function node answers to: as written for an unknown one, sqlglot's for a known one."""
    if isinstance(node, exp.Anonymous):
        return [str(node.this).lower()]
    return [n.lower() for n in type(node).sql_names()]


def _function_refusal(node: exp.Func, *, generators: bool) -> str | None:
    names = _names(node)
    shown = names[0]
    if shown in _REFLECTION:
        return f"function {shown} (Java reflection)"
    if _FILE_FUNCTION.match(shown):
        return f"function {shown} (it reads files)"
    if isinstance(node, _PARSER_NODES) or any(n in ALLOWED_FUNCTIONS for n in names):
        return None
    if generators and shown in _GENERATORS:
        return None
    return f"function {shown} (not on the allow-list)"


def _path_like(table: exp.Table) -> bool:
    parts = [p for p in (table.args.get("catalog"), table.args.get("db"), table.this) if p is not None]
    if any(not isinstance(p, exp.Identifier) or not _NAME.match(p.name) for p in parts):
        return True
    return len(parts) >= 2 and parts[-2].name.lower() in FILE_NAMESPACES


def _refusals(root: exp.Expression, *, query: bool) -> list[str]:
    """Every refused function or construct under ``root``, in order, each once."""
    found: list[str] = []
    named: set[int] = set()  # function nodes already reported as a table-valued function
    for node in root.walk():
        reason = None
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                inner = node.this
                named.add(id(inner))
                name = _names(inner)[0] if isinstance(inner, exp.Func) else inner.sql(dialect="spark")
                reads = " (it reads files)" if _FILE_FUNCTION.match(name) else ""
                reason = f"table-valued function {name}{reads} in FROM"
            elif _path_like(node):
                reason = f"file path {node.sql(dialect='spark')}"
            elif not query:
                reason = f"table {node.sql(dialect='spark')}: an expression reads only its own row"
        elif isinstance(node, exp.Unnest):
            reason = "UNNEST (a table-valued function)"
        elif isinstance(node, exp.Query) and not query:
            reason = "a subquery (SELECT …): an expression reads only its own row"
        elif isinstance(node, exp.Func) and not isinstance(node, _OPERATORS) and id(node) not in named:
            reason = _function_refusal(node, generators=query)
        elif isinstance(node, (exp.Parameter, exp.Placeholder, exp.SessionParameter)):
            reason = f"parameter {node.sql()}"
        if reason and reason not in found:
            found.append(reason)
    return found


def _message(found: Iterable[str], *, what: str, text: str) -> str | None:
    found = list(dict.fromkeys(found))
    if not found:
        return None
    return (f"{what} {text!r} uses what fstore does not run: {'; '.join(found)}. User SQL may call the functions "
            "that `fstore sql-functions` lists, over the declared source's columns")


def _parsed(text: str, dialect: str) -> tuple[list[exp.Expression], list[str], str | None]:
    """The statements of ``text``, what is refused before looking at them (``${`` substitution; when sqlglot
    cannot parse the text, the file or reflection functions its tokens call), and the syntax error if any."""
    found = ["${…} variable substitution (Spark would insert configuration values or environment variables)"] \
        if "${" in text else []
    try:
        return [n for n in sqlglot.parse(text, read=dialect) if n is not None], found, None
    except SqlglotError as exc:
        from fstore.compiler.dialect import sql_error_text

        try:
            tokens = sqlglot.tokenize(text, read=dialect)
        except SqlglotError:
            tokens = []
        for token, after in zip(tokens, tokens[1:]):
            name = token.text.lower()
            if after.token_type == sqlglot.TokenType.L_PAREN and (name in _REFLECTION or _FILE_FUNCTION.match(name)):
                found.append(f"function {name} ({'Java reflection' if name in _REFLECTION else 'it reads files'})")
        return [], found, f"text that is not valid {dialect} SQL ({sql_error_text(exc)})"


def check_expression(text: str, dialect: str, *, feature: str, field: str = "transformation") -> None:
    """Refuse a transformation or window filter that reads anything but its row, or calls a function off the list."""
    message = _expression_refusal(text, dialect, feature, field)
    if message is not None:
        raise InvalidDefinition(message, field=field)


def check_query(text: str, *, field: str = "source.query") -> None:
    """Refuse a query source that is not one SELECT over catalog tables, or that reads files or reflects."""
    message = _query_refusal(text, field)
    if message is not None:
        raise InvalidDefinition(message, field=field)


# The checks are pure functions of the text: cached, since every compilation runs them again.
@functools.lru_cache(maxsize=4096)
def _expression_refusal(text: str, dialect: str, feature: str, field: str) -> str | None:
    nodes, found, syntax = _parsed(text, dialect)
    if syntax and found:  # otherwise the compiler's own parse names the syntax error
        found.append(syntax)
    if len(nodes) > 1:
        found.append(f"{len(nodes)} statements (a {field} must be one SQL expression, not {len(nodes)} statements)")
    elif nodes and isinstance(nodes[0], (exp.Query, exp.DML, exp.DDL, exp.Command)):
        found.append(f"a {type(nodes[0]).__name__.upper()} statement (a {field} must be one SQL expression, "
                     "not a statement)")
    for node in nodes:
        found += _refusals(node, query=False)
    return _message(found, what=f"feature {feature}: {field}", text=text)


@functools.lru_cache(maxsize=1024)
def _query_refusal(text: str, field: str) -> str | None:
    nodes, found, syntax = _parsed(text, "spark")
    if syntax:  # Spark runs a query source's text itself: what cannot be checked does not run
        found.append(syntax)
    if nodes and (len(nodes) != 1 or not isinstance(nodes[0], exp.Query)):
        found.append(f"a source query must be one SELECT, not {', '.join(type(n).__name__.upper() for n in nodes)}")
    for node in nodes:
        found += _refusals(node, query=True)
    return _message(found, what="source query", text=text)


def check_table(name: str, *, field: str = "source.table") -> None:
    """Refuse a table source Spark would read as a file (``text.name`` is the file ``name``)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2].lower() in FILE_NAMESPACES:
        raise InvalidDefinition(f"source table {name!r} uses what fstore does not run: file path {name} ({parts[-2]} "
                                f"is a file format, and Spark would read the file {parts[-1]}); name a catalog table",
                                field=field)


def check_source(source) -> None:
    """The policy for a source: its query or table name (a path source is read by fstore itself)."""
    if source is None:
        return
    if source.query:
        check_query(source.query)
    if source.table:
        check_table(source.table)


def check_feature(feature) -> None:
    """The policy for one feature's SQL: its transformation and window filter."""
    if feature.python:
        return
    if feature.transformation:
        check_expression(feature.transformation, feature.dialect, feature=feature.name)
    if feature.window is not None and feature.window.filter:
        check_expression(feature.window.filter, feature.dialect, feature=feature.name, field="window_filter")


def check_feature_set(fsv) -> None:
    """The policy for every piece of user SQL in a feature set version (its source, every feature)."""
    check_source(fsv.feature_set.source)
    for feature in fsv.features:
        check_feature(feature)


__all__ = ["ALLOWED_FUNCTIONS", "FILE_NAMESPACES", "allowed_functions", "check_expression", "check_query", "check_table",
           "check_source", "check_feature", "check_feature_set"]
