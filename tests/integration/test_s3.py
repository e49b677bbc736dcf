"""STORAGE_BACKEND=s3 end to end against a real S3 server: moto's standalone server on a loopback port,
with signature checking on (IAM), started once for the session.

Both engines materialize to S3 (Spark through ``s3a://`` and delta-spark, DuckDB through pyarrow and
delta-rs) from a source on S3; the offline rows, the online values and historical retrieval equal the
same store on local disk row for row; ``as_of`` travels back on S3; a training set and its pinned event
copies are written to and re-created from S3; delta-rs and delta-spark read each other's S3 tables; racing
delta-rs commits lose nothing; a wrong secret gives an error that names the bucket and the endpoint and
never the secret; a batch job reads its entity rows from S3 and writes Delta there (both engines' writers);
pandas' nanosecond Parquet on S3 reads the same on both engines.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pandas as pd
import pytest

from fstore.core.errors import Unavailable
from fstore.core.settings import Settings
from fstore.engine import s3 as storage_s3
from fstore.storage import offline
from test_materialize_support import FEATURES, T0, T_END, events, oracle

pytestmark = pytest.mark.spark

BUCKET, OTHER = "fstore-test", "fstore-other"
LABELS = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, 4, 1],
                       "event_timestamp": [T0 + timedelta(hours=h) for h in (0, 21, 30, 49, 80, 50, 120)]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 on 127.0.0.1:<free port>, checking signatures; the fstore user's keys and two buckets.

    ``INITIAL_NO_AUTH_ACTION_COUNT``: moto lets that many requests in unsigned (creating the user, its key and
    its policy), then checks every request against its IAM, so a wrong secret is refused as AWS refuses it."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "AWS_ACCESS_KEY_ID": "bootstrap",
           "AWS_SECRET_ACCESS_KEY": "bootstrap"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded: the port answers, or the server died, or 30 s passed
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto did not start on {endpoint}: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        import boto3

        bootstrap = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                         aws_secret_access_key="bootstrap")
        iam = boto3.client("iam", **bootstrap)
        iam.create_user(UserName="fstore")
        key = iam.create_access_key(UserName="fstore")["AccessKey"]
        iam.put_user_policy(UserName="fstore", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        for bucket in (BUCKET, OTHER):
            s3.create_bucket(Bucket=bucket)
        yield {"endpoint": endpoint, "access": key["AccessKeyId"], "secret": key["SecretAccessKey"], "log": log_path}
    finally:
        os.kill(process.pid, 15)  # by its PID; it exits on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, 9)
            process.wait(timeout=10)


def s3_env(server: dict, tmp_path, **extra: str) -> dict[str, str]:
    """A store on S3 under its own prefix; the registry (SQLite) and the online store (embedded) in ``tmp_path``."""
    return {"STORAGE_BACKEND": "s3", "S3_BUCKET": BUCKET, "S3_ENDPOINT": server["endpoint"],
            "S3_ACCESS_KEY": server["access"], "S3_SECRET_KEY": server["secret"],
            "STORAGE_PATH": f"t-{uuid.uuid4().hex[:10]}", "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
            **extra}


@pytest.fixture()
def s3_settings(s3_server, tmp_path) -> Settings:
    return Settings.from_env(s3_env(s3_server, tmp_path))


def put_source(settings: Settings, frame: pd.DataFrame) -> str:
    """The events as one Parquet file under the store's prefix on S3 (microseconds, as Spark writes them);
    the source path as a definition names it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.copy()
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us]")
    folder = f"{settings.s3_bucket}/{settings.storage_path}/source"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f"{folder}/part-0.parquet",
                   filesystem=storage_s3.filesystem(settings))
    return f"s3a://{folder}"


def local_twin(tmp_path, on_engine, frame: pd.DataFrame):
    """The same set on local disk, materialized on DuckDB (cheap; both engines write the same rows, as the
    materialization tests show), retrieved on the engine under test: the reference the S3 store must equal."""
    from test_materialize_support import create_set, write_source

    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "local"), "SOURCE_ROOTS": str(tmp_path)})
    writer = on_engine(settings, on="duckdb")
    create_set(writer, write_source(tmp_path / "local-source", frame))
    assert writer.materialize("user_txn", T0, T_END)["status"] == "succeeded"
    writer.close()
    return on_engine(settings)


def s3_store(settings, on_engine, frame: pd.DataFrame):
    from test_materialize_support import create_set

    store = on_engine(settings)
    create_set(store, put_source(settings, frame))
    return store


def offline_tuples(store, name: str = "user_txn", version: int | None = None) -> list[tuple]:
    table = offline.delta_table(store.settings, name, version).to_pyarrow_table().to_pandas()
    return sorted((int(r.user_id), pd.Timestamp(r.event_timestamp).tz_localize(None).to_pydatetime(), float(r.amount_x2),
                   int(r.txn_count_2d), float(r.amount_sum_2d), float(r.avg_amount_2d))
                  for r in table.itertuples(index=False))


def test_materialize_to_s3_and_read_back_offline_online_historical_as_of_and_a_training_set(
        s3_settings, redis_url, on_engine, compute_engine, tmp_path):
    """On each engine: two runs to S3 (two Delta versions), the offline rows and the online values (Redis)
    as computed, historical retrieval equal to the same set on local disk row for row, ``as_of`` the first
    version giving the answer it gave then, and a training set (with the window's pinned event copy) written
    to S3 and re-created from there."""
    frame = events()
    store = s3_store(s3_settings.with_(redis_url=redis_url), on_engine, frame)
    features = [f"user_txn:{f}" for f in FEATURES]
    mid = T0 + timedelta(days=3)
    assert store.materialize("user_txn", T0, mid)["status"] == "succeeded"
    first_version = offline.current_version(store.settings, "user_txn")
    then = store.get_historical_features(entity_df=LABELS, features=features).to_df()
    assert store.materialize("user_txn", mid, T_END)["status"] == "succeeded"
    assert offline.current_version(store.settings, "user_txn") > first_version
    assert offline.table_uri(store.settings, "user_txn").startswith(f"s3a://{BUCKET}/{s3_settings.storage_path}/")
    assert offline_tuples(store) == oracle(frame)
    online = store.get_online_features(features=["user_txn:amount_x2"], entities={"user_id": [1, 2, 3]})
    latest = {u: max((r for r in oracle(frame) if r[0] == u), key=lambda r: r[1])[2] for u in (1, 2, 3)}
    assert {u: online["features"][str(u)]["user_txn:amount_x2"] for u in (1, 2, 3)} == latest

    local = local_twin(tmp_path, on_engine, frame)
    on_disk = local.get_historical_features(entity_df=LABELS, features=features).to_df()
    on_s3 = store.get_historical_features(entity_df=LABELS, features=features, save_as="on_s3").to_df()
    assert len(on_s3) == len(LABELS) and not on_s3.equals(then)  # labels after `mid` see the second run's rows
    pd.testing.assert_frame_equal(on_s3, on_disk)
    travelled = store.get_historical_features(entity_df=LABELS, features=features, as_of=first_version).to_df()
    pd.testing.assert_frame_equal(travelled, then)

    meta = store.get_training_set("on_s3")
    prefix = f"s3a://{BUCKET}/{s3_settings.storage_path}/"
    assert meta["output_path"].startswith(prefix) and meta["entities_path"].startswith(prefix)
    assert meta["events_paths"]["user_txn"].startswith(prefix)  # the windows' pinned event copy is on S3 too
    import pyarrow.parquet as pq

    written = pq.read_table(storage_s3.path_on(meta["output_path"]), filesystem=storage_s3.filesystem(s3_settings))
    assert written.num_rows == len(LABELS)
    pd.testing.assert_frame_equal(store.recreate_training_set("on_s3").to_df(), on_s3)
    store.close()
    local.close()


def test_delta_rs_and_delta_spark_read_each_other_on_s3(s3_settings, spark):
    """A table committed by delta-rs (the DuckDB engine's write) read by delta-spark through s3a, and one
    written by delta-spark read by delta-rs, on the same bucket."""
    from fstore.engine.jars import has_delta_classes
    from fstore.store import FeatureStore
    from test_delta_interop import FSV, T0 as D0, by_delta_spark, by_delta_rs, hours, write_duckdb_engine, write_spark

    if not has_delta_classes(spark._jvm):
        pytest.skip("delta-spark's jars are not cached (python -m fstore.engine.jars)")
    FeatureStore(s3_settings).use_spark(spark)  # the session reaches the bucket
    rows = [("u1", hours(1), 1.0, 1), ("u2", hours(30), 2.0, 2)]
    by_rs = s3_settings.with_(storage_path=s3_settings.storage_path + "/rs")
    write_duckdb_engine(by_rs, rows, D0, hours(48))
    assert by_delta_spark(spark, by_rs) == by_delta_rs(by_rs) == sorted((*r, None) for r in rows)
    by_spark = s3_settings.with_(storage_path=s3_settings.storage_path + "/spark", delta_writer="spark")
    write_spark(spark, by_spark, rows, D0, hours(48))
    write_spark(spark, by_spark, rows[:1], D0, hours(24))  # a second version: u1 stays, u2 gone from day 1 only
    assert offline.current_version(by_spark, "txn") == 1
    assert by_delta_rs(by_spark, 0) == by_delta_spark(spark, by_spark, version=0) == sorted((*r, None) for r in rows)
    assert by_delta_rs(by_spark) == by_delta_spark(spark, by_spark)
    assert FSV.name == "txn"


def test_racing_delta_rs_commits_on_s3_lose_nothing(s3_settings):
    """Three writers appending to one table at once: each Delta log entry is a conditional put, so a writer
    that lost the race for a version retries on the next one and every commit survives."""
    import pyarrow as pa
    from deltalake import write_deltalake

    uri = storage_s3.delta_uri(offline.table_uri(s3_settings, "race"))
    options = offline.storage_options(s3_settings)
    write_deltalake(uri, pa.table({"x": [0]}), storage_options=options)
    failures = []

    def append(writer: int) -> None:
        for i in range(5):
            try:
                write_deltalake(uri, pa.table({"x": [writer * 10 + i]}), mode="append", storage_options=options)
            except Exception as exc:  # noqa: BLE001 - collected: the assertion names it
                failures.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 15
    assert sorted(table.to_pyarrow_table()["x"].to_pylist()) == [0] + [w * 10 + i for w in (1, 2, 3) for i in range(5)]


def test_a_wrong_secret_names_the_bucket_and_endpoint_never_the_secret(s3_server, tmp_path, on_engine,
                                                                       compute_engine, caplog):
    from test_materialize_support import create_set

    good = Settings.from_env(s3_env(s3_server, tmp_path, S3_BUCKET=OTHER))
    wrong_secret = "wrong-" + s3_server["secret"][::-1]
    bad = good.with_(s3_secret_key=wrong_secret)
    caplog.set_level(logging.DEBUG)
    store = on_engine(bad)
    with pytest.raises(Unavailable) as refused:  # defining a set checks its offline table: refused at once
        create_set(store, put_source(good, events()))
    assert OTHER in refused.value.message and s3_server["endpoint"] in refused.value.message
    create_set(on_engine(good), put_source(good, events()))  # the same registry, defined with the right keys
    with pytest.raises(Unavailable) as failed:
        store.materialize("user_txn", T0, T_END)
    run = store.list_runs("user_txn")["items"][0]
    assert run["status"] == "failed" and run["error"] == failed.value.message
    message = run["error"]
    assert OTHER in message and s3_server["endpoint"] in message, message
    with pytest.raises(Unavailable) as raised:
        store.get_historical_features(entity_df=LABELS, features=["user_txn:amount_x2"])
    assert OTHER in raised.value.message and s3_server["endpoint"] in raised.value.message
    for text in (refused.value.message, message, raised.value.message, caplog.text, str(store.list_runs("user_txn"))):
        assert wrong_secret not in text and s3_server["secret"] not in text
    store.close()


def test_a_batch_job_reads_entities_from_s3_and_writes_delta_to_s3_on_each_engine(s3_settings, spark):
    """DuckDB runs a real batch job (a detached process, no JVM): entity rows from S3, Delta output to S3.
    Spark's writer puts the same retrieval in another S3 folder as Delta; both read back equal; an output
    location that holds anything is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.core.errors import AlreadyExists
    from fstore.serving.retrieval.batch import write_output
    from test_batch_retrieval import wait_for

    from test_materialize_support import create_set

    from fstore.store import FeatureStore

    duck = FeatureStore(s3_settings.with_(compute_engine="duckdb"))
    create_set(duck, put_source(s3_settings, events()))
    assert duck.materialize("user_txn", T0, T_END)["status"] == "succeeded"
    root = f"s3a://{BUCKET}/{s3_settings.storage_path}"
    fs = storage_s3.filesystem(s3_settings)
    labels = LABELS.assign(event_timestamp=LABELS.event_timestamp.astype("datetime64[us]"))
    pq.write_table(pa.Table.from_pandas(labels, preserve_index=False), f"{storage_s3.path_on(root)}/labels/l.parquet",
                   filesystem=fs)
    features = [f"user_txn:{f}" for f in FEATURES]
    job = duck.start_batch_retrieval(entity_source={"path": f"{root}/labels", "format": "parquet"},
                                     features=features, output_path=f"{root}/out/duckdb", output_format="delta")
    done = wait_for(duck, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]

    on_spark = FeatureStore(s3_settings.with_(compute_engine="spark")).use_spark(spark)
    write_output(on_spark.get_historical_features(entity_df=LABELS, features=features).to_spark(), s3_settings,
                 f"{root}/out/spark", "delta")
    key = lambda table: sorted(map(repr, table.to_pylist()))  # noqa: E731 - Parquet readers do not promise file order
    from deltalake import DeltaTable

    tables = [DeltaTable(storage_s3.delta_uri(f"{root}/out/{name}"),
                         storage_options=storage_s3.delta_options(s3_settings)).to_pyarrow_table()
              for name in ("duckdb", "spark")]
    assert tables[0].num_rows == len(LABELS) and key(tables[0]) == key(tables[1])
    with pytest.raises(AlreadyExists, match="out/duckdb"):
        duck.start_batch_retrieval(entity_source={"path": f"{root}/labels", "format": "parquet"},
                                   features=features, output_path=f"{root}/out/duckdb", output_format="parquet")
    duck.close()


def test_a_parquet_source_on_s3_with_nanosecond_times_reads_the_same_on_both_engines(s3_settings, spark):
    """pandas writes nanosecond timestamps, which Spark reads only as longs: their footers are read on S3 too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.definitions.model import Source
    from fstore.engine import duckdb as engine
    from fstore.engine.spark import read_source
    from fstore.store import FeatureStore

    FeatureStore(s3_settings).use_spark(spark)
    frame = events()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("event_timestamp").type == pa.timestamp("ns")
    folder = f"{BUCKET}/{s3_settings.storage_path}/nanos"
    pq.write_table(table, f"{folder}/part-0.parquet", filesystem=storage_s3.filesystem(s3_settings))
    source = Source(path=f"s3a://{folder}", format="parquet", event_timestamp_column="event_timestamp")
    by_spark = read_source(spark, source, settings=s3_settings).toPandas()
    with engine.connect() as con:
        by_duckdb = engine.read_source(con, source, settings=s3_settings).df()
    expected = sorted(zip(frame.user_id, frame.event_timestamp, frame.amount))
    for got in (by_spark, by_duckdb):
        times = pd.to_datetime(got.event_timestamp)
        times = times.dt.tz_convert("UTC").dt.tz_localize(None) if times.dt.tz is not None else times
        assert sorted(zip(got.user_id, times, got.amount)) == expected
