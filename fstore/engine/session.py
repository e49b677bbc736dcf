"""Creating the Spark session: only jobs, the server, the CLI and tests call this.

Library functions take a ``spark`` argument; this module is where one is made.
An active session (``spark-submit``) always wins, so its settings are kept.
"""
from __future__ import annotations

import os
import sys

from fstore.engine import jars
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
    """The active Spark session, or a new one for ``settings`` (local, cluster or Spark Connect)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    ensure_java()
    # Python workers must run this interpreter (this venv), or they cannot import fstore's dependencies.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if settings.spark_remote:
        return builder.remote(settings.spark_remote).getOrCreate()
    master = settings.spark_master
    if settings.max_compute_threads and master.startswith("local"):
        master = f"local[{settings.max_compute_threads}]"
    builder = builder.master(master)
    for key, value in session_conf(settings, extra).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level.upper())
    return spark
