"""Validation rules and policies on real Spark and on the DuckDB engine, with the quality report."""
from __future__ import annotations

from datetime import datetime

import pytest

from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion
from fstore.core.errors import ComputeError
from fstore.compute.validation import validate, validate_arrow

pytestmark = pytest.mark.spark


def fsv_with(*features: dict) -> FeatureSetVersion:
    return FeatureSetVersion(
        feature_set=FeatureSet.from_dict({"name": "v", "entities": ["user"]}), version=1,
        entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}),),
        features=tuple(Feature.from_dict({"transformation": "x", **f}, feature_set="v") for f in features),
    )


class Rows:
    """The same five rows as a Spark DataFrame or an Arrow table, validated by that engine's function."""

    def __init__(self, spark, engine: str) -> None:
        ts = datetime(2024, 1, 1)
        data = [("a", ts, 5.0, "gold", 1), ("b", ts, -1.0, "silver", 2), ("c", ts, 150.0, "bronze", 3),
                ("d", ts, None, "GOLD", None), ("e", ts, 50.0, None, 5)]
        df = spark.createDataFrame(data, "user_id string, event_timestamp timestamp, score double, tier string, n bigint")
        self.columns = df.columns
        if engine == "spark":
            self.validate = lambda fsv: validate(df, fsv)
        else:
            from fstore.engine import duckdb as duck

            table = df.toArrow()
            self.validate = lambda fsv: validate_arrow(duck.connect(), table, fsv)


@pytest.fixture(params=["spark", "duckdb"])
def rows(spark, request):
    return Rows(spark, request.param)


def by_user(df, column):
    records = df.to_pylist() if hasattr(df, "to_pylist") else [r.asDict() for r in df.collect()]
    return {r["user_id"]: r[column] for r in records}


def columns_of(df):
    return df.column_names if hasattr(df, "column_names") else df.columns


def test_null_and_default_policies_and_quality(rows):
    fsv = fsv_with(
        {"name": "score", "data_type": "float", "default_value": 0.0,
         "validation_rules": {"min_value": 0, "max_value": 100, "on_violation": "default"}},
        {"name": "tier", "data_type": "string", "validation_rules": {"allowed_values": ["gold", "silver"], "on_violation": "null"}},
        {"name": "n", "data_type": "int", "validation_rules": {"not_null": True, "on_violation": "default"}, "default_value": -1},
    )
    result = rows.validate(fsv)
    assert result.rows_rejected == 0
    assert by_user(result.df, "score") == {"a": 5.0, "b": 0.0, "c": 0.0, "d": None, "e": 50.0}
    assert by_user(result.df, "tier") == {"a": "gold", "b": "silver", "c": None, "d": None, "e": None}
    assert by_user(result.df, "n") == {"a": 1, "b": 2, "c": 3, "d": -1, "e": 5}
    q = result.quality
    assert q["score"] == {"count": 5, "nulls": 1, "violations": 2, "min": -1.0, "max": 150.0,
                          "mean": pytest.approx((5 - 1 + 150 + 50) / 4), "distinct": 4}
    assert q["tier"]["violations"] == 2 and q["tier"]["nulls"] == 1 and q["tier"]["mean"] is None
    assert q["n"]["violations"] == 1
    assert columns_of(result.df) == rows.columns


def test_drop_row_counts_rejected_rows(rows):
    fsv = fsv_with({"name": "tier", "data_type": "string", "validation_rules": {"regex": "[a-z]+", "on_violation": "drop_row"}},
                   {"name": "score", "data_type": "float", "validation_rules": {"max_value": 100, "on_violation": "drop_row"}})
    result = rows.validate(fsv)
    assert sorted(by_user(result.df, "tier")) == ["a", "b", "e"]  # GOLD fails the full-match regex, 150 the max
    assert result.rows_rejected == 2


def test_fail_names_the_feature_the_rule_and_the_count(rows):
    fsv = fsv_with({"name": "score", "data_type": "float", "validation_rules": {"min_value": 0, "max_value": 100, "on_violation": "fail"}})
    with pytest.raises(ComputeError, match=r"feature score failed validation \(min_value 0: 1 value, max_value 100: 1 value of 5 rows\)"):
        rows.validate(fsv)
    ok = fsv_with({"name": "score", "data_type": "float", "validation_rules": {"max_value": 1000, "on_violation": "fail"}})
    assert len(by_user(rows.validate(ok).df, "score")) == 5


def test_features_without_rules_get_a_quality_report(rows):
    result = rows.validate(fsv_with({"name": "n", "data_type": "int"}))
    assert result.quality["n"] == {"count": 5, "nulls": 1, "violations": 0, "min": 1, "max": 5, "mean": 2.75, "distinct": 4}
