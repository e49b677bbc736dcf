"""Which driver options map the Spark class archive, and how they join a session's settings."""
from __future__ import annotations

from fstore.engine import class_archive
from fstore.engine.session import session_conf
from fstore.settings import Settings


def test_no_archive_file_means_no_option(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", str(tmp_path / "absent.jsa"))
    assert class_archive.driver_java_options() == ""
    assert "spark.driver.extraJavaOptions" not in session_conf(Settings.from_env({}))


def test_an_archive_is_mapped_quietly_and_joins_other_driver_options(tmp_path, monkeypatch):
    archive = tmp_path / "classes.jsa"
    archive.write_bytes(b"archive")
    monkeypatch.setenv("SPARK_CLASS_ARCHIVE", str(archive))
    options = class_archive.driver_java_options()
    assert options.startswith(f"-XX:SharedArchiveFile={archive} ")
    assert "-Xlog:disable" in options and "-Xlog:all=error:stderr" in options
    conf = session_conf(Settings.from_env({}), {"spark.driver.extraJavaOptions": "-Dmine=1"})
    assert conf["spark.driver.extraJavaOptions"] == f"-Dmine=1 {options}"


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
