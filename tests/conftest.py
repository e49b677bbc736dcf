"""Shared fixtures: settings → registry engine → store → app → client, one Spark session.

Services: the integration tests talk to the real PostgreSQL and Redis on
127.0.0.1. Without them a test skips, unless FSTORE_REQUIRE_SERVICES=1 (CI),
where it fails instead.
"""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
import uuid

import pytest

from fstore.core.settings import Settings

PG_ADMIN_URL = os.environ.get("FSTORE_TEST_PG", "postgresql://fstore:fstore@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("FSTORE_TEST_REDIS", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("FSTORE_REQUIRE_SERVICES") == "1"


def _service_missing(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def store_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a test's store: data in ``tmp_path/store``; sources may be read anywhere in
    ``tmp_path`` (SOURCE_ROOTS), as tests write their sources beside the store."""
    return {"STORAGE_PATH": str(tmp_path / "store"), "SOURCE_ROOTS": str(tmp_path), **extra}


@pytest.fixture()
def settings(tmp_path) -> Settings:
    """Embedded defaults in a fresh folder: SQLite registry, local Delta, embedded online store."""
    return Settings.from_env(store_env(tmp_path))


@pytest.fixture(scope="session")
def pg_database():
    """A PostgreSQL database of its own for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text

    name = f"fstore_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means the service is not usable
        _service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def pg_settings(tmp_path, pg_database) -> Settings:
    """Settings on the real PostgreSQL, with an empty schema for each test."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_database)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return Settings.from_env(store_env(tmp_path, DATABASE_URL=pg_database))


@pytest.fixture(params=["sqlite", "postgres"])
def any_registry_settings(request, tmp_path) -> Settings:
    """The same test on the SQLite registry and on the real PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("settings")
    return request.getfixturevalue("pg_settings")


@pytest.fixture()
def redis_url() -> str:
    """The real Redis (database 15), emptied for each test."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2)
    try:
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        _service_missing("Redis", exc)
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


# FSTORE_TEST_SPARK_REMOTE=1: the `spark` fixture is a Spark Connect session on a server this run starts (and
# stops, by its pid) with the same settings; every Spark test then runs over Connect, and so do the fstore
# processes tests start (SPARK_REMOTE is exported). A sc:// URL uses that server instead. Unset: in-process.
TEST_SPARK_REMOTE = os.environ.get("FSTORE_TEST_SPARK_REMOTE", "").strip()
if TEST_SPARK_REMOTE in ("", "0"):
    # A server a developer started with `fstore spark up` must not serve the suite's processes by itself.
    os.environ.setdefault("SPARK_CONNECT", "off")
TEST_SPARK_EXTRA = {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
                    "spark.driver.memory": "2g", "spark.sql.adaptive.enabled": "false"}


def test_spark_settings(**extra: str) -> Settings:
    """The settings of the suite's Spark: local[2], and DELTA_WRITER and the jars' cache from the environment:
    with the jars cached (make setup) the whole suite writes and reads Delta through delta-spark; tests of the
    other path set delta_writer="delta-rs"."""
    env = {k: os.environ[k] for k in ("DELTA_WRITER", "SPARK_JARS_DIR", "XDG_CACHE_HOME") if k in os.environ}
    return Settings.from_env({"SPARK_MASTER": "local[2]", "SPARK_CONNECT": "off", **env, **extra})


def over_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory):
    """A 3-master Redis Cluster of our own for the session (``tests/redis_cluster_support.py``)."""
    import shutil

    from redis_cluster_support import RedisClusterServers

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _service_missing("Redis Cluster", RuntimeError("redis-server/redis-cli are not installed"))
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        servers.start()
    except Exception as exc:  # noqa: BLE001 - a cluster that cannot start is a missing service
        servers.stop()
        _service_missing("Redis Cluster", exc)
    yield servers
    servers.stop()


@pytest.fixture()
def redis_cluster_url(redis_cluster_servers) -> str:
    """``REDIS_URL`` of the session's Redis Cluster (``redis+cluster://…``), every master emptied for each test."""
    redis_cluster_servers.flush()
    yield redis_cluster_servers.url
    redis_cluster_servers.flush()


@pytest.fixture(params=["redis", "redis-cluster"])
def any_redis_url(request) -> str:
    """The same test on one Redis and on the Redis Cluster."""
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One Spark session for the whole run, with few shuffle partitions (tests use small data): in-process,
    or over Spark Connect with FSTORE_TEST_SPARK_REMOTE."""
    from fstore.engine.session import get_spark

    server = None
    if TEST_SPARK_REMOTE in ("", "0"):
        settings = test_spark_settings()
    else:
        url = TEST_SPARK_REMOTE
        if not url.startswith("sc://"):
            from fstore.engine import connect_server

            state = tmp_path_factory.mktemp("spark-connect")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = connect_server.start(test_spark_settings(SPARK_CONNECT_DIR=str(state)), port=port,
                                   extra=TEST_SPARK_EXTRA)
            url = server.url
        os.environ["SPARK_REMOTE"] = url  # the fstore processes tests start use it too
        settings = test_spark_settings(SPARK_REMOTE=url)
    extra = dict(TEST_SPARK_EXTRA)
    # The jars an S3 store's session gets too (hadoop-aws, when cached): jars join the class path only at the
    # start, and test_s3 reaches its moto server through this session (the bucket's settings come later,
    # from FeatureStore.use_spark: fstore.engine.session.configure_s3a).
    # And Spark's Kafka source (when cached), for the stream's warm-up read tested in process (test_stream_kafka).
    from fstore.engine.jars import kafka_jars, spark_conf

    s3_jars = spark_conf(settings.with_(storage_backend="s3")).get("spark.jars")
    jars = [j for j in (s3_jars or "").split(",") if j] + [f"local:{j}" for j in kafka_jars(settings) or []]
    if jars and server is None:
        extra["spark.jars"] = ",".join(jars)
    session = get_spark(settings, app_name="fstore-tests", extra=extra)
    yield session
    session.stop()
    if server is not None:
        from fstore.engine import connect_server

        connect_server.stop(test_spark_settings(SPARK_CONNECT_DIR=str(state)))


class NoSpark:
    """``store.spark`` of a store on the DuckDB engine under test: touching it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"COMPUTE_ENGINE=duckdb reached for the Spark session (spark.{name})")


@pytest.fixture(params=["spark", "duckdb"])
def compute_engine(request) -> str:
    """The compute engine a test runs its retrievals on (Spark, then DuckDB)."""
    return request.param


@pytest.fixture()
def on_engine(compute_engine, spark):
    """``on_engine(settings)`` → a ``FeatureStore`` computing on the test's engine.

    On DuckDB the store's ``spark`` is a ``NoSpark``: a retrieval that starts or uses Spark fails.
    Test helpers that materialize on Spark take the session itself (``SparkSession.getActiveSession()``).
    """
    from fstore.store import FeatureStore

    def make(settings: Settings, *, on: str | None = None, **kwargs):
        """``on`` picks the other engine for one store (a set saved on one engine, re-created on the other)."""
        if (on or compute_engine) == "spark":
            return FeatureStore(settings.with_(compute_engine="spark"), **kwargs).use_spark(spark)
        return FeatureStore(settings.with_(compute_engine="duckdb"), **kwargs).use_spark(NoSpark())

    return make


@pytest.fixture(params=["spark", "duckdb"])
def compute_rows(request):
    """``compute_rows(fsv, start=None, end=None)`` → pandas, on each engine (Spark, then DuckDB).

    The two engines run the same compiled query, so every test using this checks both.
    """
    if request.param == "spark":
        from fstore.engine.spark import compute

        spark, settings = request.getfixturevalue("spark"), request.getfixturevalue("settings")
        return lambda fsv, start=None, end=None: compute(spark, fsv, settings=settings, start=start, end=end).toPandas()
    from fstore.engine import duckdb as engine

    settings = request.getfixturevalue("settings")
    from fstore.serving.retrieval.plan import arrow_to_pandas  # as Spark's toPandas gives it

    def rows(fsv, start=None, end=None):
        with engine.connect() as con:  # compute seals its connection: one per computation
            return arrow_to_pandas(engine.compute(con, fsv, settings=settings, start=start, end=end))

    return rows


@pytest.fixture()
def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def run_server(tmp_path):
    """``run_server(argv, port, cwd=…, env=…)``: start a server process, logging to ``tmp_path/server.log``,
    and return it once ``GET /health`` answers 200; a server still running after the test is stopped."""
    started: list[tuple[subprocess.Popen, object]] = []
    log_path = tmp_path / "server.log"

    def run(argv: list[str], port: int, *, cwd, env: dict) -> subprocess.Popen:
        log = open(log_path, "ab")  # a file, not a pipe nobody reads (a full pipe blocks the server)
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append((process, log))
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return process
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    run.log_path = log_path
    yield run
    for process, log in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()
