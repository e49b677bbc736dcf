"""A real Spark cluster: a standalone master and two workers (JVMs of their own, from pyspark's ``spark-class``,
everything on loopback) run a library materialization, ``spark-submit jobs/materialize.py``, a historical
retrieval and a batch job; each result equals local mode's row for row.

The cluster's drivers are other processes, as in production (and a process holds one SparkContext: this one
has the suite's local session, which computes the local-mode answers): ``spark-submit``, and a Python script
(``spark_cluster_driver.py``) whose store gets ``SPARK_MASTER=spark://…``. Two drivers, not one per call: each
costs a driver JVM and two executor JVMs, and the file must stay small.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REDIS_TEST_URL, _service_missing
from fstore.engine import cluster as spark_cluster
from fstore.engine.spark_env import DEFAULTS_FILE
from fstore.compute.materialize import JOB_SCRIPT, settings_env
from fstore.core.settings import Settings
from fstore.store import FeatureStore
from spark_cluster_driver import APP_NAME, SHUFFLE, batch_job

# About a minute on two idle cores; the bounds below are for a starved machine (each a limit, not a timing).
pytestmark = [pytest.mark.topology, pytest.mark.spark, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("spark_cluster_driver.py")
T0 = datetime(2024, 1, 1)
T_END = datetime(2024, 1, 7)
USERS = range(1, 41)  # users 41 and 42 ask for features and have no events
FEATURES = ["user_txn:amount_x2", "txn_count_2d", "amount_sum_2d", "avg_amount_2d", "merchant_amount",
            "merchant_txn_1d"]
APPS = ("fstore-materialize-merchant_txn", APP_NAME)  # the Spark applications of the two drivers


def events() -> pd.DataFrame:
    """2,000 transactions of 40 users at 6 merchants over 6 days, whole seconds, some sharing a user's timestamp;
    amounts in quarters, so a sum is exact in whatever order the executors add it up."""
    rng = np.random.default_rng(21)
    n = 2000
    frame = pd.DataFrame({
        "user_id": rng.integers(USERS.start, USERS.stop, n),
        "merchant_id": rng.integers(10, 16, n),
        "event_timestamp": pd.to_datetime(T0) + pd.to_timedelta(rng.integers(0, 6 * 86400, n), unit="s"),
        "amount": rng.integers(1, 400, n) / 4,
    })
    frame.loc[1::50, "event_timestamp"] = frame.event_timestamp.shift(1)[1::50]  # ties with the row before
    frame.loc[1::50, "user_id"] = frame.user_id.shift(1)[1::50].astype(int)
    return frame


def entity_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """300 entity rows: random times (some before any event, two users with none), 30 exactly at an event."""
    rng = np.random.default_rng(22)
    rows = pd.DataFrame({
        "user_id": rng.integers(1, 43, 270), "merchant_id": rng.integers(10, 16, 270),
        "event_timestamp": pd.to_datetime(T0) + pd.to_timedelta(rng.integers(-3600, 7 * 86400, 270), unit="s"),
    })
    exact = frame.sample(30, random_state=23)[["user_id", "merchant_id", "event_timestamp"]]
    rows = pd.concat([rows, exact], ignore_index=True)
    rows.insert(0, "label_id", range(len(rows)))
    return rows.astype({"event_timestamp": "datetime64[us]"})


def define(store: FeatureStore, source: str) -> None:
    """``user_txn`` (a row feature, 2-day windows, a composite, a TTL) and ``merchant_txn`` (a row feature and a
    1-day window) over one source."""
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_entity({"name": "merchant", "join_keys": ["merchant_id"], "value_type": "int"})
    src = {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"}
    store.create_feature_set({"name": "user_txn", "entities": ["user"], "ttl": "1d", "source": src, "features": [
        {"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
        {"name": "txn_count_2d", "data_type": "int", "window_size": "2d", "aggregation": "count"},
        {"name": "amount_sum_2d", "data_type": "float", "window_size": "2d", "aggregation": "sum",
         "transformation": "amount"},
        {"name": "avg_amount_2d", "data_type": "float", "transformation": "amount_sum_2d / txn_count_2d",
         "source_features": ["amount_sum_2d", "txn_count_2d"]}]})
    store.create_feature_set({"name": "merchant_txn", "entities": ["merchant"], "source": src, "features": [
        {"name": "merchant_amount", "data_type": "float", "transformation": "amount"},
        {"name": "merchant_txn_1d", "data_type": "int", "window_size": "1d", "aggregation": "count"}]})


def offline(store: FeatureStore, name: str) -> pd.DataFrame:
    """A set's offline rows as any Delta reader sees them (``deltalake``), in one order, without the time of
    computing (``created_timestamp``)."""
    from deltalake import DeltaTable

    from fstore.storage.offline import table_uri

    frame = DeltaTable(table_uri(store.settings, name)).to_pandas().drop(columns=["created_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame.event_timestamp, utc=True)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def online(store: FeatureStore, name: str, key: str, values) -> dict:
    """``key value -> (event time micros, {feature: value})`` of a set's online store (None when absent)."""
    from fstore.storage.online.base import NULL, Codec

    codec = Codec.from_version(store.feature_set_version(name))
    out = {}
    for value, found in zip(values, store.online.read(codec, [codec.key_of({key: v}) for v in values])):
        out[value] = found and (found[0], {f: None if raw is None or raw == NULL else codec.decoders[f](raw)
                                           for f, raw in zip(codec.feature_names, found[1])})
    return out


def listening_addresses(pids: list[int]) -> set[str]:
    """The addresses every TCP socket that ``pids`` and their process groups (executors) listen on is bound to."""
    inodes: set[str] = set()
    members = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _group(int(p.name)) in pids]
    for pid in set(pids) | set(members):
        try:
            for fd in (Path(f"/proc/{pid}/fd")).iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))  # /proc prints 32-bit words host-endian
            address = ipaddress.ip_address(raw)
            found.add(str(getattr(address, "ipv4_mapped", None) or address))
    return found


def _group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A master and two workers (1 core, 1 GB each) for this module, stopped by process id at its end."""
    folder = tmp_path_factory.mktemp("spark-cluster")
    try:
        started = spark_cluster.start(folder, workers=2, cores=1, memory="1g", timeout=300)
        yield started
    finally:
        spark_cluster.stop(folder)


@pytest.fixture(scope="module")
def redis_db():
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2)
    try:
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        _service_missing("Redis", exc)
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def runs(cluster, redis_db, spark, tmp_path_factory):
    """Everything, once: the same sets, source and entity rows in a local-mode store (this process's session,
    the embedded online store) and in a cluster store (Redis), each computed on its own side."""
    root = tmp_path_factory.mktemp("cluster-data")
    source, entities = root / "source", root / "entities"
    source.mkdir()
    entities.mkdir()
    frame = events()
    frame.astype({"event_timestamp": "datetime64[us]"}).to_parquet(source / "part-0.parquet", index=False)
    entity_rows(frame).to_parquet(entities / "part-0.parquet", index=False)

    local = FeatureStore(Settings.from_env({"STORAGE_PATH": str(root / "local"), "SOURCE_ROOTS": str(root)}))
    local.use_spark(spark)
    on_cluster = FeatureStore(Settings.from_env({"STORAGE_PATH": str(root / "cluster"), "SOURCE_ROOTS": str(root),
                                                 "SPARK_MASTER": cluster.master_url, "REDIS_URL": redis_db}))
    for store in (local, on_cluster):
        define(store, str(source))
    env = {**os.environ, **settings_env(on_cluster.settings), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    # 1. spark-submit jobs/materialize.py, the master named by --master alone (SPARK_MASTER unset).
    submit_env = {k: v for k, v in env.items() if k != "SPARK_MASTER"}
    jars = subprocess.run([sys.executable, "-m", "fstore.engine.jars", "--print-jars"], env=submit_env,
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    job = subprocess.run([str(spark_cluster.spark_home() / "bin" / "spark-submit"), "--master", cluster.master_url,
                          "--properties-file", str(DEFAULTS_FILE), *(["--jars", jars] if jars else []),
                          *[a for k, v in SHUFFLE.items() for a in ("--conf", f"{k}={v}")],
                          str(JOB_SCRIPT), "--feature-set", "merchant_txn", "--start", T0.isoformat(),
                          "--end", T_END.isoformat()],
                         env=submit_env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    submitted = json.loads(job.stdout.strip().splitlines()[-1])

    # 2. The library on SPARK_MASTER=spark://…: materialize user_txn, history over both sets, a batch job.
    driver = subprocess.run([sys.executable, str(DRIVER), "user_txn", T0.isoformat(), T_END.isoformat(),
                             str(entities), ",".join(FEATURES), str(root / "history.parquet"),
                             str(root / "batch-cluster")],
                            env=env, cwd=root, capture_output=True, text=True, timeout=1200)
    assert driver.returncode == 0, driver.stderr[-3000:]
    report = json.loads(driver.stdout.strip().splitlines()[-1])

    # Local mode: the same calls in this process's local session.
    local.materialize("merchant_txn", T0, T_END)
    local.materialize("user_txn", T0, T_END)
    local.get_historical_features(entity_df=pd.read_parquet(entities), features=FEATURES).to_df() \
        .to_parquet(root / "history-local.parquet", index=False)
    local_job = batch_job(local, str(entities), FEATURES, str(root / "batch-local"))
    assert local_job["status"] == "succeeded", local_job

    yield {"local": local, "cluster": on_cluster, "submitted": submitted, "report": report, "root": root}
    local.close()
    on_cluster.close()


def test_the_cluster_is_a_master_and_two_one_core_workers_listening_on_loopback_only(cluster):
    state = cluster.describe()
    assert state["status"] == "ALIVE" and state["url"] == cluster.master_url
    assert [(w["host"], w["cores"], w["state"]) for w in state["workers"]] == [("127.0.0.1", 1, "ALIVE")] * 2
    addresses = listening_addresses(list(cluster.pids))
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


def test_spark_submit_materializes_on_the_cluster_as_local_mode_does(runs, cluster):
    assert runs["submitted"]["status"] == "succeeded" and runs["submitted"]["rows_written"] == len(events())
    local, on_cluster = runs["local"], runs["cluster"]
    pd.testing.assert_frame_equal(offline(on_cluster, "merchant_txn"), offline(local, "merchant_txn"),
                                  check_exact=True)
    merchants = list(range(10, 16))
    assert online(on_cluster, "merchant_txn", "merchant_id", merchants) == \
        online(local, "merchant_txn", "merchant_id", merchants)


def test_a_library_materialization_on_spark_master_equals_local_mode(runs):
    report = runs["report"]
    assert report["master"] == runs["cluster"].settings.spark_master and report["master"].startswith("spark://")
    assert report["run"]["status"] == "succeeded" and report["run"]["rows_written"] == len(events())
    # Executors imported fstore from the driver's tree (not an installed copy) with the driver's Python.
    assert {(e["fstore"], e["python"]) for e in report["executors"]} == {(str(ROOT / "fstore" / "__init__.py"),
                                                                         sys.executable)}
    local, on_cluster = runs["local"], runs["cluster"]
    pd.testing.assert_frame_equal(offline(on_cluster, "user_txn"), offline(local, "user_txn"), check_exact=True)
    users = list(range(1, 43))
    assert online(on_cluster, "user_txn", "user_id", users) == online(local, "user_txn", "user_id", users)


def test_historical_retrieval_on_the_cluster_equals_local_mode_row_for_row(runs):
    local_rows = pd.read_parquet(runs["root"] / "history-local.parquet")
    cluster_rows = pd.read_parquet(runs["root"] / "history.parquet")
    assert len(local_rows) == 300 and local_rows["txn_count_2d"].gt(0).any() and local_rows["user_txn__amount_x2"].isna().any()
    pd.testing.assert_frame_equal(cluster_rows, local_rows, check_exact=True)


def test_a_batch_job_on_the_cluster_writes_what_local_mode_writes(runs):
    from deltalake import DeltaTable

    assert runs["report"]["job"] == "succeeded"

    def rows(path: Path) -> pd.DataFrame:
        return DeltaTable(str(path)).to_pandas().sort_values("label_id").reset_index(drop=True)

    local_rows, cluster_rows = rows(runs["root"] / "batch-local"), rows(runs["root"] / "batch-cluster")
    assert len(local_rows) == 300
    pd.testing.assert_frame_equal(cluster_rows, local_rows, check_exact=True)


def test_every_driver_ran_its_tasks_on_both_workers(runs, cluster):
    """The master lists each driver's application, and each worker's work folder holds an executor of each."""
    state = cluster.describe()
    apps = {app["name"]: app["id"] for app in state["completedapps"] + state["activeapps"]}
    assert set(APPS) <= set(apps), apps
    for name in APPS:
        for worker in ("work-1", "work-2"):
            assert list((cluster.folder / worker / apps[name]).glob("*/stderr")), (name, worker)
