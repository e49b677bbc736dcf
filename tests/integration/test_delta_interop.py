"""Delta interoperability: a table written by delta-spark's ``format("delta")`` and one written through delta-rs
(the DuckDB engine's materialization, or Spark's Parquet + a delta-rs commit) read the same through every reader
(delta-spark, delta-rs, the DuckDB engine's file list), versions and time travel included; range rewrites
alternating between the writers keep every row exactly once."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fstore.storage import offline
from fstore.storage import offline_arrow
from fstore.storage import offline_spark_delta
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion

pytestmark = pytest.mark.spark

ENTITY = Entity.from_dict({"name": "user", "join_keys": ["user_id"]})
FS = FeatureSet.from_dict({"name": "txn", "entities": ["user"]})
FEATURES = (Feature.from_dict({"name": "amount", "data_type": "float", "transformation": "amount"}, feature_set="txn"),
            Feature.from_dict({"name": "n", "data_type": "int", "transformation": "n"}, feature_set="txn"))
FSV = FeatureSetVersion(feature_set=FS, version=1, entities=(ENTITY,), features=FEATURES)
LABEL = Feature.from_dict({"name": "label", "data_type": "string", "transformation": "'x'"}, feature_set="txn")
FSV2 = FeatureSetVersion(feature_set=FS, version=2, entities=(ENTITY,), features=FEATURES + (LABEL,))
T0 = datetime(2024, 3, 1)
COLUMNS = ["user_id", "event_timestamp", "amount", "n", "label"]


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


@pytest.fixture()
def spark_writer(spark, settings):
    """Settings whose Spark writes go through delta-spark (skipped when set-up could not fetch its jars)."""
    chosen = settings.with_(delta_writer="spark")
    from fstore.engine.jars import has_delta_classes

    if not has_delta_classes(spark._jvm):
        pytest.skip("delta-spark's jars are not cached (python -m fstore.engine.jars): only the delta-rs path runs")
    return chosen


def pandas_rows(rows: list[tuple], label: bool = False) -> pd.DataFrame:
    pdf = pd.DataFrame([r[:4] for r in rows], columns=COLUMNS[:4])
    pdf["created_timestamp"] = pdf["event_timestamp"]
    if label:
        pdf["label"] = [r[4] for r in rows]
    return pdf


def spark_frame(spark, rows: list[tuple], label: bool = False):
    schema = "user_id string, event_timestamp timestamp, amount double, n bigint, created_timestamp timestamp"
    return spark.createDataFrame(pandas_rows(rows, label), schema + (", label string" if label else ""))


def write_spark(spark, settings, rows, start, end, fsv=FSV) -> int:
    return offline.write_range(spark, settings, fsv, spark_frame(spark, rows, fsv is FSV2), start, end)


def write_duckdb_engine(settings, rows, start, end, fsv=FSV) -> int:
    """The DuckDB engine's materialization: an Arrow table committed through delta-rs, no Spark."""
    import pyarrow as pa

    return offline_arrow.write_range_arrow(settings, fsv, pa.Table.from_pandas(pandas_rows(rows, fsv is FSV2)), start, end)


def normal(records) -> list[tuple]:
    """Rows as comparable tuples: naive UTC times, the label (None where the column is absent or null)."""
    out = []
    for r in records:
        ts = r["event_timestamp"]
        ts = ts.to_pydatetime() if hasattr(ts, "to_pydatetime") else ts
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts
        label = r.get("label")
        out.append((r["user_id"], ts, float(r["amount"]), int(r["n"]), None if pd.isna(label) else label))
    return sorted(out)


def by_delta_spark(spark, settings, version: int | None = None, timestamp: str | None = None) -> list[tuple]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    if timestamp is not None:
        reader = reader.option("timestampAsOf", timestamp)
    return normal(r.asDict() for r in reader.load(offline.table_uri(settings, "txn")).collect())


def by_delta_rs(settings, version: int | datetime | None = None) -> list[tuple]:
    table = offline.delta_table(settings, "txn", version)
    return normal(table.to_pyarrow_table().to_pylist())


def by_duckdb_engine(settings, as_of=None) -> list[tuple]:
    """What the DuckDB engine reads: the version's Parquet files from the Delta log, columns by name."""
    import duckdb

    files = offline_arrow.read_files(settings, "txn", as_of=as_of)
    con = duckdb.connect()
    rows = con.read_parquet(files.paths, union_by_name=True).to_arrow_table().to_pylist()
    con.close()
    return normal(rows)


def by_fstore(spark, settings, as_of=None) -> list[tuple]:
    return normal(r.asDict() for r in offline.read_table(spark, settings, "txn", as_of=as_of).collect())


def writers(settings) -> list[str]:
    """Which engine made each commit, oldest first (delta-spark names Spark in engineInfo; delta-rs its clientVersion)."""
    history = sorted(offline.delta_table(settings, "txn").history(), key=lambda c: c["version"])
    return ["spark" if "Delta-Lake" in str(c.get("engineInfo", "")) else "delta-rs" if "delta-rs" in
            str(c.get("clientVersion", "")) else "?" for c in history]


def commit_times(settings) -> list[tuple[str, datetime]]:
    """Each version's commit time to the millisecond, as each library reads it: delta-spark's ``timestampAsOf``
    goes by the log file's modification time; delta-rs (and so fstore's ``as_of``, on both engines) by the
    commitInfo time, which delta-rs may stamp a few ms after writing the file. Both lie before the next commit.
    Returns (Spark's timestampAsOf string, fstore's as_of) per version."""
    import os

    log = os.path.join(offline.table_uri(settings, "txn"), "_delta_log")
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    history = {c["version"]: c["timestamp"] for c in offline.delta_table(settings, "txn").history()}
    out = []
    for name in sorted(n for n in os.listdir(log) if n.endswith(".json")):
        written = os.stat(os.path.join(log, name)).st_mtime_ns // 1_000_000
        out.append(((epoch + timedelta(milliseconds=written)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                    epoch + timedelta(milliseconds=max(written, history[int(name[:-5])]))))
    return out


def every_reader_agrees(spark, settings, delta_rs_settings, version: int, expected: list[tuple]) -> None:
    assert by_delta_spark(spark, settings, version=version) == expected
    assert by_delta_rs(settings, version) == expected
    assert by_duckdb_engine(settings, as_of=version) == expected
    assert by_fstore(spark, settings, as_of=version) == expected           # delta-spark's versionAsOf
    assert by_fstore(spark, delta_rs_settings, as_of=version) == expected  # delta-rs' file list read by Spark


FIRST = [("a", hours(1), 1.0, 1), ("a", hours(20), 2.0, 2), ("b", hours(30), 3.0, 3), ("b", hours(50), 4.0, 4)]
REWRITE = [("a", hours(12), 9.0, 9), ("c", hours(30.5), 8.0, 8)]


def expected(*writes: tuple[list[tuple], datetime, datetime]) -> list[tuple]:
    """The table after ``writes`` (rows, start, end), each replacing exactly its range: the model to compare with."""
    table: list[tuple] = []
    for rows, start, end in writes:
        table = [r for r in table if not start <= r[1] < end] + [r for r in rows if start <= r[1] < end]
    return sorted((*r[:4], r[4] if len(r) > 4 else None) for r in table)


def test_a_table_delta_spark_writes_reads_the_same_through_delta_rs_and_duckdb(spark, spark_writer):
    settings, delta_rs = spark_writer, spark_writer.with_(delta_writer="delta-rs")
    assert offline_spark_delta.in_use(spark, settings) and not offline_spark_delta.in_use(spark, delta_rs)
    assert write_spark(spark, settings, FIRST, T0, hours(72)) == 0
    assert write_spark(spark, settings, REWRITE, hours(10), hours(31)) == 1
    assert writers(settings) == ["spark", "spark"]
    from pathlib import Path  # only data files beside the data: no Hadoop checksum sidecars (.part-….crc)
    assert not [p for p in Path(offline.table_uri(settings, "txn")).rglob("*.crc") if "_delta_log" not in p.parts]
    versions = [expected((FIRST, T0, hours(72))), expected((FIRST, T0, hours(72)), (REWRITE, hours(10), hours(31)))]
    assert versions[1] == [("a", hours(1), 1.0, 1, None), ("a", hours(12), 9.0, 9, None), ("b", hours(50), 4.0, 4, None),
                           ("c", hours(30.5), 8.0, 8, None)]
    for version, rows in enumerate(versions):
        every_reader_agrees(spark, settings, delta_rs, version, rows)
    assert by_delta_spark(spark, settings) == by_delta_rs(settings) == by_duckdb_engine(settings) == versions[1]
    # time travel by timestamp: Spark's timestampAsOf, delta-rs' and fstore's as_of answer the same version
    for version, (spark_at, at) in enumerate(commit_times(settings)):
        rows = versions[version]
        assert by_delta_spark(spark, settings, timestamp=spark_at) == rows
        assert by_delta_rs(settings, at) == rows
        assert by_fstore(spark, settings, as_of=at.isoformat()) == by_fstore(spark, delta_rs, as_of=at) == rows
        assert by_duckdb_engine(settings, as_of=at.isoformat()) == rows
    # the delta-rs path's per-file stats come from delta-spark's log the same way (used to prune and skip files)
    import pyarrow as pa

    stats = pa.table(offline.delta_table(settings, "txn").get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in stats) == 4 and all(a["min.event_timestamp"] is not None for a in stats)


def test_a_table_delta_rs_writes_reads_the_same_through_delta_spark(spark, spark_writer):
    settings, delta_rs = spark_writer, spark_writer.with_(delta_writer="delta-rs")
    assert write_duckdb_engine(settings, FIRST, T0, hours(72)) == 0
    assert write_spark(spark, delta_rs, REWRITE, hours(10), hours(31)) == 1  # Spark's Parquet + a delta-rs commit
    assert writers(settings) == ["delta-rs", "delta-rs"]
    versions = [expected((FIRST, T0, hours(72))), expected((FIRST, T0, hours(72)), (REWRITE, hours(10), hours(31)))]
    for version, rows in enumerate(versions):
        every_reader_agrees(spark, settings, delta_rs, version, rows)
    for version, (spark_at, at) in enumerate(commit_times(settings)):
        assert by_delta_spark(spark, settings, timestamp=spark_at) == versions[version]
        assert by_fstore(spark, settings, as_of=at.isoformat()) == by_delta_rs(settings, at) == versions[version]


def test_range_rewrites_alternating_writers_keep_every_row_exactly_once(spark, spark_writer):
    """Each writer rewrites ranges over the other's files (partial days, a new column, a checkpoint, a vacuum)."""
    settings, delta_rs = spark_writer, spark_writer.with_(delta_writer="delta-rs")
    writes: list[tuple[list[tuple], datetime, datetime]] = []
    done: list[list[tuple]] = []

    def step(version: int, rows, start, end) -> None:
        writes.append((rows, start, end))
        done.append(expected(*writes))
        got = by_delta_spark(spark, settings)
        assert got == by_delta_rs(settings) == by_duckdb_engine(settings) == done[-1], f"version {version}"
        assert len({(r[0], r[1]) for r in got}) == len(got)  # no row twice

    step(write_spark(spark, settings, FIRST, T0, hours(72)), FIRST, T0, hours(72))
    second = [("a", hours(15), 5.0, 5), ("d", hours(26), 6.0, 6)]
    step(write_duckdb_engine(settings, second, hours(10), hours(31)), second, hours(10), hours(31))
    third = [("a", hours(14), 7.0, 7), ("e", hours(49), 7.5, 7)]
    step(write_spark(spark, settings, third, hours(12), hours(50)), third, hours(12), hours(50))
    fourth = [("b", hours(23), 1.5, 1)]
    step(write_spark(spark, delta_rs, fourth, hours(20), hours(24)), fourth, hours(20), hours(24))
    # a feature added by a new version: each path adds the column in its own metadata commit, then writes
    fifth = [("f", hours(40), 2.5, 2, "x")]
    assert write_spark(spark, settings, fifth, hours(36), hours(42), FSV2) == 5  # 4: ALTER TABLE ADD COLUMNS
    step(5, fifth, hours(36), hours(42))
    sixth = [("g", hours(2), 3.5, 3, "y")]
    step(write_duckdb_engine(settings, sixth, T0, hours(6), FSV2), sixth, T0, hours(6))
    for _ in range(3):  # the same range again and again: same rows, new versions, past a checkpoint
        step(write_spark(spark, settings, sixth, T0, hours(6), FSV2), sixth, T0, hours(6))
        step(write_duckdb_engine(settings, sixth, T0, hours(6), FSV2), sixth, T0, hours(6))
    assert writers(settings) == ["spark", "delta-rs", "spark", "delta-rs", "spark", "spark", "delta-rs"] + \
        ["spark", "delta-rs"] * 3
    table = offline.delta_table(settings, "txn")
    assert table.version() == 12
    import os

    log = os.path.join(offline.table_uri(settings, "txn"), "_delta_log")
    assert os.path.exists(os.path.join(log, f"{10:020d}.checkpoint.parquet"))
    # every version reads the same through each reader, the ones before the new column included
    versions = {0: done[0], 1: done[1], 2: done[2], 3: done[3], 5: done[4], 6: done[5], 12: done[-1]}
    for version, rows in versions.items():
        every_reader_agrees(spark, settings, delta_rs, version, rows)
    # a vacuum (delta-rs, for both paths) keeps what a kept version names; the current version reads on
    offline.vacuum(settings, "txn", retain_hours=0, keep_versions=[1], dry_run=False)
    assert by_delta_spark(spark, settings) == by_delta_rs(settings) == done[-1]
    assert by_delta_spark(spark, settings, version=1) == by_delta_rs(settings, 1) == done[1]
