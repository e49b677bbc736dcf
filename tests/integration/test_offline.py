"""The offline store on real Spark: Delta commits through deltalake, range replacement, time travel, Parquet mode."""
from __future__ import annotations

import contextlib
import io
import os
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fstore.storage import offline, offline_table
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion
from fstore.core.errors import NotFound

pytestmark = pytest.mark.spark

FSV = FeatureSetVersion(
    feature_set=FeatureSet.from_dict({"name": "txn", "entities": ["user"]}), version=1,
    entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}),),
    features=(Feature.from_dict({"name": "amount", "data_type": "float", "transformation": "amount"}, feature_set="txn"),
              Feature.from_dict({"name": "n", "data_type": "int", "transformation": "n"}, feature_set="txn")),
)
T0 = datetime(2024, 3, 1)


@pytest.fixture(params=["auto", "delta-rs"])
def writer_settings(request, spark, settings):
    """The key tests on both Delta paths: ``auto`` (delta-spark's format("delta") when the session has its
    jars, as the suite's session does once set-up cached them) and ``delta-rs`` (Parquet + delta-rs commits)."""
    return settings.with_(delta_writer=request.param)


def frame(spark, rows: list[tuple[str, datetime, float, int]]):
    """Feature rows as the compiler produces them (created = event time)."""
    pdf = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "amount", "n"])
    pdf["created_timestamp"] = pdf["event_timestamp"]
    return spark.createDataFrame(pdf[["user_id", "event_timestamp", "created_timestamp", "amount", "n"]],
                                 "user_id string, event_timestamp timestamp, created_timestamp timestamp, amount double, n bigint")


def contents(df) -> list[tuple]:
    return sorted((r.user_id, r.event_timestamp, r.amount, r.n, str(r.event_date)) for r in df.collect())


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


def test_replace_range_is_exact_idempotent_and_time_travels(spark, writer_settings):
    settings = writer_settings
    v0 = offline.write_range(spark, settings, FSV, frame(spark, [("a", hours(1), 1.0, 1), ("a", hours(20), 2.0, 2),
                                                                  ("b", hours(30), 3.0, 3), ("b", hours(50), 4.0, 4)]),
                             T0, hours(72))
    assert v0 == 0 and offline.current_version(settings, "txn") == 0
    first = contents(offline.read_table(spark, settings, "txn"))
    assert [r[0:3] for r in first] == [("a", hours(1), 1.0), ("a", hours(20), 2.0), ("b", hours(30), 3.0), ("b", hours(50), 4.0)]
    assert first[0][4] == "2024-03-01" and first[2][4] == "2024-03-02"
    # a partial-day range [10h, 31h): replaces a@20h and b@30h; a@1h and b@50h (same days, outside) survive
    new = frame(spark, [("a", hours(12), 9.0, 9), ("c", hours(30.5), 8.0, 8), ("z", hours(31), 7.0, 7)])  # z is outside: dropped
    v1 = offline.write_range(spark, settings, FSV, new, hours(10), hours(31))
    second = contents(offline.read_table(spark, settings, "txn"))
    assert v1 == 1
    assert [(r[0], r[1], r[2]) for r in second] == [("a", hours(1), 1.0), ("a", hours(12), 9.0), ("b", hours(50), 4.0),
                                                     ("c", hours(30.5), 8.0)]
    # event_date is a real partition column: a filter on it prunes files
    pruned = offline.read_table(spark, settings, "txn").where("event_date = DATE'2024-03-02'")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pruned.explain("formatted")
    assert "PartitionFilters: [isnotnull(event_date" in out.getvalue() and pruned.count() == 1
    # the same range again: same contents, one more version
    v2 = offline.write_range(spark, settings, FSV, new, hours(10), hours(31))
    assert v2 == 2 and contents(offline.read_table(spark, settings, "txn")) == second
    # time travel by version and by timestamp
    assert contents(offline.read_table(spark, settings, "txn", as_of=0)) == first
    assert contents(offline.read_table(spark, settings, "txn", as_of="1")) == second
    from deltalake import DeltaTable

    table = DeltaTable(offline.table_uri(settings, "txn"))
    assert table.version() == 2 and [h["version"] for h in table.history()] == [2, 1, 0]
    # the path taken: delta-spark names itself in engineInfo, delta-rs in clientVersion
    from fstore.storage import offline_spark_delta

    wrote = {"spark" if "Delta-Lake" in str(h.get("engineInfo", "")) else "delta-rs" if "delta-rs" in
             str(h.get("clientVersion", "")) else "?" for h in table.history()}
    assert wrote == {"spark" if offline_spark_delta.in_use(spark, settings) else "delta-rs"}
    ts0 = [h for h in table.history() if h["version"] == 0][0]["timestamp"]
    assert contents(offline.read_table(spark, settings, "txn", as_of=datetime.fromtimestamp(ts0 / 1000 + 0.0005, timezone.utc)
                                       .isoformat())) == first
    # any Delta reader sees the same rows
    arrow = table.to_pyarrow_table().to_pandas().sort_values(["user_id", "event_timestamp"])
    assert list(arrow.amount) == [r[2] for r in second] and table.metadata().partition_columns == ["event_date"]
    old = DeltaTable(offline.table_uri(settings, "txn"))
    old.load_as_version(0)
    assert sorted(old.to_pyarrow_table().to_pandas().amount) == [1.0, 2.0, 3.0, 4.0]
    import pyarrow as pa

    stats = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in stats) == 4
    day1 = [a for a in stats if a["partition.event_date"] in ("2024-03-01", datetime(2024, 3, 1).date())]
    assert day1 and day1[0]["min.event_timestamp"] is not None and day1[0]["null_count.amount"] == 0
    assert min(a["min.amount"] for a in stats) == 1.0 and max(a["max.amount"] for a in stats) == 9.0
    with pytest.raises(NotFound, match="offline table txn has no version 99; its versions are 0 to 2"):
        offline.read_table(spark, settings, "txn", as_of=99)
    gone = offline.delta_table(settings, "txn", 0).file_uris()[0]  # as after a vacuum
    os.remove(gone[len("file://"):] if gone.startswith("file://") else gone)
    with pytest.raises(NotFound, match="version 0 of offline table txn is no longer readable: vacuum removed its files"):
        offline.read_table(spark, settings, "txn", as_of=0)
    with pytest.raises(NotFound):
        offline.read_table(spark, settings, "no_such_set")
    assert offline.current_version(settings, "no_such_set") is None


def test_a_commit_that_never_happens_leaves_the_previous_version(spark, settings):
    offline.write_range(spark, settings, FSV, frame(spark, [("a", hours(1), 1.0, 1), ("b", hours(2), 2.0, 2)]), T0, hours(24))
    before = contents(offline.read_table(spark, settings, "txn"))
    rows = offline._prepare(frame(spark, [("a", hours(1), 100.0, 100)]), FSV, T0, hours(24))
    staged = offline.stage_delta_files(spark, settings, "txn", rows, T0, hours(24))  # the job dies before its commit
    assert staged.adds and staged.removes
    assert all(os.path.exists(os.path.join(offline.table_uri(settings, "txn"), a.path)) for a in staged.adds)
    assert offline.current_version(settings, "txn") == 0
    assert contents(offline.read_table(spark, settings, "txn")) == before
    # the next run commits normally; the orphaned files never appear
    offline.write_range(spark, settings, FSV, frame(spark, [("a", hours(1), 5.0, 5)]), T0, hours(24))
    assert [(r[0], r[2]) for r in contents(offline.read_table(spark, settings, "txn"))] == [("a", 5.0)]


def test_parquet_mode_replaces_ranges_the_same_way(spark, settings):
    pq = settings.with_(storage_format="parquet")
    assert offline.write_range(spark, pq, FSV, frame(spark, [("a", hours(1), 1.0, 1), ("a", hours(20), 2.0, 2),
                                                              ("b", hours(30), 3.0, 3)]), T0, hours(48)) is None
    new = frame(spark, [("a", hours(12), 9.0, 9)])
    for _ in range(2):
        offline.write_range(spark, pq, FSV, new, hours(10), hours(31))
        got = contents(offline.read_table(spark, pq, "txn"))
        assert [(r[0], r[1], r[2], r[4]) for r in got] == [("a", hours(1), 1.0, "2024-03-01"), ("a", hours(12), 9.0, "2024-03-01")]
    assert offline.current_version(pq, "txn") is None
    assert not os.listdir(os.path.join(offline.table_uri(pq, "txn"), "_staging"))


def test_s3_storage_options_from_settings():
    s3 = offline.storage_options(type("S", (), {"storage_backend": "s3", "s3_endpoint": "http://minio:9000",
                                                 "s3_access_key": "k", "s3_secret_key": "s"})())
    assert s3["AWS_ENDPOINT_URL"] == "http://minio:9000" and s3["AWS_ALLOW_HTTP"] == "true"
    assert s3["AWS_ACCESS_KEY_ID"] == "k" and s3["AWS_SECRET_ACCESS_KEY"] == "s"
    assert offline_table.delta_uri("s3a://bucket/fstore/offline/x") == "s3://bucket/fstore/offline/x"


def test_a_new_feature_adds_a_column_and_a_changed_type_is_refused(spark, writer_settings):
    settings = writer_settings
    from fstore.core.errors import ComputeError

    offline.write_range(spark, settings, FSV, frame(spark, [("a", hours(1), 1.0, 1)]), T0, hours(24))
    extra = Feature.from_dict({"name": "label", "data_type": "string", "transformation": "'x'"}, feature_set="txn")
    fsv2 = FeatureSetVersion(feature_set=FSV.feature_set, version=2, entities=FSV.entities, features=FSV.features + (extra,))
    rows = frame(spark, [("b", hours(30), 2.0, 2)]).selectExpr("*", "'new' AS label")
    assert offline.write_range(spark, settings, fsv2, rows, hours(24), hours(48)) == 2  # 1 = the added column
    got = sorted((r.user_id, r.label) for r in offline.read_table(spark, settings, "txn").collect())
    assert got == [("a", None), ("b", "new")]
    changed = Feature.from_dict({"name": "n", "data_type": "string", "transformation": "n"}, feature_set="txn")
    fsv3 = FeatureSetVersion(feature_set=FSV.feature_set, version=3, entities=FSV.entities, features=(FSV.features[0], changed))
    with pytest.raises(ComputeError, match="column n of the offline table is int64"):
        offline.write_range(spark, settings, fsv3, frame(spark, [("c", hours(50), 3.0, 3)]).selectExpr(
            "user_id", "event_timestamp", "created_timestamp", "amount", "CAST(n AS STRING) AS n"), hours(48), hours(72))
    assert offline.current_version(settings, "txn") == 2


def test_reads_of_a_version_are_reused_but_a_recreated_table_is_read_anew(spark, writer_settings):
    """The DataFrame over a version's files is cached; a table dropped and re-created at its path is not confused with it."""
    settings = writer_settings
    import shutil

    offline.write_range(spark, settings, FSV, frame(spark, [("a", hours(1), 1.0, 1)]), T0, hours(24))
    assert offline.read_table(spark, settings, "txn") is offline.read_table(spark, settings, "txn")
    shutil.rmtree(offline.table_uri(settings, "txn"))
    offline.write_range(spark, settings, FSV, frame(spark, [("b", hours(2), 2.0, 2)]), T0, hours(24))
    assert offline.current_version(settings, "txn") == 0
    assert [r[0] for r in contents(offline.read_table(spark, settings, "txn"))] == ["b"]


def test_a_file_is_skipped_only_when_its_stats_prove_it_inside_the_range():
    start, end = datetime(2024, 1, 1), datetime(2024, 1, 2)
    utc = timezone.utc

    def action(low, high):
        return {"event_min": low, "event_max": high}

    _inside = offline._inside
    assert _inside(action(datetime(2024, 1, 1, tzinfo=utc), datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=utc)), start, end)
    # Stats are truncated to the millisecond: a max in the range's last millisecond may hide a later event.
    assert not _inside(action(datetime(2024, 1, 1), datetime(2024, 1, 1, 23, 59, 59, 999001)), start, end)
    assert not _inside(action(datetime(2023, 12, 31, 23, 59, 59), datetime(2024, 1, 1, 12)), start, end)
    assert not _inside(action(None, datetime(2024, 1, 1, 12)), start, end)  # no stats: read the file
    assert not _inside({}, start, end)


def test_a_local_session_writes_each_day_from_at_most_one_task_per_core_without_a_shuffle(spark, settings):
    cores = spark.sparkContext.defaultParallelism
    minutes = "TIMESTAMP '2024-01-01' + make_interval(0, 0, 0, 0, 0, 0, id * 60)"
    rows = spark.range(0, 6_000, numPartitions=6).selectExpr("id AS user_id", f"{minutes} AS event_timestamp",
                                                             f"to_date({minutes}) AS {offline.PARTITION}")
    laid_out = offline.by_day(spark, rows)
    assert laid_out.rdd.getNumPartitions() == min(6, cores)
    assert "Exchange" not in laid_out._jdf.queryExecution().executedPlan().toString()

    folder = os.path.join(settings.storage_path, "by_day")
    offline.parquet_writer(laid_out).partitionBy(offline.PARTITION).parquet(folder)
    days = sorted(d for d in os.listdir(folder) if d.startswith(offline.PARTITION))
    assert len(days) == 5  # 6,000 minutes from midnight: Jan 1-5
    for day in days:
        files = [f for f in os.listdir(os.path.join(folder, day)) if f.endswith(".parquet")]
        assert 1 <= len(files) <= cores
    assert spark.read.parquet(folder).count() == 6_000
