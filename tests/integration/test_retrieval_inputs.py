"""The retrieval's input checks: timestamp columns, offsets, reserved names, as_of, output names."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fstore.errors import InvalidDefinition
from fstore.retrieval.entities import ROW, TS, find_timestamp_column, prepare_entities, prepare_local
from fstore.retrieval.historical import normalize_as_of, output_name


@pytest.mark.parametrize(("columns", "given", "expected"), [
    (["user_id", "event_timestamp", "ts"], None, "event_timestamp"),
    (["user_id", "timestamp"], None, "timestamp"),
    (["user_id", "ts"], None, "ts"),
    (["user_id", "label_time"], "label_time", "label_time"),
])
def test_timestamp_column_found(columns, given, expected):
    assert find_timestamp_column(columns, given) == expected


def test_missing_timestamp_column_is_named():
    with pytest.raises(InvalidDefinition) as info:
        find_timestamp_column(["user_id", "when"], None)
    assert info.value.field == "timestamp_column" and "event_timestamp, timestamp, ts" in info.value.message


@pytest.mark.parametrize(("written", "column"), [
    ("txn_count", "txn_count"), ("user_txn:txn_count", "user_txn__txn_count"), ("user_txn@3:txn_count", "user_txn__txn_count"),
])
def test_output_names(written, column):
    assert output_name(written) == column


@pytest.mark.parametrize(("value", "sets", "expected"), [
    (None, ["a"], None), (3, ["a"], 3), ("4", ["a", "a"], 4),
    ("2024-01-01T02:00:00+02:00", ["a", "b"], datetime(2024, 1, 1)),
    (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), ["a"], datetime(2024, 1, 1)),
])
def test_as_of_forms(value, sets, expected):
    assert normalize_as_of(value, sets) == expected


@pytest.mark.parametrize(("value", "sets", "words"), [
    (3, ["a", "b"], "one feature set"), (-1, ["a"], ">= 0"), ("last tuesday", ["a"], "neither"), (True, ["a"], "version"),
    (1.5, ["a"], "version"),
])
def test_bad_as_of_is_refused(value, sets, words):
    with pytest.raises(InvalidDefinition) as info:
        normalize_as_of(value, sets)
    assert info.value.field == "as_of" and words in info.value.message


def prepare(request, engine: str, frame, timestamp_column=None):
    """The entity frame prepared for ``engine`` (Spark only started for Spark), and its rows as pandas."""
    if engine == "duckdb":
        prepared = prepare_local(frame, timestamp_column)
        return prepared, prepared.df
    prepared = prepare_entities(request.getfixturevalue("spark"), frame, timestamp_column)
    return prepared, prepared.df.orderBy(ROW).toPandas()


@pytest.mark.spark
def test_pandas_offsets_normalized_and_rows_numbered(request, compute_engine):
    frame = pd.DataFrame({
        "user_id": [1, 2, 3],
        "ts": ["2024-01-01T05:00:00+05:00", "2024-01-01T00:00:00Z", datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))],
    })
    prepared, rows = prepare(request, compute_engine, frame)
    assert list(rows[TS]) == [pd.Timestamp("2024-01-01")] * 3 and list(rows[ROW]) == [0, 1, 2]
    assert prepared.min_ts == prepared.max_ts == datetime(2024, 1, 1) and prepared.count == 3
    assert list(frame.ts)[1] == "2024-01-01T00:00:00Z"  # the caller's frame is left as it was


@pytest.mark.spark
@pytest.mark.parametrize(("frame", "field", "words"), [
    (pd.DataFrame({"user_id": [1], "ts": [1704067200]}), "timestamp_column", "numbers"),
    (pd.DataFrame({"user_id": [1], "ts": [None]}), "timestamp_column", "empty"),
    (pd.DataFrame({"user_id": [1], "ts": ["2024-01-01"], "__fs_row": [0]}), "entity_df", "reserved"),
    (pd.DataFrame({"user_id": [], "ts": []}), "entity_df", "no rows"),
    (pd.DataFrame([[1, "2024-01-01", 2]], columns=["user_id", "ts", "user_id"]), "entity_df", "duplicate"),
])
def test_bad_entity_frames_are_refused(request, compute_engine, frame, field, words):
    with pytest.raises(InvalidDefinition) as info:
        prepare(request, compute_engine, frame)
    assert info.value.field == field and words in info.value.message


def _version():
    from fstore.definitions import Entity, Feature, FeatureSet, FeatureSetVersion, Source, Window

    def f(name, **kw):
        return Feature(name=name, feature_set="s", data_type=kw.pop("data_type", "float"), **kw)

    features = (
        f("amount_x2", transformation="amount * 2"),
        f("c2d", data_type="int", window=Window(size_seconds=172800, function="count")),
        f("s2d", window=Window(size_seconds=172800, function="sum"), transformation="amount"),
        f("avg2d", transformation="s2d / c2d", source_features=("s2d", "c2d")),
        f("mixed", transformation="c2d * amount", source_features=("c2d",)),
        f("plus", transformation="avg2d + amount_x2"),
    )
    return FeatureSetVersion(feature_set=FeatureSet(name="s", entities=("user",), source=Source(path="/x")), version=1,
                             entities=(Entity(name="user", join_keys=("user_id",)),), features=features)


@pytest.mark.parametrize(("wanted", "windows", "recompute", "offline"), [
    (("avg2d",), ["c2d", "s2d"], ["avg2d"], []),
    (("mixed",), [], [], ["mixed"]),  # reads a source column: its offline value
    (("plus",), ["c2d", "s2d"], ["avg2d", "plus"], ["amount_x2"]),
    (("amount_x2", "c2d"), ["c2d"], [], ["amount_x2"]),
])
def test_which_features_are_recomputed_at_label_time(wanted, windows, recompute, offline):
    from fstore.retrieval.historical import plan_set

    plan = plan_set(_version(), wanted)
    assert (sorted(plan.windows), plan.recompute, plan.offline) == (windows, recompute, offline)
