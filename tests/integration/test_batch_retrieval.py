"""Batch retrieval end to end: a job in its own process reads entity rows from Parquet and writes Delta/Parquet,
on each compute engine, the same files and rows as Spark's."""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fstore.core.errors import AlreadyExists, Conflict, InvalidDefinition, NotFound
from fstore.store import FeatureStore
from test_retrieval import create_sets, events, fill_offline, labels, write_source

pytestmark = pytest.mark.spark

FEATURES = ["user_txn:amount_x2", "txn_count_2d", "merchant_amount"]


@pytest.fixture()
def store(settings, on_engine, tmp_path):
    """A store on the test's engine (on DuckDB, touching Spark fails the test), its offline tables filled."""
    s = on_engine(settings)
    create_sets(s, write_source(tmp_path / "source", events()))
    for name in ("user_txn", "merchant_txn"):
        fill_offline(s, name)
    yield s
    s.close()


@pytest.fixture()
def spark_store(settings, on_engine, store):
    """The same registry and offline store computing on Spark: what the DuckDB engine must equal."""
    s = on_engine(settings, on="spark")
    yield s
    s.close()


@pytest.fixture()
def entity_path(tmp_path):
    path = tmp_path / "entities"
    path.mkdir()
    rows = labels()
    rows.assign(event_timestamp=rows.event_timestamp.astype("datetime64[us]")).to_parquet(path / "part-0.parquet", index=False)
    return path


def no_spark_in_job_processes(monkeypatch) -> None:
    """A job process that starts a JVM fails (the running test session's JVM is unaffected)."""
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")


def read_output(path, output_format: str) -> pa.Table:
    """The written rows as Arrow (for Delta: version 0 of the new table, nothing else in it)."""
    if output_format == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(str(path))
        assert table.version() == 0
        assert sorted(table.file_uris()) == sorted(str(f) for f in path.glob("*.parquet"))
        return table.to_pyarrow_table()
    return pq.read_table(path)


def wait_for(store: FeatureStore, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} did not finish: {store.get_job(job_id)}")


@pytest.mark.parametrize("output_format", ["delta", "parquet"])
def test_a_batch_job_writes_the_rows_and_files_spark_writes(store, spark_store, compute_engine, entity_path, tmp_path,
                                                            monkeypatch, output_format):
    if compute_engine == "duckdb":
        no_spark_in_job_processes(monkeypatch)
    out = tmp_path / "out" / output_format
    job = store.start_batch_retrieval(entity_source={"path": str(entity_path), "format": "parquet"},
                                      features=FEATURES, output_path=str(out), output_format=output_format, actor="bob")
    assert job["status"] == "pending" and job["kind"] == "batch_retrieval" and job["created_by"] == "bob"
    done = wait_for(store, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 1.0 and done["result"]["row_count"] == len(labels())
    assert done["result"]["output_path"] == str(out) and done["finished_at"]
    assert done["result"]["compute_engine"] == compute_engine
    written = read_output(out, output_format)
    assert all(f.name.startswith("part-") for f in out.glob("*.parquet"))

    # Spark's answer: the SDK's retrieval on Spark, written in this process by the Spark job's writer.
    from fstore.serving.retrieval.batch import write_output

    expected_path = tmp_path / "expected" / output_format
    sdk = spark_store.get_historical_features(entity_df=labels(), features=FEATURES)
    write_output(sdk.to_spark(), spark_store.settings, str(expected_path), output_format)
    expected = read_output(expected_path, output_format)
    assert written.schema == expected.schema, (str(written.schema), str(expected.schema))
    key = lambda table: sorted(map(repr, table.to_pylist()))  # noqa: E731 - Parquet readers do not promise file order
    assert key(written) == key(expected)
    assert len(written) == len(labels())
    assert {"at first event", "no rows"} <= set(written.column("note").to_pylist())
    assert any(written.column("txn_count_2d").to_pylist()) and any(written.column("user_txn__amount_x2").to_pylist())


def test_bad_batch_requests_are_refused_before_a_job_is_recorded(store, compute_engine, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("do not overwrite")
    (tmp_path / "entities").mkdir()  # never read: each request fails its checks first
    source = {"path": str(tmp_path / "entities"), "format": "parquet"}
    cases = [
        ({"entity_source": {"path": str(tmp_path / "missing")}}, InvalidDefinition, "entity_source.path"),
        ({"entity_source": {"path": "x", "table": "t"}}, InvalidDefinition, "entity_source"),
        ({"entity_source": {**source, "format": "xml"}}, InvalidDefinition, "entity_source.format"),
        ({"output_format": "csv"}, InvalidDefinition, "output_format"),
        ({"output_format": ""}, InvalidDefinition, "output_format"),
        ({"output_path": str(occupied)}, AlreadyExists, "output_path"),
        ({"features": ["nope"]}, NotFound, "features"),
    ]
    if compute_engine == "duckdb":  # what it cannot read or write, before a job fails on it
        cases += [
            ({"entity_source": {"table": "db.labels"}}, InvalidDefinition, "entity_source.table"),
            ({"entity_source": {"path": "s3://bucket/labels"}}, InvalidDefinition, "entity_source.path"),
            ({"output_path": "s3://bucket/out"}, InvalidDefinition, "output_path"),
        ]
    for change, error, field in cases:
        kwargs = {"entity_source": source, "features": FEATURES, "output_path": str(tmp_path / "o"),
                  "output_format": "parquet", **change}
        with pytest.raises(error) as info:
            store.start_batch_retrieval(**kwargs)
        assert info.value.field == field, (change, info.value.message)
    assert (occupied / "keep.txt").read_text() == "do not overwrite"
    with store.transaction() as s:
        from fstore.registry.jobs import list_jobs

        assert list_jobs(s)["total"] == 0
    with pytest.raises(NotFound):
        store.get_job("no-such-job")
    with store.transaction() as s:  # an unfinished job writing a location: a second one is refused
        from fstore.registry.jobs import create_job

        create_job(s, "batch_retrieval", {"output_path": str(tmp_path / "o")})
    with pytest.raises(Conflict, match="is already writing to output_path") as info:
        store.start_batch_retrieval(entity_source=source, features=FEATURES, output_path=str(tmp_path / "o"),
                                    output_format="parquet")
    assert info.value.field == "output_path"
