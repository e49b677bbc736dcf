"""The offline store written from Arrow rows (the DuckDB engine): the table, versions and semantics of Spark's."""
from __future__ import annotations

import os
from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from fstore.storage import offline
from fstore.storage import offline_arrow
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion
from fstore.core.errors import ComputeError, InvalidDefinition

pytestmark = pytest.mark.spark

T0 = datetime(2024, 3, 1)
UTC_US = pa.timestamp("us", tz="UTC")


def feature(name: str, data_type: str) -> Feature:
    return Feature.from_dict({"name": name, "data_type": data_type, "transformation": name}, feature_set="txn")


def version(*features: Feature, number: int = 1) -> FeatureSetVersion:
    return FeatureSetVersion(feature_set=FeatureSet.from_dict({"name": "txn", "entities": ["user"]}), version=number,
                             entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}),),
                             features=features)


FSV = version(feature("amount", "float"), feature("n", "int"))


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def arrow_rows(rows: list[tuple[str, datetime, float, int]], *, naive: bool = False, **extra: list) -> pa.Table:
    """Feature rows as an in-process engine hands them over (created = event time), with extra columns."""
    ts = pa.array([r[1] for r in rows], pa.timestamp("us")).cast(pa.timestamp("us") if naive else UTC_US)
    columns = {"user_id": pa.array([r[0] for r in rows], pa.large_string()), "event_timestamp": ts,
               "created_timestamp": ts, "amount": pa.array([r[2] for r in rows], pa.float64()),
               "n": pa.array([r[3] for r in rows], pa.int64())}
    return pa.table({**columns, **extra})


def spark_frame(spark, rows: list[tuple[str, datetime, float, int]]):
    """The same rows as the compiler's Spark output (see test_offline.frame)."""
    import pandas as pd

    pdf = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "amount", "n"])
    pdf["created_timestamp"] = pdf["event_timestamp"]
    return spark.createDataFrame(pdf[["user_id", "event_timestamp", "created_timestamp", "amount", "n"]],
                                 "user_id string, event_timestamp timestamp, created_timestamp timestamp, "
                                 "amount double, n bigint")


def contents(spark, settings, **kw) -> list[tuple]:
    """The table as Spark's reader sees it."""
    df = offline.read_table(spark, settings, "txn", **kw)
    return sorted((r.user_id, r.event_timestamp, r.amount, r.n, str(r.event_date)) for r in df.collect())


def delta_contents(settings) -> list[tuple]:
    """The table as deltalake (another Delta reader) sees it."""
    from deltalake import DeltaTable

    table = DeltaTable(offline.table_uri(settings, "txn")).to_pyarrow_table()
    return sorted((r["user_id"], r["event_timestamp"].replace(tzinfo=None), r["amount"], r["n"], str(r["event_date"]))
                  for r in table.to_pylist())


def delta_schema(settings) -> pa.Schema:
    from deltalake import DeltaTable

    return pa.schema(DeltaTable(offline.table_uri(settings, "txn")).schema().to_arrow())


def file_schemas(settings) -> set[pa.Schema]:
    """The Arrow schemas of the table's current data files (without pandas/Spark metadata)."""
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    return {pq.read_schema(u).remove_metadata() for u in DeltaTable(offline.table_uri(settings, "txn")).file_uris()}


FIRST = [("a", hours(1), 1.0, 1), ("a", hours(20), 2.0, 2), ("b", hours(30), 3.0, 3), ("b", hours(50), 4.0, 4)]
# a partial-day range [10h, 31h): replaces a@20h and b@30h; a@1h and b@50h (same days, outside) survive
SUB = [("a", hours(12), 9.0, 9), ("c", hours(30.5), 8.0, 8), ("z", hours(31), 7.0, 7)]  # z is outside: dropped
AFTER_SUB = [("a", hours(1), 1.0, 1), ("a", hours(12), 9.0, 9), ("b", hours(50), 4.0, 4), ("c", hours(30.5), 8.0, 8)]


def expected(rows: list[tuple]) -> list[tuple]:
    return sorted(r + (str(r[1].date()),) for r in rows)


def test_an_arrow_write_reads_back_exactly_through_spark_and_deltalake(spark, settings):
    outside = [("x", hours(-1), 0.5, 0), ("y", hours(72), 0.5, 0)]  # outside [T0, 72h): not written
    table = arrow_rows(FIRST + outside, naive=True, unrelated=pa.array([0] * 6))
    assert offline_arrow.write_range_arrow(settings, FSV, table, T0, hours(72)) == 0
    assert contents(spark, settings) == delta_contents(settings) == expected(FIRST)
    schema = delta_schema(settings)
    assert schema.names == ["user_id", "event_timestamp", "created_timestamp", "amount", "n", "event_date"]
    assert schema.field("event_timestamp").type == UTC_US and schema.field("user_id").type == pa.string()
    assert schema.field("event_date").type == pa.date32()
    # one file a day, in its day folder, with stats from its footer
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(offline.table_uri(settings, "txn")).get_add_actions(flatten=True)).to_pylist()
    assert sorted(a["path"].split("/")[0] for a in actions) == ["event_date=2024-03-01", "event_date=2024-03-02",
                                                                "event_date=2024-03-03"]
    assert sum(a["num_records"] for a in actions) == 4 and min(a["min.amount"] for a in actions) == 1.0
    assert all(a["min.event_timestamp"] is not None and a["null_count.n"] == 0 for a in actions)
    assert not os.listdir(os.path.join(offline.table_uri(settings, "txn"), "_staging"))


def test_a_sub_range_rewrite_replaces_exactly_its_rows_once_per_version(spark, settings, monkeypatch):
    offline_arrow.write_range_arrow(settings, FSV, arrow_rows(FIRST), T0, hours(72))
    first = contents(spark, settings)
    assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows(SUB), hours(10), hours(31)) == 1
    second = contents(spark, settings)
    assert second == delta_contents(settings) == expected(AFTER_SUB)
    assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows(SUB), hours(10), hours(31)) == 2  # idempotent
    assert contents(spark, settings) == second
    assert contents(spark, settings, as_of=0) == first and contents(spark, settings, as_of=1) == second
    # a whole-day range whose files lie inside it: removed without being read, replaced by nothing
    with monkeypatch.context() as patch:
        patch.setattr(offline_arrow, "_read_outside_arrow", None)
        assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows([]), hours(48), hours(72)) == 3
    assert contents(spark, settings) == expected(AFTER_SUB[:2] + AFTER_SUB[3:])


@pytest.mark.parametrize(("first_engine", "second_engine"), [("spark", "arrow"), ("arrow", "spark")])
def test_spark_and_arrow_writes_of_one_table_mix(spark, settings, first_engine, second_engine):
    def write(engine, rows, start, end):
        if engine == "spark":
            return offline.write_range(spark, settings, FSV, spark_frame(spark, rows), start, end)
        return offline_arrow.write_range_arrow(settings, FSV, arrow_rows(rows), start, end)

    write(first_engine, FIRST, T0, hours(72))
    schema, files = delta_schema(settings), file_schemas(settings)
    assert write(second_engine, SUB, hours(10), hours(31)) == 1
    assert delta_schema(settings) == schema and file_schemas(settings) == files and len(files) == 1
    assert contents(spark, settings) == delta_contents(settings) == expected(AFTER_SUB)


@pytest.mark.parametrize("writer", ["auto", "delta-rs"])
def test_an_arrow_write_keeps_a_spark_table_s_not_null_columns_readable(spark, settings, writer):
    """Spark declares some columns NOT NULL (a count, a literal); Arrow rows are nullable: both readers still agree.
    The delta-rs path keeps Spark's NOT NULL in the table; delta-spark declares every column of a table it
    creates nullable (``auto`` with its jars on the session)."""
    from fstore.storage import offline_spark_delta

    settings = settings.with_(delta_writer=writer)
    df = spark_frame(spark, FIRST).selectExpr("user_id", "event_timestamp", "created_timestamp", "amount",
                                              "CAST(coalesce(n, 0) AS BIGINT) AS n")
    assert not df.schema["n"].nullable
    offline.write_range(spark, settings, FSV, df, T0, hours(72))
    schema = delta_schema(settings)
    assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows(SUB), hours(10), hours(31)) == 1
    assert delta_schema(settings) == schema and schema.field("n").nullable == offline_spark_delta.in_use(spark, settings)
    assert contents(spark, settings) == delta_contents(settings) == expected(AFTER_SUB)


def test_the_arrow_schema_is_the_one_spark_writes_for_every_feature_type(spark, settings, tmp_path):
    types = {"i": "int", "f": "float", "s": "string", "b": "bool", "t": "timestamp", "l": "list<float>",
             "ls": "list<string>"}
    fsv = version(*(feature(n, t) for n, t in types.items()))
    ts = pa.array([T0], UTC_US)
    arrow = pa.table({"user_id": pa.array([7], pa.int64()), "event_timestamp": ts, "created_timestamp": ts,
                      "i": pa.array([1], pa.int32()), "f": [0.5], "s": pa.array(["x"], pa.large_string()), "b": [True],
                      "t": pa.array([T0], pa.timestamp("ns")),
                      "l": pa.array([[1.0, None]], pa.large_list(pa.field("l", pa.float64()))),
                      "ls": pa.array([["a"]], pa.list_(pa.large_string()))})
    offline_arrow.write_range_arrow(settings, fsv, arrow, T0, hours(24))
    df = spark.createDataFrame([(7, T0, T0, 1, 0.5, "x", True, T0, [1.0, None], ["a"])],
                               "user_id bigint, event_timestamp timestamp, created_timestamp timestamp, i bigint, "
                               "f double, s string, b boolean, t timestamp, l array<double>, ls array<string>")
    by_spark = settings.with_(storage_path=str(tmp_path / "spark"))
    offline.write_range(spark, by_spark, fsv, df, T0, hours(24))
    assert delta_schema(settings) == delta_schema(by_spark)
    assert file_schemas(settings) == file_schemas(by_spark)
    from pyspark.sql.pandas.types import to_arrow_schema

    from_spark = to_arrow_schema(offline._prepare(df, fsv, T0, hours(24)).schema)
    assert offline_arrow._prepare_arrow(arrow, fsv, T0, hours(24)).schema == from_spark
    got = offline.read_table(spark, settings, "txn").drop("event_date").collect()
    assert got == offline.read_table(spark, by_spark, "txn").drop("event_date").collect()


def test_the_first_write_creates_the_table_and_a_new_feature_adds_a_column(spark, settings):
    assert offline.current_version(settings, "txn") is None
    assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows([("a", hours(1), 1.0, 1)]), T0, hours(24)) == 0
    fsv2 = version(*FSV.features, feature("label", "string"), number=2)
    rows = arrow_rows([("b", hours(30), 2.0, 2)], label=pa.array(["new"]))
    assert offline_arrow.write_range_arrow(settings, fsv2, rows, hours(24), hours(48)) == 2  # 1 = the added column
    # a touched day's kept rows from before the column existed read as null
    rows = arrow_rows([("c", hours(2), 3.0, 3)], label=pa.array(["c"]))
    offline_arrow.write_range_arrow(settings, fsv2, rows, hours(2), hours(3))
    got = sorted((r.user_id, r.label) for r in offline.read_table(spark, settings, "txn").collect())
    assert got == [("a", None), ("b", "new"), ("c", "c")]
    assert delta_schema(settings).field("label").type == pa.string()


def test_a_changed_type_is_refused_and_nothing_is_written(spark, settings):
    offline_arrow.write_range_arrow(settings, FSV, arrow_rows([("a", hours(1), 1.0, 1)]), T0, hours(24))
    fsv3 = version(FSV.features[0], feature("n", "string"), number=3)
    rows = arrow_rows([("c", hours(50), 3.0, 3)]).set_column(4, "n", pa.array(["3"]))
    with pytest.raises(ComputeError, match="column n of the offline table is int64"):
        offline_arrow.write_range_arrow(settings, fsv3, rows, hours(48), hours(72))
    assert offline.current_version(settings, "txn") == 0
    assert not os.path.exists(os.path.join(offline.table_uri(settings, "txn"), "event_date=2024-03-03"))
    assert [r[0] for r in contents(spark, settings)] == ["a"]


@pytest.mark.parametrize(("table", "start", "end", "error"), [
    (arrow_rows([]), hours(5), hours(5), InvalidDefinition),
    (arrow_rows([]).drop_columns(["n"]), T0, hours(1), ComputeError),
    (arrow_rows([("a", hours(1), 1.0, 1)]).set_column(3, "amount", pa.array(["x"])), T0, hours(2), ComputeError),
])
def test_bad_input_is_refused_like_write_range(settings, table, start, end, error):
    with pytest.raises(error):
        offline_arrow.write_range_arrow(settings, FSV, table, start, end)
    assert offline.current_version(settings, "txn") is None


def test_a_write_that_fails_before_its_commit_leaves_the_previous_version(spark, settings, monkeypatch):
    offline_arrow.write_range_arrow(settings, FSV, arrow_rows(FIRST), T0, hours(72))
    before = contents(spark, settings)

    def dies(*args, **kwargs):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(offline, "commit_delta_files", dies)
    with pytest.raises(RuntimeError, match="killed"):
        offline_arrow.write_range_arrow(settings, FSV, arrow_rows(SUB), hours(10), hours(31))
    monkeypatch.undo()
    assert offline.current_version(settings, "txn") == 0
    assert contents(spark, settings) == delta_contents(settings) == before
    assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows(SUB), hours(10), hours(31)) == 1
    assert contents(spark, settings) == expected(AFTER_SUB)  # the orphaned files never appear


def test_parquet_mode_replaces_ranges_the_same_way(spark, settings):
    pq = settings.with_(storage_format="parquet")
    assert offline_arrow.write_range_arrow(pq, FSV, arrow_rows(FIRST), T0, hours(72)) is None
    for _ in range(2):
        assert offline_arrow.write_range_arrow(pq, FSV, arrow_rows(SUB), hours(10), hours(31)) is None
        assert contents(spark, pq) == expected(AFTER_SUB)
    # mixed with Spark's Parquet writes of the same table
    offline.write_range(spark, pq, FSV, spark_frame(spark, [("d", hours(49), 5.0, 5)]), hours(49), hours(50))
    offline_arrow.write_range_arrow(pq, FSV, arrow_rows([("e", hours(51), 6.0, 6)]), hours(51), hours(52))
    assert contents(spark, pq) == expected(AFTER_SUB + [("d", hours(49), 5.0, 5), ("e", hours(51), 6.0, 6)])
    assert offline.current_version(pq, "txn") is None
    assert not os.listdir(os.path.join(offline.table_uri(pq, "txn"), "_staging"))


def test_every_tenth_version_writes_a_checkpoint_and_older_versions_still_read(settings):
    from deltalake import DeltaTable

    log = os.path.join(offline.table_uri(settings, "txn"), "_delta_log")
    for v in range(12):
        day = hours(24 * v)
        assert offline_arrow.write_range_arrow(settings, FSV, arrow_rows([("a", day, float(v), v)]), day,
                                               day + timedelta(days=1)) == v
        checkpoints = sorted(f for f in os.listdir(log) if ".checkpoint." in f)
        assert checkpoints == (["00000000000000000010.checkpoint.parquet"] if v >= 10 else [])
    latest = DeltaTable(offline.table_uri(settings, "txn"))
    assert latest.version() == 11 and sorted(latest.to_pyarrow_table().column("n").to_pylist()) == list(range(12))
    older = offline.delta_table(settings, "txn", 5)  # before the checkpoint: replayed from the commits
    assert sorted(older.to_pyarrow_table().column("n").to_pylist()) == list(range(6))


def test_a_schema_commit_and_a_write_that_step_over_a_multiple_of_ten_still_checkpoint(settings):
    for v in range(10):
        day = hours(24 * v)
        offline_arrow.write_range_arrow(settings, FSV, arrow_rows([("a", day, float(v), v)]), day, day + timedelta(days=1))
    wider = version(feature("amount", "float"), feature("n", "int"), feature("extra", "float"), number=2)
    day = hours(24 * 10)
    rows = arrow_rows([("a", day, 10.0, 10)], extra=pa.array([1.5]))
    assert offline_arrow.write_range_arrow(settings, wider, rows, day, day + timedelta(days=1)) == 11  # 10: the column
    log = os.path.join(offline.table_uri(settings, "txn"), "_delta_log")
    assert sorted(f for f in os.listdir(log) if ".checkpoint." in f) == ["00000000000000000011.checkpoint.parquet"]
