"""Batch retrieval end to end: a job in its own process reads entity rows from Parquet and writes Delta/Parquet."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from fstore.errors import AlreadyExists, Conflict, InvalidDefinition, NotFound
from fstore.store import FeatureStore
from test_retrieval import fill_offline, T0, T_END, create_sets, events, labels, records, write_source

pytestmark = pytest.mark.spark

FEATURES = ["user_txn:amount_x2", "txn_count_2d", "merchant_amount"]


@pytest.fixture()
def store(settings, spark, tmp_path):
    s = FeatureStore(settings).use_spark(spark)
    create_sets(s, write_source(tmp_path / "source", events()))
    for name in ("user_txn", "merchant_txn"):
        fill_offline(s, name)
    yield s
    s.close()


def wait_for(store: FeatureStore, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} did not finish: {store.get_job(job_id)}")


@pytest.mark.parametrize("output_format", ["delta", "parquet"])
def test_a_batch_job_writes_the_same_rows_as_the_sdk(store, tmp_path, output_format):
    entity_rows = labels()
    entity_path = tmp_path / "entities"
    entity_path.mkdir()
    entity_rows.assign(event_timestamp=entity_rows.event_timestamp.astype("datetime64[us]")) \
        .to_parquet(entity_path / "part-0.parquet", index=False)
    out = tmp_path / "out" / output_format
    job = store.start_batch_retrieval(entity_source={"path": str(entity_path), "format": "parquet"},
                                      features=FEATURES, output_path=str(out), output_format=output_format, actor="bob")
    assert job["status"] == "pending" and job["kind"] == "batch_retrieval" and job["created_by"] == "bob"
    done = wait_for(store, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"] == 1.0 and done["result"]["row_count"] == len(entity_rows)
    assert done["result"]["output_path"] == str(out) and done["finished_at"]
    if output_format == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(str(out))
        assert table.version() == 0
        written = table.to_pandas()
    else:
        written = pd.read_parquet(out)
    expected = store.get_historical_features(entity_df=entity_rows, features=FEATURES).to_df()
    columns = ["note", "user_txn__amount_x2", "txn_count_2d", "merchant_amount"]
    key = lambda rows: sorted(rows, key=repr)  # noqa: E731 - Parquet readers do not promise file order
    assert key(records(written, columns)) == key(records(expected, columns))


def test_bad_batch_requests_are_refused_before_a_job_is_recorded(store, tmp_path):
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
