"""The standalone cluster's bookkeeping (``fstore.engine.cluster``): what ``down`` and ``status`` may touch.

Starting a real cluster is tests/integration/test_spark_cluster.py's work."""
from __future__ import annotations

import json
import subprocess
import sys

from fstore.engine import cluster


def _record(folder, pids) -> None:
    (folder / cluster.STATE_FILE).write_text(json.dumps({"master_url": "spark://127.0.0.1:1",
                                                         "web_url": "http://127.0.0.1:2", "pids": pids}))


def test_down_leaves_a_process_alone_that_is_not_the_recorded_spark_daemon(tmp_path):
    """A pid the system gave to another program since `up` is never signalled."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        _record(tmp_path, [other.pid, other.pid])
        assert cluster.running(tmp_path) is None
        assert cluster.stop(tmp_path, timeout=1) is False
        assert other.poll() is None
        assert not (tmp_path / cluster.STATE_FILE).exists()  # the stale record is gone
    finally:
        other.kill()
        other.wait()


def test_down_stops_the_recorded_daemons_and_their_process_groups(tmp_path):
    """Each daemon's group goes, children (the executors a worker started) included."""
    script = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)']); print(child.pid, flush=True); time.sleep(60)")
    started = [subprocess.Popen([sys.executable, "-c", script, java_class], start_new_session=True,
                                stdout=subprocess.PIPE, text=True)
               for java_class in (cluster.MASTER_CLASS, cluster.WORKER_CLASS)]
    try:
        children = [int(p.stdout.readline()) for p in started]
        _record(tmp_path, [p.pid for p in started])
        assert cluster.running(tmp_path) is not None
        assert cluster.stop(tmp_path, timeout=10) is True
        for p in started:  # stop reaped them (its own children), so their status is gone: they ended
            p.wait(timeout=10)
        assert not any(cluster._alive(child) for child in children)
        assert cluster.load(tmp_path) is None
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.stdout.close()


def test_status_without_a_cluster_says_none_is_running(tmp_path, capsys):
    assert cluster.main(["status", "--dir", str(tmp_path)]) == 1
    assert "none running" in capsys.readouterr().err
    assert cluster.main(["down", "--dir", str(tmp_path)]) == 0
