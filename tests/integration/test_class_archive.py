"""The Spark class archive: built by ``spark-submit`` of a script, then mapped by a later driver."""
from __future__ import annotations

import os
import subprocess
import sys

from fstore.engine import class_archive

# A driver that starts no session: the JVM still loads Spark's submit path, and its test stays quick.
# (make setup builds the real archive from the demo; every Spark test of the suite then maps it.)
TINY_JOB = "print('tiny job ran')\n"


def test_build_dumps_an_archive_that_a_later_driver_maps(tmp_path):
    script = tmp_path / "tiny_job.py"
    script.write_text(TINY_JOB)
    archive = class_archive.build(tmp_path / "classes.jsa", script=script, timeout=300)
    assert archive.is_file() and archive.stat().st_size > 100_000
    assert not (tmp_path / "classes.jsa.partial").exists()

    # -Xshare:on makes a JVM that cannot map the archive fail to start, so exit 0 proves it was used.
    submit = class_archive._spark_jars().parent / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run([str(submit), "--master", "local[1]", "--driver-java-options",
                           f"-Xshare:on -XX:SharedArchiveFile={archive}", str(script)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny job ran" in done.stdout


def test_a_failed_build_says_why_and_leaves_no_archive(tmp_path):
    script = tmp_path / "broken_job.py"
    script.write_text("raise SystemExit('this job fails on purpose')\n")
    try:
        class_archive.build(tmp_path / "classes.jsa", script=script, timeout=300)
    except RuntimeError as exc:
        assert "building the class archive failed" in str(exc)
        assert "fails on purpose" in str(exc)
    else:
        raise AssertionError("a failing script built an archive")
    assert not (tmp_path / "classes.jsa").exists()
    assert not (tmp_path / "classes.jsa.partial").exists()
