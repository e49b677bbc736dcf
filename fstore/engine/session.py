"""Creating the Spark session: only jobs, the server, the CLI and tests call this.

Library functions take a ``spark`` argument; this module is where one is made.
An active session (``spark-submit``) always wins, so its settings are kept.
"""
from __future__ import annotations

import os
import sys

from fstore.engine import connect, jars
from fstore.engine.class_archive import driver_java_options
from fstore.engine.spark_env import LOG4J_FILE, ensure_java, spark_defaults
from fstore.core.settings import Settings


def session_conf(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The settings of a session ``get_spark`` creates: spark-defaults.conf, S3, the local Python daemon,
    the cached jars (Delta), ``extra``, the class archive."""
    conf = spark_defaults()
    if settings.storage_backend == "s3":
        conf.update({
            "spark.hadoop.fs.s3a.endpoint": settings.s3_endpoint,
            "spark.hadoop.fs.s3a.access.key": settings.s3_access_key,
            "spark.hadoop.fs.s3a.secret.key": settings.s3_secret_key,
            "spark.hadoop.fs.s3a.path.style.access": "true",
        })
    if settings.spark_master.startswith("local"):
        # Local workers run this interpreter: let them import pyspark compiled, not from its zip.
        conf.setdefault("spark.python.daemon.module", "fstore.engine.spark_daemon")
    conf.update(jars.spark_conf(settings, _running_jvm()))  # the cached Delta (and, for S3, hadoop-aws) jars
    conf.update(extra or {})
    options = [conf.get("spark.driver.extraJavaOptions", "")]
    if LOG4J_FILE.is_file() and "SPARK_CONF_DIR" not in os.environ:  # an operator's own Spark conf wins
        options.append(f"-Dlog4j2.configurationFile=file:{LOG4J_FILE}")
    options.append(driver_java_options())  # mapped classes: the driver starts seconds sooner (class_archive.py)
    joined = " ".join(o for o in options if o)
    if joined:
        conf["spark.driver.extraJavaOptions"] = joined
    return conf


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
    builder = SparkSession.builder.appName(app_name).master(connect.master(settings))
    for key, value in session_conf(settings, extra).items():
        builder = builder.config(key, value)
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
