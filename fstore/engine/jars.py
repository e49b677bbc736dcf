"""The jars Spark needs beyond pyspark's own, fetched once from Maven Central into a local cache.

``python -m fstore.engine.jars`` (run by ``make setup``) copies them into
``SPARK_JARS_DIR`` (default ``~/.cache/fstore/jars``) with ``mvn dependency:copy``;
after that no run downloads anything: ``get_spark`` puts the cached files on
the session's class path (``spark_conf``).

- **Delta Lake**: ``io.delta:delta-spark_2.13`` for pyspark's line (4.0.x → 4.0.0)
  and ``io.delta:delta-storage``, its one runtime dependency pyspark lacks (its
  others, scala-library and antlr4-runtime, are among pyspark's jars). With them
  Spark writes ``format("delta")`` itself; without them fstore's Spark path
  commits through delta-rs (``fstore.storage.offline``).
- **Kafka** (``fstore stream``, ``fstore.compute.stream``): Spark's Kafka source
  ``org.apache.spark:spark-sql-kafka-0-10_2.13`` for pyspark's line with what it needs beyond pyspark's jars:
  ``spark-token-provider-kafka-0-10`` (4.0.0: Maven Central does not serve 4.0.1's jar; the 4.0 line keeps its
  classes' binary interface), ``kafka-clients`` (3.9.1, the version spark-sql-kafka 4.0.1's pom names) and
  ``commons-pool2``; and ``spark-avro`` (4.0.1) for Avro values (``format: avro``). On a session's class path
  only when a stream asks (``kafka_conf``).
- **A Kafka broker** for the streaming tests and bench: ``org.apache.kafka:kafka_2.13`` (``KAFKA_BROKER``) with its
  runtime dependencies, copied by ``mvn dependency:copy-dependencies`` into their own folder of the cache
  (``broker_dir``): they run in a JVM of their own (``java -cp 'DIR/*' kafka.Kafka``), never on Spark's path.
- **S3**: ``org.apache.hadoop:hadoop-aws`` matching pyspark's hadoop-client
  (3.4.1) and the AWS SDK v2 ``bundle`` that its pom names (2.24.6), for
  ``s3a://``; on the class path only when ``STORAGE_BACKEND=s3``.

The jars go on the path through ``spark.jars`` as ``local:`` URIs: Spark's
launcher adds them to the driver's class loader, and executors open them where
they are instead of copying them (the SDK bundle is 500 MB). The JVM's own class
path stays pyspark's, so the class archive (``fstore.engine.class_archive``, whose
digest covers pyspark's jars) still maps; the Delta classes are dumped into it
when the jars are there at its build.

Set-up goes on without the jars (no Maven, no network), saying so: Spark then
writes Delta through delta-rs, as before.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fstore.core.errors import Unavailable
from fstore.core.settings import Settings

# delta-spark is built against one Spark line: the pyspark line → the delta-spark release made for it.
DELTA_FOR_SPARK = {"4.0": "4.0.0"}
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.4.1"  # = pyspark 4.0's hadoop-client-api
AWS_SDK_BUNDLE = "software.amazon.awssdk:bundle:2.24.6"  # hadoop-project 3.4.1's aws-java-sdk-v2.version
# spark-sql-kafka per pyspark line, and the jars it needs that pyspark lacks (see the module's docstring).
KAFKA_FOR_SPARK = {"4.0": ["org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.1",
                           "org.apache.spark:spark-token-provider-kafka-0-10_2.13:4.0.0",
                           "org.apache.kafka:kafka-clients:3.9.1", "org.apache.commons:commons-pool2:2.12.0",
                           "org.apache.spark:spark-avro_2.13:4.0.1"]}  # Avro values (pyspark has avro 1.12.0's jars)
KAFKA_BROKER = "org.apache.kafka:kafka_2.13:4.1.1"
DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # tables delta-spark creates keep their whole log, as fstore.storage.offline_table.TABLE_PROPERTIES says why
    "spark.databricks.delta.properties.defaults.enableExpiredLogCleanup": "false",
}


def spark_line() -> str:
    """pyspark's ``major.minor`` (e.g. ``4.0``)."""
    import pyspark

    return ".".join(pyspark.__version__.split(".")[:2])


def delta_artifacts() -> list[str]:
    """Maven coordinates of the Delta jars for this pyspark; empty for a line no delta-spark release serves."""
    version = DELTA_FOR_SPARK.get(spark_line())
    if version is None:
        return []
    return [f"io.delta:delta-spark_2.13:{version}", f"io.delta:delta-storage:{version}"]


def s3_artifacts() -> list[str]:
    return [HADOOP_AWS, AWS_SDK_BUNDLE]


def kafka_artifacts() -> list[str]:
    """Maven coordinates of Spark's Kafka source for this pyspark; empty for a line not known here."""
    return list(KAFKA_FOR_SPARK.get(spark_line(), []))


def kafka_jars(settings: Settings) -> list[Path] | None:
    """Spark's Kafka source jars in the cache, None when set-up has not fetched them."""
    return cached(Path(settings.spark_jars_dir), kafka_artifacts())


def kafka_conf(settings: Settings) -> dict[str, str]:
    """``spark.jars`` with Spark's Kafka source for a streaming session (``get_spark``'s ``extra``: joined to the
    Delta jars); ``Unavailable`` naming the jars and the set-up command when they are not cached."""
    found = kafka_jars(settings)
    if found is None:
        raise Unavailable(f"streaming needs Spark's Kafka source ({', '.join(kafka_artifacts()) or 'none known for pyspark ' + spark_line()}) "
                          f"in SPARK_JARS_DIR={settings.spark_jars_dir}; fetch them with `python -m fstore.engine.jars` (make setup)")
    return {"spark.jars": ",".join(f"local:{j}" for j in found)}


def broker_dir(settings: Settings) -> Path:
    """The folder of the Kafka broker's jars (``KAFKA_BROKER`` and its runtime dependencies)."""
    return Path(settings.spark_jars_dir) / ("broker-" + KAFKA_BROKER.split(":", 1)[1].replace(":", "-"))


def broker_jars(settings: Settings) -> Path | None:
    """The broker's jar folder when set-up has filled it (``fetch_broker`` renames it into place whole), else None."""
    folder = broker_dir(settings)
    return folder if folder.is_dir() and any(folder.glob("kafka_2.13-*.jar")) else None


def fetch_broker(folder: Path, coordinate: str = KAFKA_BROKER, *, mvn: str | None = None, timeout: float = 1800) -> str | None:
    """Copy ``coordinate`` and its runtime dependencies into ``folder`` (made whole, then renamed into place);
    None when done (or already there), else the reason."""
    if folder.is_dir():
        return None
    mvn = mvn or shutil.which("mvn")
    if mvn is None:
        return f"Maven (mvn) is not installed, so not {coordinate}"
    group, artifact, version = coordinate.split(":")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder.parent) as partial:
        pom = Path(partial) / "pom.xml"
        pom.write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>fstore</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>"
            f"<dependencies><dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency></dependencies></project>")
        out = Path(partial) / "jars"
        try:
            done = subprocess.run([mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime",
                                   f"-DoutputDirectory={out}"], capture_output=True, text=True, timeout=timeout, cwd=partial)
        except subprocess.TimeoutExpired:
            return f"{coordinate}: mvn took over {timeout:.0f} s"
        if done.returncode != 0 or not (out / f"{artifact}-{version}.jar").is_file():
            said = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
            return f"{coordinate}: mvn exited {done.returncode}: {' | '.join(said[:3]) or 'no jar copied'}"
        os.replace(out, folder)
    return None


def jar_file(folder: Path, coordinate: str) -> Path:
    """The file ``mvn dependency:copy`` makes of ``group:artifact:version`` in ``folder``."""
    _, artifact, version = coordinate.split(":")
    return folder / f"{artifact}-{version}.jar"


def cached(folder: Path, coordinates: list[str]) -> list[Path] | None:
    """The cached files of ``coordinates``, or None when any is missing (or there are none)."""
    files = [jar_file(folder, c) for c in coordinates]
    return files if files and all(f.is_file() for f in files) else None


def delta_jars(settings: Settings) -> list[Path] | None:
    """The Delta jars in the cache, None when set-up has not fetched them."""
    return cached(Path(settings.spark_jars_dir), delta_artifacts())


def has_delta_classes(jvm) -> bool:
    """Whether Delta's classes load in a running driver JVM, through the loader Spark itself uses for
    extensions and data sources (the thread's context loader, which holds ``--jars``)."""
    from py4j.java_gateway import JavaClass

    try:
        return isinstance(jvm.io.delta.tables.DeltaTable, JavaClass)
    except Exception:  # noqa: BLE001 - a JVM py4j cannot reach: no classes to use either
        return False


def spark_conf(settings: Settings, jvm=None) -> dict[str, str]:
    """Settings for a session ``get_spark`` creates: the cached jars (``spark.jars``) and, with the Delta
    ones, Delta's SQL extension and catalog. ``DELTA_WRITER=delta-rs`` leaves Delta out;
    ``DELTA_WRITER=spark`` without the jars is refused here, at session start.

    ``jvm``: a driver JVM already running (``spark-submit`` launched it, or an earlier session of this
    process). Jars named now would not reach its class loader, so only what it already has is used: the
    Delta settings when its class path holds Delta (``spark-submit --jars``), nothing otherwise."""
    if jvm is not None:
        if settings.delta_writer != "delta-rs" and has_delta_classes(jvm):
            return dict(DELTA_SQL_CONF)
        if settings.delta_writer == "spark":
            raise Unavailable("DELTA_WRITER=spark, but the running Spark driver has no Delta classes: pass the jars "
                              "to spark-submit (--jars \"$(python -m fstore.engine.jars --print-jars)\")")
        return {}
    jars: list[Path] = []
    conf: dict[str, str] = {}
    if settings.delta_writer != "delta-rs":
        delta = delta_jars(settings)
        if delta is None and settings.delta_writer == "spark":
            wanted = ", ".join(delta_artifacts()) or f"none released for pyspark {spark_line()}"
            raise Unavailable(f"DELTA_WRITER=spark needs delta-spark's jars ({wanted}) in SPARK_JARS_DIR="
                              f"{settings.spark_jars_dir}; fetch them with `python -m fstore.engine.jars` (make setup) "
                              "or use DELTA_WRITER=auto")
        if delta is not None:
            jars += delta
            conf.update(DELTA_SQL_CONF)
    if settings.storage_backend == "s3":
        jars += cached(Path(settings.spark_jars_dir), s3_artifacts()) or []
    if jars:
        conf["spark.jars"] = ",".join(f"local:{j}" for j in jars)
    return conf


def fetch(folder: Path, coordinates: list[str], *, mvn: str | None = None, timeout: float = 1800) -> list[str]:
    """Copy the missing ``coordinates`` from Maven (its local repository, else Maven Central) into ``folder``;
    returns what could not be had, each with the reason. A jar appears in ``folder`` only once whole."""
    missing = [c for c in coordinates if not jar_file(folder, c).is_file()]
    if not missing:
        return []
    mvn = mvn or shutil.which("mvn")
    if mvn is None:
        return [f"Maven (mvn) is not installed, so none of {', '.join(missing)}"]
    folder.mkdir(parents=True, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as partial:
        for coordinate in missing:
            try:
                done = subprocess.run([mvn, "-B", "-q", "dependency:copy", f"-Dartifact={coordinate}",
                                       f"-DoutputDirectory={partial}"], capture_output=True, text=True,
                                      timeout=timeout, cwd=partial)
            except subprocess.TimeoutExpired:
                failed.append(f"{coordinate}: mvn took over {timeout:.0f} s")
                continue
            got = jar_file(Path(partial), coordinate)
            if done.returncode != 0 or not got.is_file():
                said = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line or "error" in line]
                failed.append(f"{coordinate}: mvn exited {done.returncode}: {' | '.join(said[:3]) or 'no jar copied'}")
                continue
            os.replace(got, jar_file(folder, coordinate))
    return failed


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m fstore.engine.jars", description=__doc__.splitlines()[0])
    parser.add_argument("--print-jars", action="store_true",
                        help="print the cached jars as spark-submit's --jars takes them, and fetch nothing")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    folder = Path(settings.spark_jars_dir)
    if args.print_jars:  # e.g. spark-submit --jars "$(python -m fstore.engine.jars --print-jars)" jobs/…
        found = (delta_jars(settings) or []) + (cached(folder, s3_artifacts()) or []) + (kafka_jars(settings) or [])
        print(",".join(str(j) for j in found))
        return 0
    wanted = delta_artifacts() + s3_artifacts() + kafka_artifacts()
    if not delta_artifacts():
        print(f"jars: no delta-spark release is known for pyspark {spark_line()}; Spark will commit Delta through "
              "delta-rs", file=sys.stderr)
    began = time.perf_counter()
    failed = fetch(folder, wanted)
    for reason in failed:
        print(f"jars: not fetched: {reason}", file=sys.stderr)
    if failed:
        # Like the class archive: everything works without them (Delta through delta-rs, no s3a://); say so.
        print(f"jars: set-up goes on; until they are in {folder}, Spark commits Delta through delta-rs "
              "(and cannot reach s3a://)", file=sys.stderr)
    broker = fetch_broker(broker_dir(settings))
    if broker is not None:  # only the streaming tests and bench need it: they skip (or fail, FSTORE_REQUIRE_SERVICES=1)
        print(f"jars: Kafka broker not fetched: {broker}", file=sys.stderr)
    have = [c for c in wanted if jar_file(folder, c).is_file()]
    print(f"jars: {len(have)}/{len(wanted)} in {folder}, Kafka broker {'in ' + str(broker_dir(settings)) if broker is None else 'missing'} "
          f"({time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
