"""The retrieval's input checks: timestamp columns, offsets, reserved names, as_of, output names."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fstore.core.errors import InvalidDefinition
from fstore.serving.retrieval.entities import ROW, TS, find_timestamp_column, prepare_entities, prepare_local
from fstore.serving.retrieval.plan import normalize_as_of, output_name


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
def test_pandas_rows_reach_the_plan_as_an_rdd_not_a_local_relation(spark):
    """The optimizer walks a LocalRelation's rows at every plan over it; a retrieval's plan must not hold one."""
    frame = pd.DataFrame({"user_id": range(50), "ts": ["2024-01-01T00:00:00Z"] * 50, "label": range(50)})
    prepared = prepare_entities(spark, frame, None)
    plan = prepared.df.selectExpr("user_id + 1 AS k", ROW)._jdf.queryExecution().optimizedPlan().toString()
    assert "LocalRelation" not in plan and "LogicalRDD" in plan
    rows = prepared.df.orderBy(ROW).toPandas()
    assert list(rows["label"]) == list(range(50)) and list(rows[ROW]) == list(range(50))


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
    from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion, Source, Window

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
    from fstore.serving.retrieval.plan import plan_set

    plan = plan_set(_version(), wanted)
    assert (sorted(plan.windows), plan.recompute, plan.offline) == (windows, recompute, offline)


# -- bad entity rows and as_of, end to end (API, SDK, CLI) -------------------------------------------

T0 = datetime(2024, 1, 1)


@pytest.fixture()
def user_txn(settings, on_engine, tmp_path):
    """The sets of test_retrieval (user_id an int key), user_txn materialized; retrievals on each engine."""
    from test_materialize_support import write_source
    from test_retrieval import create_sets, events, fill_offline

    store = on_engine(settings)
    create_sets(store, write_source(tmp_path / "source", events()))
    fill_offline(store, "user_txn")
    yield store
    store.close()


def historical(store, data, **body):
    """``POST /api/v1/serving/historical`` for rows of ``[user_id, ts]``: (status, JSON)."""
    from fstore.api import create_app

    client = create_app(store=store).test_client()
    answer = client.post("/api/v1/serving/historical", json={
        "features": ["user_txn:amount_x2"], "entity_df": {"columns": ["user_id", "ts"], "data": data}, **body})
    return answer.status_code, answer.get_json()


@pytest.mark.spark
@pytest.mark.parametrize(("value", "words"), [
    (10**30, "out of the 64-bit integer range"), (-(2**63) - 1, "out of the 64-bit integer range"),
    ("abc", "'abc' is not a int"), (1.5, "1.5 is not a int"), ({"a": 1}, "{'a': 1} is not a int"),
    (True, "True is not a int"),
])
def test_key_values_that_cannot_be_the_key_type_are_refused(user_txn, value, words):
    status, answer = historical(user_txn, [[value, "2024-01-02"]])
    assert status == 422, answer
    assert answer["error"]["field"] == "user_id" and words in answer["error"]["message"], answer


@pytest.mark.spark
def test_key_values_of_a_spark_frame_are_checked(user_txn, spark):
    frame = spark.createDataFrame([("1", T0), ("abc", T0)], "user_id string, ts timestamp")
    with pytest.raises(InvalidDefinition) as info:
        user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"])
    assert info.value.field == "user_id" and "'abc' is not a int" in info.value.message
    flags = spark.createDataFrame([(True, T0)], "user_id boolean, ts timestamp")
    with pytest.raises(InvalidDefinition) as info:
        user_txn.get_historical_features(entity_df=flags, features=["user_txn:amount_x2"])
    assert info.value.field == "user_id" and "a int (a join key of feature set user_txn)" in info.value.message


@pytest.mark.spark
def test_nested_columns_of_a_spark_frame_pass_through(user_txn, spark):
    """Maps, arrays and structs ride along on both engines (pandas alone cannot type a map again for DuckDB)."""
    frame = spark.createDataFrame([(1, T0 + timedelta(hours=21), {"a": 1, "b": None}, [1, 2], (1, "x")),
                                   (2, T0 + timedelta(hours=6), None, [], None)],
                                  "user_id long, ts timestamp, m map<string,int>, arr array<int>, st struct<i:int,s:string>")
    result = user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"])
    rows = result.to_df()
    assert rows.m.tolist() == [{"a": 1, "b": None}, None]
    assert [list(a) for a in rows.arr] == [[1, 2], []] and rows.st.tolist() == [{"i": 1, "s": "x"}, None]
    assert rows.user_txn__amount_x2.tolist() == [10.0, 200.0]
    back = result.to_spark(spark).collect()
    assert back[0].m == {"a": 1, "b": None} and back[1].m is None and back[0].st.s == "x"


@pytest.mark.spark
def test_whole_numbers_digit_text_and_nulls_are_keys(user_txn):
    at = (T0 + timedelta(hours=21)).isoformat()
    status, answer = historical(user_txn, [[1, at], [None, at]])  # a null makes the column float
    assert status == 200, answer
    assert [row[-1] for row in answer["data"]] == [10.0, None]
    status, answer = historical(user_txn, [["1", at]])  # as the online lookup takes it
    assert status == 200 and answer["data"][0][-1] == 10.0, answer
    frame = pd.DataFrame({"user_id": [1.0, float("nan")], "ts": [at, at]})
    df = user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"]).to_df()
    assert list(df.user_txn__amount_x2.isna()) == [False, True] and df.user_txn__amount_x2[0] == 10.0


@pytest.mark.spark
@pytest.mark.parametrize("compute_engine", ["spark"], indirect=True)
def test_the_spark_plan_holds_no_literal_of_the_entity_times(user_txn):
    """Generated code holds literals: a plan with the entity rows' times in it would compile anew for every frame."""
    last = T0 + timedelta(hours=21, minutes=13, seconds=7)
    frame = pd.DataFrame({"user_id": [1, 2], "ts": [T0 + timedelta(hours=3, minutes=1, seconds=5), last]})
    result = user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"])
    plan = result.spark_df._jdf.queryExecution().executedPlan().toString()
    assert "BroadcastHashJoin" in plan and "21:13:07" not in plan and "03:01:05" not in plan
    assert result.to_df().user_txn__amount_x2.tolist() == [20.0, 200.0]


@pytest.mark.spark
def test_as_of_before_the_first_version_is_not_found(user_txn):
    from fstore.core.errors import NotFound

    frame = pd.DataFrame({"user_id": [1], "ts": [T0 + timedelta(hours=21)]})
    with pytest.raises(NotFound) as info:
        user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"], as_of="2000-01-01")
    assert info.value.field == "as_of" and "before its first version" in info.value.message
    status, answer = historical(user_txn, [[1, "2024-01-02"]], as_of="2000-01-01")
    assert status == 404 and "before its first version" in answer["error"]["message"], answer
    now = user_txn.get_historical_features(entity_df=frame, features=["user_txn:amount_x2"],
                                           as_of=datetime.now(timezone.utc).isoformat()).to_df()
    assert list(now.user_txn__amount_x2) == [10.0]


@pytest.mark.parametrize(("content", "words"), [
    ("user_id,ts\n1,2024-01-02\n2,2024-01-02,extra\n", "Expected 2 fields in line 3, saw 3"),
    ("", "empty"),
    ("user_id,ts\n", "entity_df has no rows"),
    ("user_id,ts\n1,2024-01-02\n2,yesterday\n", "'yesterday' (row 1)"),
    ("user_id,ts\nabc,2024-01-02\n", "'abc' is not a int"),
])
def test_cli_entity_file_errors_name_the_file(settings, tmp_path, content, words):
    from click.testing import CliRunner

    from fstore.cli import main
    from fstore.store import FeatureStore
    from test_retrieval import create_sets

    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    create_sets(store, str(tmp_path / "source"))
    store.close()
    path = tmp_path / "entities.csv"
    path.write_text(content)
    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url, "COMPUTE_ENGINE": "duckdb"}
    result = CliRunner().invoke(main, ["get-historical-features", "--entities", str(path), "--features",
                                       "user_txn:amount_x2", "--output", str(tmp_path / "out.csv")], env=env)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: entities file {path}: ") and words in lines[0], lines[0]
    assert "format" not in lines[0] and "unexpected" not in lines[0]
