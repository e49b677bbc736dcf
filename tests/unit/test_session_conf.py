"""The settings of sessions ``get_spark`` creates: the class archive's driver options, the local Python daemon."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest

from fstore.engine import class_archive
from fstore.engine.session import session_conf
from fstore.engine.spark_env import LOG4J_FILE
from fstore.core.settings import Settings

QUIET_LOG = f"-Dlog4j2.configurationFile=file:{LOG4J_FILE}"


def test_no_archive_file_means_no_option(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", str(tmp_path / "absent.jsa"))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    assert class_archive.driver_java_options() == ""
    assert session_conf(Settings.from_env({}))["spark.driver.extraJavaOptions"] == QUIET_LOG


def test_spark_logs_errors_only_unless_the_operator_has_a_spark_conf_dir(tmp_path, monkeypatch):
    """log4j's file is a system property, never SPARK_CONF_DIR (a folder on the class path stops the archive)."""
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", "off")
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    assert "rootLogger.level = ${sys:fstore.spark.level:-error}" in LOG4J_FILE.read_text()
    assert session_conf(Settings.from_env({}))["spark.driver.extraJavaOptions"] == QUIET_LOG
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert "spark.driver.extraJavaOptions" not in session_conf(Settings.from_env({}))


def test_an_archive_is_mapped_quietly_and_joins_other_driver_options(tmp_path, monkeypatch):
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", str(archive))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    options = class_archive.driver_java_options()
    assert options.startswith(f"-XX:SharedArchiveFile={archive} ")
    assert "-Xlog:disable" in options and "-Xlog:all=error:stderr" in options
    conf = session_conf(Settings.from_env({}), {"spark.driver.extraJavaOptions": "-Dmine=1"})
    assert conf["spark.driver.extraJavaOptions"] == f"-Dmine=1 {QUIET_LOG} {options}"


def test_off_turns_the_archive_off(monkeypatch):
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", "off")
    assert class_archive.archive_path() is None
    assert class_archive.driver_java_options() == ""


def test_the_default_file_is_named_for_the_jvm_and_the_jars(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CLASS_ARCHIVE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    first = class_archive.archive_path()
    assert first is not None and first.parent == tmp_path / "fstore" and first.suffix == ".jsa"
    other = tmp_path / "jdk2" / "bin" / "java"
    other.parent.mkdir(parents=True)
    other.write_text("")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk2"))
    assert class_archive.archive_path() != first  # another JVM looks for its own archive


def test_no_java_means_no_archive(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CLASS_ARCHIVE", raising=False)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    assert class_archive.archive_path() is None
    assert class_archive.main([]) == 0


def test_local_sessions_run_the_daemon_that_imports_compiled_pyspark(monkeypatch):
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", "off")
    assert session_conf(Settings.from_env({}))["spark.python.daemon.module"] == "fstore.engine.spark_daemon"
    on_cluster = session_conf(Settings.from_env({"SPARK_MASTER": "spark://head:7077"}))
    assert "spark.python.daemon.module" not in on_cluster  # its workers may not have fstore installed
    mine = session_conf(Settings.from_env({}), {"spark.python.daemon.module": "pyspark.daemon"})
    assert mine["spark.python.daemon.module"] == "pyspark.daemon"


def test_the_daemon_imports_pyspark_from_site_packages_when_spark_puts_its_zips_first():
    lib = Path(pyspark.__file__).parent / "python" / "lib"
    zips = sorted(str(p) for p in lib.glob("*.zip"))
    if not zips:
        pytest.skip("this pyspark ships no zips")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(zips)}  # what Spark gives its Python workers

    def pyspark_file(prelude: str) -> str:
        code = f"import sys; sys.argv = ['daemon']; {prelude}import pyspark; print(pyspark.__file__)"
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()[-1]

    assert "pyspark.zip" in pyspark_file("")  # Spark's own daemon: pyspark compiled from the zip, every time
    assert pyspark_file("import fstore.engine.spark_daemon; ") == pyspark.__file__


def test_cluster_executors_get_this_tree_on_their_python_path_and_the_class_archive(tmp_path, monkeypatch):
    """Executors are the workers' processes: nothing of this process's environment reaches them unless named."""
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", str(archive))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/user-features", ""]))
    tree = str(Path(__file__).resolve().parents[2])
    conf = session_conf(Settings.from_env({"SPARK_MASTER": "spark://127.0.0.1:7077"}))
    assert conf["spark.executorEnv.PYTHONPATH"] == os.pathsep.join([tree, "/opt/user-features"])
    assert conf["spark.executor.extraJavaOptions"] == class_archive.driver_java_options()
    assert f"-XX:SharedArchiveFile={archive}" in conf["spark.driver.extraJavaOptions"]
    local = session_conf(Settings.from_env({}))
    assert "spark.executorEnv.PYTHONPATH" not in local and "spark.executor.extraJavaOptions" not in local
    mine = session_conf(Settings.from_env({"SPARK_MASTER": "spark://h:7077"}),
                        {"spark.executorEnv.PYTHONPATH": "/srv/fstore", "spark.executor.extraJavaOptions": "-Da=1"})
    assert mine["spark.executorEnv.PYTHONPATH"] == "/srv/fstore"
    assert mine["spark.executor.extraJavaOptions"] == f"-Da=1 {class_archive.driver_java_options()}"


@pytest.mark.parametrize(("env", "submitted", "master"), [
    ({}, None, "local[*]"),
    ({"MAX_COMPUTE_THREADS": "3"}, None, "local[3]"),
    ({"SPARK_MASTER": "spark://h:7077"}, None, "spark://h:7077"),
    ({"SPARK_MASTER": "spark://h:7077"}, "local[*]", "spark://h:7077"),  # spark-submit without --master
    ({"SPARK_MASTER": "spark://h:7077"}, "spark://other:7077", "spark://other:7077"),
    ({}, "local[2]", "local[2]"),
    ({"MAX_COMPUTE_THREADS": "3"}, "local[*]", "local[3]"),
])
def test_spark_submit_master_wins_over_spark_master_unless_it_is_its_default(env, submitted, master):
    from fstore.engine.session import choose_master

    assert choose_master(Settings.from_env(env), submitted) == master


def test_s3_settings_reach_spark_and_delta_rs_from_settings_only():
    """s3a: endpoint, path-style, no TLS for http, the keys (Spark redacts *secret* settings); per bucket on a
    running session. delta-rs: the same endpoint and keys, and no AWS_S3_ALLOW_UNSAFE_RENAME (its commits are
    conditional puts)."""
    from fstore.engine import s3
    from fstore.engine.session import s3a_conf

    settings = Settings.from_env({"STORAGE_BACKEND": "s3", "S3_BUCKET": "lake", "S3_ENDPOINT": "http://127.0.0.1:9000",
                                  "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk"})
    conf = session_conf(settings)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "ak" and conf["spark.hadoop.fs.s3a.secret.key"] == "sk"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith("SimpleAWSCredentialsProvider")
    assert s3a_conf(settings, bucket="lake")["fs.s3a.bucket.lake.secret.key"] == "sk"
    assert s3a_conf(settings.with_(s3_endpoint="https://s3.example"))["fs.s3a.connection.ssl.enabled"] == "true"
    assert "fs.s3a.access.key" not in s3a_conf(settings.with_(s3_access_key="", s3_secret_key=""))  # the SDK's chain
    options = s3.delta_options(settings)
    assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_SECRET_ACCESS_KEY"] == "sk" and "AWS_S3_ALLOW_UNSAFE_RENAME" not in options
    assert "s3" not in " ".join(session_conf(Settings.from_env({})))  # local storage: no S3 settings at all


def test_an_s3_error_never_shows_the_secret():
    from fstore.engine import s3

    settings = Settings.from_env({"STORAGE_BACKEND": "s3", "S3_BUCKET": "lake", "S3_ENDPOINT": "http://h:9000",
                                  "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "s3cr3t"})
    error = s3.access_error(settings, OSError("\x1b[31mdenied\x1b[0m for s3cr3t; aws_secret_access_key=other"),
                            doing="opening offline table t", uri="s3://lake/x")
    assert error.message.startswith("opening offline table t: S3 bucket 'lake' at http://h:9000 failed: denied")
    assert "s3cr3t" not in error.message and "other" not in error.message and "\x1b" not in error.message


def test_a_sessions_own_jars_join_the_cached_ones_once_each(tmp_path, monkeypatch):
    """A stream's Kafka jars (``extra``) go beside the cached Delta jars, not instead of them; none twice."""
    from fstore.engine import session

    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", "off")
    # a new driver's conf: a JVM already running in this process (an earlier test's session) takes no jars
    monkeypatch.setattr(session, "_running_jvm", lambda: None)
    for name in ("delta-spark_2.13-4.0.0.jar", "delta-storage-4.0.0.jar"):
        (tmp_path / name).write_bytes(b"")
    settings = Settings.from_env({"SPARK_JARS_DIR": str(tmp_path)})
    delta = [f"local:{tmp_path / 'delta-spark_2.13-4.0.0.jar'}", f"local:{tmp_path / 'delta-storage-4.0.0.jar'}"]
    assert session_conf(settings)["spark.jars"].split(",") == delta
    joined = session_conf(settings, {"spark.jars": f"local:/k/kafka.jar,{delta[1]}"})["spark.jars"]
    assert joined.split(",") == [*delta, "local:/k/kafka.jar"]


@pytest.mark.parametrize("master, tasks", [("local[2]", "2"), ("local", "1"), ("local[3,2]", "3"),
                                           ("local[*]", str(os.cpu_count()))])
def test_a_local_session_rebuilds_delta_file_lists_in_one_task_per_core(master, tasks):
    conf = session_conf(Settings.from_env({"SPARK_MASTER": master}))
    assert conf["spark.databricks.delta.snapshotPartitions"] == tasks
    assert "spark.databricks.delta.snapshotPartitions" not in session_conf(Settings.from_env({"SPARK_MASTER": "spark://h:7077"}))
    mine = session_conf(Settings.from_env({"SPARK_MASTER": master}), {"spark.databricks.delta.snapshotPartitions": "16"})
    assert mine["spark.databricks.delta.snapshotPartitions"] == "16"


@pytest.mark.parametrize("master, cores", [("local[2]", 2), ("local[3,2]", 3), ("local", 1), ("local-cluster[2,1,1024]", 1),
                                           ("local[*]", os.cpu_count()), ("local[x]", None)])
def test_local_cores_reads_the_master_as_spark_does(master, cores):
    from fstore.engine.spark_env import local_cores

    assert local_cores(master) == cores
