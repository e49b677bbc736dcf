"""The compiler without Spark: the SQL it writes, windows recognised from SQL, event-time rewrites, refusals."""
from __future__ import annotations

import pytest

from fstore.compiler import aggregate_expression, compile_feature_set, feature_expression, spark_type
from fstore.compiler.windows import window_spec
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion
from fstore.core.errors import InvalidDefinition


def make_fsv(*features: dict, source: dict | None = None) -> FeatureSetVersion:
    body = {"name": "users", "entities": ["user"],
            "source": source or {"path": "/data/users.parquet", "event_timestamp_column": "timestamp"}}
    return FeatureSetVersion(
        feature_set=FeatureSet.from_dict(body), version=3,
        entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}),),
        features=tuple(Feature.from_dict(f, feature_set="users") for f in features),
    )


SEED_COUNT = ("COUNT(*) OVER (PARTITION BY user_id ORDER BY timestamp "
              "RANGE BETWEEN INTERVAL '30 days' PRECEDING AND CURRENT ROW)")


def test_compiled_query_shape_and_columns():
    fsv = make_fsv(
        {"name": "age", "data_type": "int", "dialect": "postgres",
         "transformation": "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))"},
        {"name": "purchases_last_30d", "data_type": "int", "dialect": "postgres", "transformation": SEED_COUNT},
        {"name": "spend_7d", "data_type": "float", "transformation": "amount", "window_size": "7d", "aggregation": "sum"},
        {"name": "ratio", "data_type": "float", "transformation": "purchases_last_30d / NULLIF(age, 0)"},
        {"name": "tags", "data_type": "list<string>", "transformation": "array(category)"},
    )
    c = compile_feature_set(fsv)
    assert c.source_view == "fstore_source_users_v3"
    assert c.lookback_seconds == 30 * 86400
    assert c.key_columns == ("user_id",)
    assert c.feature_columns == ("age", "purchases_last_30d", "spend_7d", "ratio", "tags")
    for stage in ("source_rows AS", "row_features AS", "composite_1 AS"):
        assert stage in c.sql
    assert "RANGE BETWEEN 2591999999999 PRECEDING AND CURRENT ROW" in c.sql  # (t - 30d, t]
    assert "RANGE BETWEEN 604799999999 PRECEDING AND CURRENT ROW" in c.sql
    assert "`__f_purchases_last_30d` / NULLIF(`__f_age`, 0) AS `__f_ratio`" in c.sql
    assert "CAST(`__f_tags` AS ARRAY<STRING>) AS `tags`" in c.sql
    assert c.projection[:3] == ("`user_id`", "__fs_event_time AS event_timestamp", "__fs_created_time AS created_timestamp")
    assert "CURRENT_DATE" not in c.sql.upper().replace("CURRENT_DATE/NOW()", "")
    assert "AGE(" not in c.sql


def test_created_timestamp_and_renamed_entity_columns():
    fsv = make_fsv({"name": "x", "data_type": "int", "transformation": "1"},
                   source={"path": "/p", "event_timestamp_column": "ts", "created_timestamp_column": "loaded_at",
                           "entity_columns": ["customer"]})
    sql = compile_feature_set(fsv).sql
    assert "CAST(`loaded_at` AS TIMESTAMP) AS __fs_created_time" in sql
    assert "`customer` AS `user_id`" in sql


@pytest.mark.parametrize(("text", "dialect", "function", "size", "value", "filt"), [
    (SEED_COUNT, "postgres", "count", 30 * 86400, None, None),
    ("count(distinct merchant) over (partition by user_id order by timestamp range between interval 1 hour preceding and current row)",
     "spark", "count_distinct", 3600, "`merchant`", None),
    ("SUM(amount) FILTER (WHERE amount > 0) OVER (PARTITION BY user_id ORDER BY timestamp "
     "RANGE BETWEEN INTERVAL '15 minutes' PRECEDING AND CURRENT ROW)", "postgres", "sum", 900, "`amount`", "`amount` > 0"),
    ("LAST_VALUE(amount) OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL '30' SECOND PRECEDING AND CURRENT ROW)",
     "spark", "last", 30, "`amount`", None),
    ("stddev(amount) OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL '7 days' PRECEDING AND CURRENT ROW)",
     "postgres", "stddev", 7 * 86400, "`amount`", None),
])
def test_windows_recognised_from_sql(text, dialect, function, size, value, filt):
    fsv = make_fsv({"name": "w", "data_type": "float", "dialect": dialect, "transformation": text})
    spec = window_spec(fsv, fsv.features[0], event_time="t")
    assert (spec.function, spec.size_seconds, spec.value, spec.filter) == (function, size, value, filt)


def test_declared_window_and_sql_window_give_the_same_aggregate():
    declared = make_fsv({"name": "n", "data_type": "int", "window_size": "30d", "aggregation": "count"})
    written = make_fsv({"name": "n", "data_type": "int", "dialect": "postgres", "transformation": SEED_COUNT, "window_size": "30d"})
    assert aggregate_expression(declared, "n", event_flag="is_event") == aggregate_expression(written, "n", event_flag="is_event")
    expr = aggregate_expression(declared, "n", event_flag="is_event")
    assert expr.startswith("COUNT(CASE WHEN `is_event` THEN 1 END) OVER (PARTITION BY `user_id`")


@pytest.mark.parametrize(("features", "message"), [
    ([{"name": "w", "data_type": "int", "transformation":
       "COUNT(*) OVER (PARTITION BY user_id ORDER BY other_ts RANGE BETWEEN INTERVAL '1 day' PRECEDING AND CURRENT ROW)"}],
     "ORDER BY the event timestamp column timestamp"),
    ([{"name": "w", "data_type": "int", "transformation":
       "COUNT(*) OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL '1 day' PRECEDING AND INTERVAL '1 day' FOLLOWING)"}],
     "RANGE BETWEEN"),
    ([{"name": "w", "data_type": "int", "transformation":
       "ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL '1 day' PRECEDING AND CURRENT ROW)"}],
     "not supported"),
    ([{"name": "w", "data_type": "int", "transformation": f"1 + {SEED_COUNT}"}], "whole transformation"),
    ([{"name": "w", "data_type": "int", "aggregation": "sum", "window_size": "1d", "transformation": SEED_COUNT}], "disagrees"),
    ([{"name": "a", "data_type": "int", "transformation": "x + 1"},
      {"name": "b", "data_type": "int", "transformation": "a + 1", "source_features": ["zz"]}], "zz"),
    ([{"name": "p", "data_type": "int", "python": "m:f"},
      {"name": "q", "data_type": "int", "transformation": "p + 1", "source_features": ["p"]}], "python"),
    ([{"name": "user_id", "data_type": "int", "transformation": "1"}], "taken"),
    ([{"name": "x", "data_type": "int", "transformation": "SELECT 1 FROM t"}], "not a statement"),
    ([{"name": "x", "data_type": "int", "transformation": "amount; SELECT 1"}], "one SQL expression, not 2 statements"),
    ([{"name": "x", "data_type": "int", "dialect": "postgres", "transformation": "EXTRACT(HOUR FROM AGE(now(), born))"}], "HOUR"),
])
def test_refusals_name_the_problem(features, message):
    with pytest.raises(InvalidDefinition, match=message):
        compile_feature_set(make_fsv(*features))


def test_a_syntax_error_is_one_plain_line_naming_where():
    with pytest.raises(InvalidDefinition) as raised:
        compile_feature_set(make_fsv({"name": "x", "data_type": "int", "transformation": "amount +* 2"}))
    message = raised.value.message
    assert "\n" not in message and "\x1b" not in message, repr(message)
    assert message.endswith("is not valid spark SQL: Invalid expression / Unexpected token at line 1, column 11, near '2'")


def test_features_referring_to_features_become_composites_without_declaring():
    fsv = make_fsv({"name": "b", "data_type": "float", "transformation": "a * 2"},
                   {"name": "a", "data_type": "float", "transformation": "amount"})
    c = compile_feature_set(fsv)
    assert "`__f_a` * 2 AS `__f_b`" in c.sql and c.sql.index("composite_1") > c.sql.index("row_features")
    # the event time is what "now" means, in every spelling
    for text, dialect in (("current_date", "spark"), ("current_date()", "spark"), ("now()", "postgres"),
                          ("current_timestamp", "postgres"), ("localtimestamp", "postgres")):
        f = make_fsv({"name": "x", "data_type": "timestamp", "transformation": text, "dialect": dialect})
        assert "`event_timestamp`" in feature_expression(f, "x"), text


def test_python_features_are_listed_for_the_engine():
    fsv = make_fsv({"name": "p", "data_type": "float", "python": "my.module:score"},
                   {"name": "a", "data_type": "int", "transformation": "1"})
    c = compile_feature_set(fsv)
    assert c.python_features == (("p", "my.module:score", "DOUBLE"),)
    assert "python feature p = my.module:score" in c.sql
    assert spark_type("list<int>") == "ARRAY<BIGINT>" and spark_type("bool") == "BOOLEAN"



def test_seed_window_accepted_before_the_set_has_a_source():
    """The seed's bodies create the set without a source; its window's ORDER BY column is checked later."""
    fsv = FeatureSetVersion(
        feature_set=FeatureSet.from_dict({"name": "user_activity", "entities": ["user_id"]}), version=1,
        entities=(Entity.from_dict({"name": "user_id"}),),
        features=(Feature.from_dict({"name": "n", "data_type": "int", "dialect": "postgres",
                                     "transformation": SEED_COUNT}, feature_set="user_activity"),),
    )
    assert window_spec(fsv, fsv.features[0], event_time="t").size_seconds == 30 * 86400
