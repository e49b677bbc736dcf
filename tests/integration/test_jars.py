"""Set-up's jar cache (``fstore.engine.jars``): what it fetches, where, and how sessions use it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fstore.engine import jars
from fstore.core.errors import Unavailable
from fstore.core.settings import Settings


def test_pyspark_4_0_gets_delta_4_0_and_the_s3_jars_hadoop_3_4_1_names():
    assert jars.spark_line() == "4.0"
    assert jars.delta_artifacts() == ["io.delta:delta-spark_2.13:4.0.0", "io.delta:delta-storage:4.0.0"]
    assert jars.s3_artifacts() == ["org.apache.hadoop:hadoop-aws:3.4.1", "software.amazon.awssdk:bundle:2.24.6"]
    assert jars.jar_file(Path("/c"), "io.delta:delta-storage:4.0.0") == Path("/c/delta-storage-4.0.0.jar")


def test_without_the_jars_auto_adds_nothing_and_spark_is_refused_naming_the_folder(tmp_path):
    empty = Settings.from_env({"SPARK_JARS_DIR": str(tmp_path)})
    assert jars.spark_conf(empty) == {}
    with pytest.raises(Unavailable, match=f"DELTA_WRITER=spark needs delta-spark's jars .* SPARK_JARS_DIR={tmp_path}"):
        jars.spark_conf(empty.with_(delta_writer="spark"))


def test_cached_jars_go_on_spark_jars_as_local_uris_with_deltas_extension_and_catalog():
    settings = Settings.from_env({})
    found = jars.delta_jars(settings)
    if found is None:
        pytest.skip(f"set-up has not cached the Delta jars in {settings.spark_jars_dir}")
    conf = jars.spark_conf(settings)
    assert conf["spark.jars"] == ",".join(f"local:{j}" for j in found)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert jars.spark_conf(settings.with_(delta_writer="delta-rs")) == {}
    s3 = jars.spark_conf(settings.with_(storage_backend="s3"))
    if jars.cached(Path(settings.spark_jars_dir), jars.s3_artifacts()):
        assert "hadoop-aws-3.4.1.jar" in s3["spark.jars"] and "bundle-2.24.6.jar" in s3["spark.jars"]


def test_a_cached_jar_is_not_fetched_again(tmp_path):
    settings = Settings.from_env({})
    found = jars.delta_jars(settings)
    if found is None:
        pytest.skip(f"set-up has not cached the Delta jars in {settings.spark_jars_dir}")
    shutil.copy(found[1], tmp_path / found[1].name)  # delta-storage
    assert jars.fetch(tmp_path, ["io.delta:delta-storage:4.0.0"], mvn="/no/such/mvn") == []


def test_without_maven_set_up_says_so_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn on it
    monkeypatch.setenv("SPARK_JARS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DELTA_WRITER", raising=False)
    assert jars.main([]) == 0
    said = capsys.readouterr()
    assert "Maven (mvn) is not installed, so none of io.delta:delta-spark_2.13:4.0.0" in said.err
    assert "Spark commits Delta through delta-rs" in said.err and "jars: 0/9" in said.out
    assert "Kafka broker not fetched: Maven (mvn) is not installed, so not org.apache.kafka:kafka_2.13:4.1.1" in said.err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_artifact_maven_cannot_resolve_leaves_no_jar_and_names_it(tmp_path):
    if shutil.which("mvn") is None:
        pytest.skip("no Maven here")
    failed = jars.fetch(tmp_path, ["io.fstore.nosuch:nothing:0.0.1"], timeout=600)
    assert len(failed) == 1 and failed[0].startswith("io.fstore.nosuch:nothing:0.0.1: mvn exited ")
    assert list(tmp_path.iterdir()) == []  # no partial jar, no download folder left


def test_kafka_jars_are_a_streams_own_and_refused_naming_the_set_up_when_missing(tmp_path):
    assert jars.kafka_artifacts() == ["org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.1",
                                      "org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.0.0",
                                      "org.apache.kafka:kafka-clients:3.9.1", "org.apache.commons:commons-pool2:2.12.0",
                                      "org.apache.spark:spark-avro_2.13:4.0.1"]
    empty = Settings.from_env({"SPARK_JARS_DIR": str(tmp_path)})
    with pytest.raises(Unavailable, match=f"spark-sql-kafka-0-10_2.13:4.0.1.* SPARK_JARS_DIR={tmp_path}.*make setup"):
        jars.kafka_conf(empty)
    assert jars.broker_jars(empty) is None
    settings = Settings.from_env({})
    found = jars.kafka_jars(settings)
    if found is None:
        pytest.skip(f"set-up has not cached the Kafka jars in {settings.spark_jars_dir}")
    assert jars.kafka_conf(settings) == {"spark.jars": ",".join(f"local:{j}" for j in found)}
    assert "spark.jars" not in jars.spark_conf(settings.with_(delta_writer="delta-rs"))  # not on every session
    assert (jars.broker_jars(settings) / "kafka_2.13-4.1.1.jar").is_file()
