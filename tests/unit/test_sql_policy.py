"""The SQL policy (``fstore.compiler.sql_policy``): what user SQL may call and read, and what it names when refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fstore.compiler import compile_feature_set, feature_expression
from fstore.compiler.sql_policy import ALLOWED_FUNCTIONS, check_expression, check_query, check_table
from fstore.definitions.model import Entity, FeatureSet, FeatureSetVersion, Feature
from fstore.core.errors import InvalidDefinition

EXAMPLES = Path(__file__).resolve().parents[2] / "conf" / "examples"

ALLOWED = [
    ("spark", "amount"),
    ("spark", "DATEDIFF(CAST(timestamp AS DATE), signup_date)"),
    ("spark", "purchases_last_30d / NULLIF(days_since_signup, 0)"),
    ("postgres", "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))"),
    ("postgres", "date_part('year', age(dob)) + amount::numeric"),
    ("postgres", "now() - INTERVAL '1 day' > ts AND name ~ '^a'"),
    ("spark", "CASE WHEN a IN (1, 2) THEN upper(name) ELSE lower(name) END"),
    ("spark", "coalesce(nvl(a, b), ifnull(c, 0)) + greatest(a, b) - least(a, b)"),
    ("spark", "concat_ws('-', substr(name, 1, 2), trim(name)) || lpad(name, 3, 'x')"),
    ("spark", "regexp_extract(s, 'a(b)', 1) RLIKE '^b' AND s LIKE 'a%'"),
    ("spark", "size(split(s, ',')) + instr(s, 'x') + length(s)"),
    ("spark", "round(sqrt(abs(x)), 2) + floor(ln(x + 1)) + pow(x, 2) + pmod(x, 7)"),
    ("spark", "date_format(ts, 'yyyy') || hour(ts) || dayofweek(ts) || date_add(ts, 1)"),
    ("spark", "unix_timestamp(ts) - unix_micros(ts) + months_between(ts, signup)"),
    ("spark", "transform(arr, x -> x + 1)[0] + aggregate(arr, 0, (acc, x) -> acc + x)"),
    ("spark", "exists(arr, x -> x > 1) AND array_contains(arr, 2) AND element_at(m, 'k') IS NOT NULL"),
    ("spark", "named_struct('a', 1).a + map('k', 1)['k']"),
    ("spark", "percentile_approx(amount, 0.5)"),
    ("spark", "COUNT(DISTINCT merchant) OVER (PARTITION BY user_id ORDER BY ts "
              "RANGE BETWEEN INTERVAL '30 days' PRECEDING AND CURRENT ROW)"),
    ("spark", "STDDEV(amount) FILTER (WHERE amount > 0) OVER (PARTITION BY user_id ORDER BY ts "
              "RANGE BETWEEN INTERVAL '1 day' PRECEDING AND CURRENT ROW)"),
    ("spark", "sha2(name, 256) || md5(name) || hash(name)"),
    ("spark", "CAST(amount AS INT) + TRY_CAST(name AS DOUBLE)"),
    ("spark", "*"),
]

REFUSED = [
    ("spark", "(SELECT max(content) FROM read_text('/etc/passwd'))", "table-valued function read_text (it reads files)"),
    ("spark", "(SELECT count(*) FROM read_csv_auto('/etc/passwd'))", "table-valued function read_csv_auto"),
    ("spark", "(SELECT max(content) FROM read_blob('/etc/passwd'))", "table-valued function read_blob"),
    ("spark", "(SELECT max(a) FROM read_parquet('/data/*.parquet'))", "table-valued function read_parquet"),
    ("spark", "(SELECT max(file) FROM glob('/etc/*'))", "function glob (it reads files)"),
    ("spark", "(SELECT max(value) FROM text.`/etc/passwd`)", "file path text.`/etc/passwd`"),
    ("spark", "reflect('java.lang.System', 'getenv', 'HOME')", "function reflect (Java reflection)"),
    ("spark", "java_method('java.lang.System', 'getenv', 'HOME')", "function java_method (Java reflection)"),
    ("spark", "try_reflect('java.lang.System', 'getenv', 'HOME')", "function try_reflect (Java reflection)"),
    ("spark", "amount + (SELECT max(amount) FROM payments)", "table payments"),
    ("spark", "user_id IN (SELECT user_id FROM vip)", "a subquery"),
    ("spark", "EXISTS (SELECT 1)", "a subquery"),
    ("spark", "SELECT amount FROM events", "a SELECT statement"),
    ("spark", "no_such_function(amount)", "function no_such_function (not on the allow-list)"),
    ("spark", "current_user()", "function current_user (not on the allow-list)"),
    ("spark", "input_file_name()", "function input_file_name (it reads files)"),
    ("spark", "getenv('HOME')", "function getenv"),
    ("spark", "'${env:HOME}'", "${…} variable substitution"),
    ("postgres", "pg_read_file('/etc/passwd')", "function pg_read_file (it reads files)"),
    ("postgres", "current_setting('data_directory')", "function current_setting (not on the allow-list)"),
    ("postgres", "(SELECT string_agg(usename, ',') FROM pg_user)", "table pg_user"),
]


@pytest.mark.parametrize(("dialect", "text"), ALLOWED)
def test_allowed_expressions_pass(dialect, text):
    check_expression(text, dialect, feature="f")


@pytest.mark.parametrize(("dialect", "text", "named"), REFUSED)
def test_refused_expressions_name_the_function_or_construct(dialect, text, named):
    with pytest.raises(InvalidDefinition) as raised:
        check_expression(text, dialect, feature="leak")
    assert named in raised.value.message
    assert raised.value.message.startswith("feature leak: transformation")
    assert raised.value.field == "transformation"


def test_every_refusal_in_one_expression_is_named():
    with pytest.raises(InvalidDefinition) as raised:
        check_expression("java_method('a', 'b') || (SELECT max(c) FROM read_text('/x'))", "spark", feature="f")
    message = raised.value.message
    assert "java_method" in message and "read_text" in message and "a subquery" in message


@pytest.mark.parametrize("query", [
    "SELECT * FROM events_table",
    "SELECT user_id, ts, amount * 2 AS amount FROM db.events WHERE amount > 1",
    "WITH recent AS (SELECT * FROM events WHERE ts > '2024-01-01') SELECT * FROM recent",
    "SELECT e.*, u.segment FROM events e JOIN users u ON e.user_id = u.user_id",
    "SELECT user_id, ts, item FROM orders LATERAL VIEW explode(items) x AS item",
    "SELECT * FROM spark_catalog.default.events UNION ALL SELECT * FROM archive.events",
])
def test_allowed_queries_pass(query):
    check_query(query)


@pytest.mark.parametrize(("query", "named"), [
    ("SELECT * FROM text.`/etc/passwd`", "file path text.`/etc/passwd`"),
    ("SELECT * FROM parquet.`/data/other`", "file path parquet.`/data/other`"),
    ("SELECT * FROM `/etc/passwd`", "file path `/etc/passwd`"),
    ("SELECT * FROM `org.apache.spark.sql.parquet`.`/data`", "file path"),
    ("SELECT * FROM read_files('/etc')", "table-valued function read_files (it reads files)"),
    ("SELECT * FROM range(10)", "table-valued function range"),
    ("SELECT java_method('java.lang.System', 'getenv', 'HOME') AS v FROM events", "function java_method"),
    ("SELECT reflect('java.lang.System', 'getenv', 'HOME') AS v FROM events", "function reflect"),
    ("SELECT '${env:AWS_SECRET_ACCESS_KEY}' AS v FROM events", "${…} variable substitution"),
    ("SELECT * FROM events; SELECT 1", "one SELECT, not SELECT, SELECT"),
    ("SET spark.sql.runSQLOnFiles=true", "one SELECT, not SET"),
    ("INSERT INTO events SELECT * FROM other", "one SELECT, not INSERT"),
    ("SELECT * FROM", "not valid spark SQL"),
])
def test_refused_queries_name_the_construct(query, named):
    with pytest.raises(InvalidDefinition) as raised:
        check_query(query)
    assert named in raised.value.message and raised.value.field == "source.query"


@pytest.mark.parametrize(("table", "ok"), [("events", True), ("db.events", True), ("text.Makefile", False),
                                           ("parquet.data", False), ("JSON.x", False)])
def test_a_table_source_in_a_file_namespace_is_refused(table, ok):
    if ok:
        check_table(table)
    else:
        with pytest.raises(InvalidDefinition, match="file path"):
            check_table(table)


def _fsv(features: list[dict], source: dict | None = None) -> FeatureSetVersion:
    fs = FeatureSet.from_dict({"name": "s", "entities": ["user_id"],
                               "source": source or {"path": "/nonexistent/s", "event_timestamp_column": "ts"}})
    feats = tuple(Feature.from_dict({**f, "feature_set_id": "s"}) for f in features)
    return FeatureSetVersion(feature_set=fs, version=1, entities=(Entity(name="user_id", join_keys=("user_id",)),),
                             features=feats, feature_versions={f.name: 1 for f in feats})


def test_the_compiler_itself_refuses_a_definition_that_skipped_apply():
    """Defense in depth: compiling (every engine does before computing) runs the policy."""
    fsv = _fsv([{"name": "leak", "data_type": "string", "transformation": "java_method('java.lang.System', 'getenv', 'HOME')"}])
    with pytest.raises(InvalidDefinition, match="java_method"):
        compile_feature_set(fsv)
    with pytest.raises(InvalidDefinition, match="java_method"):
        feature_expression(fsv, "leak")
    window = _fsv([{"name": "w", "data_type": "int", "window_size": "1d", "aggregation": "count", "transformation": "*",
                    "window_filter": "amount > (SELECT count(*) FROM read_text('/etc/passwd'))"}])
    with pytest.raises(InvalidDefinition, match="window_filter .*read_text"):
        compile_feature_set(window)
    query = _fsv([{"name": "x", "data_type": "int", "transformation": "1"}],
                 {"query": "SELECT * FROM text.`/etc/passwd`", "event_timestamp_column": "ts"})
    with pytest.raises(InvalidDefinition, match="file path"):
        compile_feature_set(query)


def test_every_example_transformation_passes():
    seen = 0
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for fs in (yaml.safe_load(path.read_text()) or {}).get("feature_sets", []):
            for f in fs.get("features", []):
                for field in ("transformation", "window_filter"):
                    if f.get(field):
                        check_expression(f[field], f.get("dialect", "spark"), feature=f["name"], field=field)
                        seen += 1
    assert seen >= 5


def test_the_allow_list_is_printed_by_the_cli():
    from fstore.cli import main

    result = CliRunner().invoke(main, ["sql-functions"])
    assert result.exit_code == 0, result.output
    printed = result.output.split()
    assert printed == sorted(ALLOWED_FUNCTIONS) and "count" in printed and "java_method" not in printed
