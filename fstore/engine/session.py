"""Creating the Spark session: only jobs, the server, the CLI and tests call this.

Library functions take a ``spark`` argument; this module is where one is made.
An active session always wins, and so do the settings ``spark-submit`` was given
(``--master``, ``--conf``, ``--properties-file``): a session made under it only adds
what they leave unset.

On a cluster master (``spark://…``) the executors are other processes, started by
the workers: they get the driver's Python path (``spark.executorEnv.PYTHONPATH``, so
they import fstore from the driver's tree), the cached jars (``spark.jars``, as
``local:`` paths each worker reads from its own disk) and the class archive's JVM
options. That assumes what ``fstore.engine.cluster`` gives: workers on this machine,
or machines with the same paths (README: "Running on a Spark cluster").
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from fstore.engine import connect, jars
from fstore.engine.class_archive import driver_java_options
from fstore.engine.spark_env import LOG4J_FILE, ensure_java, local_cores, spark_defaults
from fstore.core.settings import Settings


def session_conf(settings: Settings, extra: dict[str, str] | None = None, *, master: str | None = None) -> dict[str, str]:
    """The settings of a session ``get_spark`` creates on ``master`` (default ``SPARK_MASTER``): spark-defaults.conf,
    S3, the local Python daemon or the executors' Python path, the cached jars (Delta), ``extra``, the class archive."""
    master = master or settings.spark_master
    conf = spark_defaults()
    if settings.storage_backend == "s3":
        conf.update({f"spark.hadoop.{key}": value for key, value in s3a_conf(settings).items()})
    local = master.startswith("local")
    if local:
        # Local workers run this interpreter: let them import pyspark compiled, not from its zip.
        conf.setdefault("spark.python.daemon.module", "fstore.engine.spark_daemon")
        # Delta rebuilds a table version's file list in this many tasks at every query over it (50 by default):
        # one task per core here. A 10-set retrieval of 1,000 labels ran 500 such tasks: 14 s -> 6 s.
        conf.setdefault("spark.databricks.delta.snapshotPartitions", str(local_cores(master) or 1))
    else:
        # Executors' Python workers inherit nothing from this process: name the tree fstore came from, or an
        # installed copy (another checkout's, say) would run their half of the job.
        conf.setdefault("spark.executorEnv.PYTHONPATH", executor_python_path())
    conf.update(jars.spark_conf(settings, _running_jvm()))  # the cached Delta (and, for S3, hadoop-aws) jars
    extra = dict(extra or {})
    if conf.get("spark.jars") and extra.get("spark.jars"):  # a session's own jars (Kafka's) join the cached ones
        joined = conf["spark.jars"].split(",") + extra["spark.jars"].split(",")
        extra["spark.jars"] = ",".join(dict.fromkeys(j for j in joined if j))
    conf.update(extra)
    options = [conf.get("spark.driver.extraJavaOptions", "")]
    if LOG4J_FILE.is_file() and "SPARK_CONF_DIR" not in os.environ:  # an operator's own Spark conf wins
        options.append(f"-Dlog4j2.configurationFile=file:{LOG4J_FILE}")
    options.append(driver_java_options())  # mapped classes: the driver starts seconds sooner (class_archive.py)
    _join_options(conf, "spark.driver.extraJavaOptions", options)
    if not local:
        # Executors run the same JVM and Spark jars from the same paths, so they map the same archive; a worker
        # without the file ignores the option silently.
        _join_options(conf, "spark.executor.extraJavaOptions",
                      [conf.get("spark.executor.extraJavaOptions", ""), driver_java_options()])
    return conf


def _join_options(conf: dict[str, str], key: str, options: list[str]) -> None:
    joined = " ".join(o for o in options if o)
    if joined:
        conf[key] = joined


def executor_python_path() -> str:
    """The Python path of a cluster's executors: the folder holding the ``fstore`` this process imported, then
    this process's ``PYTHONPATH`` (where user modules of python features may live)."""
    import fstore

    entries = [str(Path(fstore.__file__).resolve().parents[1])]
    entries += [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e and e not in entries]
    return os.pathsep.join(entries)


def submitted_conf() -> dict[str, str]:
    """What ``spark-submit`` was given for this process (``--master``, ``--conf``, ``--properties-file``…), read
    from its JVM; empty when this process was not started by ``spark-submit``."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}
    from pyspark import SparkConf

    _running_jvm()
    return dict(SparkConf().getAll())


def choose_master(settings: Settings, submitted: str | None = None) -> str:
    """The master of a new session: ``spark-submit --master``; else ``SPARK_MASTER`` (local masters sized by
    ``MAX_COMPUTE_THREADS``). spark-submit without ``--master`` says ``local[*]``, which ``SPARK_MASTER`` overrides."""
    if submitted and submitted != "local[*]":
        return submitted
    master = settings.spark_master
    if settings.max_compute_threads and master.startswith("local"):
        master = f"local[{settings.max_compute_threads}]"
    return master


def s3a_conf(settings: Settings, *, bucket: str | None = None) -> dict[str, str]:
    """Hadoop's ``fs.s3a.*`` settings for the S3 of ``settings``: endpoint (no TLS for an ``http://`` one),
    path-style requests (MinIO, moto and other S3-compatible servers), region, and the keys when set (else the
    AWS SDK's default chain: environment, profile, instance role). With ``bucket``, the per-bucket form
    (``fs.s3a.bucket.NAME.*``), which applies to that bucket only."""
    conf = {"path.style.access": "true", "endpoint.region": os.environ.get("AWS_REGION", "us-east-1")}
    if settings.s3_endpoint:
        conf["endpoint"] = settings.s3_endpoint
        conf["connection.ssl.enabled"] = "false" if settings.s3_endpoint.startswith("http://") else "true"
    if settings.s3_access_key:
        conf["aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        conf["access.key"] = settings.s3_access_key
        conf["secret.key"] = settings.s3_secret_key
    prefix = f"fs.s3a.bucket.{bucket}." if bucket else "fs.s3a."
    return {prefix + key: value for key, value in conf.items()}


def configure_s3a(spark, settings: Settings) -> None:
    """Give a running session the S3 settings of ``settings`` for its bucket (``fs.s3a.bucket.NAME.*`` on the
    session's Hadoop configuration), so that a session made elsewhere (``spark-submit``, a test's, one serving
    several stores) reaches the bucket. Later jobs read the configuration when they start. The jars
    (hadoop-aws) must already be on its class path: they cannot be added to a running JVM. Nothing to do for
    local storage or under Spark Connect (the server's own settings apply there)."""
    if settings.storage_backend != "s3":
        return
    try:
        hadoop = spark._jsc.hadoopConfiguration()
    except Exception:  # noqa: BLE001 - Spark Connect: no JVM in this process
        return
    with quiet_py4j():
        for key, value in s3a_conf(settings, bucket=settings.s3_bucket).items():
            hadoop.set(key, value)


@contextlib.contextmanager
def quiet_py4j():
    """py4j logs every command it sends at DEBUG, arguments included: while the S3 secret crosses into the
    JVM, its logger says nothing below WARNING (an application logging everything at DEBUG would
    otherwise write the secret to its log)."""
    logger = logging.getLogger("py4j")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _running_jvm():
    """The driver JVM this process already talks to (``spark-submit`` started it, or an earlier session), or None."""
    from pyspark import SparkContext

    if SparkContext._jvm is None and os.environ.get("PYSPARK_GATEWAY_PORT"):
        SparkContext._ensure_initialized()  # connects to spark-submit's JVM; launches nothing
    return SparkContext._jvm


def get_spark(settings: Settings, app_name: str = "fstore", extra: dict[str, str] | None = None):
    """The active Spark session, or a new one for ``settings``: a Spark Connect session when ``SPARK_REMOTE``
    names a server or ``fstore spark up`` started one for these settings (``fstore.engine.connect``),
    else a driver of this process's own (local or cluster)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        configure_s3a(active, settings)
        return active
    remote = connect.remote_url(settings)  # SPARK_REMOTE, or the server `fstore spark up` started
    if remote:
        builder = SparkSession.builder.remote(remote).appName(app_name)
        for key, value in (extra or {}).items():
            if key.startswith("spark.sql."):  # a session's own settings; the rest is the server's
                builder = builder.config(key, value)
        _quiet_client_errors(settings)
        return builder.getOrCreate()
    ensure_java()
    # Python workers must run this interpreter (this venv), or they cannot import fstore's dependencies.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    submitted = submitted_conf()
    master = choose_master(settings, submitted.get("spark.master"))
    builder = builder.master(master)
    for key, value in session_conf(settings, extra, master=master).items():
        if key not in submitted:  # spark-submit's settings win
            builder = builder.config(key, value)
    with quiet_py4j():  # the session's settings may hold the S3 secret
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level.upper())
    return spark


def _quiet_client_errors(settings: Settings) -> None:
    """Over Spark Connect, Spark's own log is the server's; what reaches this process is pyspark's client
    loggers, which print each failed query's whole server stack trace as JSON. With SPARK_LOG_LEVEL off or
    fatal (the CLI's default) they stay silent: fstore reports the failure itself, in one line."""
    import logging

    from pyspark.logger import PySparkLogger

    level = logging.CRITICAL + 1 if settings.spark_log_level in ("off", "fatal") else logging.ERROR
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(level)  # created as pyspark's own class, which its callers need
