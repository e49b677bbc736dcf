"""Composite features see their inputs after validation; bad policies are refused; failed runs keep their report.

Issue #30, item 3: with ``c_amount`` nulled by ``min_value: 0, on_violation: null``, ``c_half = c_amount / 2``
was served as -2.5.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from fstore.definitions.model import Feature
from fstore.core.errors import ComputeError, InvalidDefinition
from fstore.compute.validation import validate, validate_arrow
from test_validation import by_user, fsv_with

pytestmark = pytest.mark.spark

T0 = datetime(2024, 5, 1)


class Computed:
    """Computed rows as the compiler gives them (composites over the raw values), validated on one engine."""

    def __init__(self, spark, engine: str) -> None:
        data = [("a", T0, 5.0, 2.5, 1.25), ("b", T0, -1.0, -0.5, -0.25), ("c", T0, 150.0, 75.0, 37.5),
                ("d", T0, None, None, None), ("e", T0, 50.0, 25.0, 12.5)]
        df = spark.createDataFrame(data, "user_id string, event_timestamp timestamp, c_amount double, c_half double, "
                                         "c_quarter double")
        if engine == "spark":
            self.validate = lambda fsv: validate(df.select(*[c for c in df.columns if c in _wanted(fsv)]), fsv)
        else:
            from fstore.engine import duckdb as duck

            table = df.toArrow()
            self.validate = lambda fsv: validate_arrow(duck.connect(), table.select(
                [c for c in table.column_names if c in _wanted(fsv)]), fsv)


def _wanted(fsv) -> set[str]:
    return {"user_id", "event_timestamp", *(f.name for f in fsv.features)}


@pytest.fixture(params=["spark", "duckdb"])
def rows(spark, request):
    return Computed(spark, request.param)


def test_a_composite_reads_the_nulled_value_not_the_raw_one(rows):
    fsv = fsv_with(
        {"name": "c_half", "data_type": "float", "transformation": "c_amount / 2", "source_features": ["c_amount"]},
        {"name": "c_amount", "data_type": "float", "transformation": "amount",
         "validation_rules": {"min_value": 0, "on_violation": "null"}},
    )
    result = rows.validate(fsv)
    assert by_user(result.df, "c_amount")["b"] is None
    assert by_user(result.df, "c_half") == {"a": 2.5, "b": None, "c": 75.0, "d": None, "e": 25.0}
    assert result.quality["c_amount"]["violations"] == 1 and result.quality["c_amount"]["min"] == -1.0
    assert result.quality["c_half"]["min"] == 2.5  # the report of a composite is of its validated inputs
    assert [c for c in (result.df.column_names if hasattr(result.df, "column_names") else result.df.columns)
            if c.startswith("__")] == []


def test_a_chain_of_composites_sees_each_policy_in_turn(rows):
    fsv = fsv_with(
        {"name": "c_amount", "data_type": "float", "transformation": "amount",
         "validation_rules": {"min_value": 0, "on_violation": "null"}},
        {"name": "c_half", "data_type": "float", "transformation": "c_amount / 2", "source_features": ["c_amount"],
         "default_value": 40.0, "validation_rules": {"max_value": 40, "on_violation": "default"}},
        {"name": "c_quarter", "data_type": "float", "transformation": "c_half / 2", "source_features": ["c_half"]},
    )
    result = rows.validate(fsv)
    # c: 150 -> 75 breaks max 40 -> default 40 -> quarter 20; b: -1 -> null -> null -> null.
    assert by_user(result.df, "c_quarter") == {"a": 1.25, "b": None, "c": 20.0, "d": None, "e": 12.5}


def test_every_failing_feature_is_named(rows):
    fsv = fsv_with(
        {"name": "c_amount", "data_type": "float", "validation_rules": {"min_value": 0, "on_violation": "fail"}},
        {"name": "c_half", "data_type": "float", "validation_rules": {"not_null": True, "on_violation": "fail"}},
    )
    with pytest.raises(ComputeError, match=r"feature c_amount failed validation.*; feature c_half failed validation") \
            as info:
        rows.validate(fsv)
    assert set(info.value.fstore_figures["quality"]) == {"c_amount", "c_half"}


def test_default_policy_without_a_default_value_is_refused():
    with pytest.raises(InvalidDefinition, match="c_amount has on_violation: default but no default_value") as info:
        Feature.from_dict({"name": "c_amount", "data_type": "float", "transformation": "amount",
                           "validation_rules": {"min_value": 0, "on_violation": "default"}}, feature_set="s")
    assert info.value.field == "default_value"


def _source(tmp_path) -> str:
    folder = tmp_path / "source"
    folder.mkdir()
    frame = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [T0, T0 + timedelta(hours=1)], "amount": [-5.0, 8.0]})
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us]")
    frame.to_parquet(folder / "part-0.parquet", index=False)
    return str(folder)


def _body(source: str, amount_rules: dict, half_rules: dict | None = None) -> dict:
    return {
        "name": "pay", "entities": ["user"],
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [
            {"name": "c_amount", "data_type": "float", "transformation": "amount", "validation_rules": amount_rules},
            {"name": "c_half", "data_type": "float", "transformation": "c_amount / 2", "source_features": ["c_amount"],
             **({"validation_rules": half_rules} if half_rules else {})},
        ],
    }


@pytest.fixture()
def store(settings, on_engine):
    s = on_engine(settings)
    s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    yield s
    s.close()


def test_the_served_composite_is_computed_from_the_validated_value(store, tmp_path):
    store.create_feature_set(_body(_source(tmp_path), {"min_value": 0, "on_violation": "null"}))
    store.materialize("pay", T0, T0 + timedelta(days=1))
    online = store.get_online_features(features=["pay:c_amount", "pay:c_half"], entities={"user_id": [1, 2]})
    assert online["features"]["1"] == {"pay:c_amount": None, "pay:c_half": None}  # not -2.5
    assert online["features"]["2"] == {"pay:c_amount": 8.0, "pay:c_half": 4.0}


def test_apply_refuses_default_without_default_value(store, tmp_path):
    with pytest.raises(InvalidDefinition, match="no default_value"):
        store.create_feature_set(_body(_source(tmp_path), {"min_value": 0, "on_violation": "default"}))


def test_a_failed_run_keeps_its_quality_report_and_names_every_failing_feature(store, tmp_path):
    store.create_feature_set(_body(_source(tmp_path), {"min_value": 0, "on_violation": "fail"},
                                   {"min_value": 0, "on_violation": "fail"}))
    with pytest.raises(ComputeError, match="feature c_amount failed validation.*feature c_half failed validation"):
        store.materialize("pay", T0, T0 + timedelta(days=1))
    run = store.list_runs("pay")["items"][0]
    assert run["status"] == "failed" and "c_half" in run["error"]
    assert run["quality"]["c_amount"]["violations"] == 1 and run["quality"]["c_half"]["violations"] == 1
