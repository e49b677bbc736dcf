"""A standalone Spark cluster on this machine: one master and N workers, each its own JVM.

``start`` runs pyspark's own ``bin/spark-class`` for ``org.apache.spark.deploy.master.Master``
and then for ``org.apache.spark.deploy.worker.Worker`` (``workers`` of them, ``cores`` and
``memory`` each), with ``SPARK_LOCAL_IP=127.0.0.1`` and every port on loopback: the master's
two on free ports picked here, the workers' chosen by the system (port 0). It waits, for a
bounded time, until the master's web UI (``/json/``) says it is ALIVE with every worker
registered, and records the processes in ``FOLDER/cluster.json``; logs and the workers' work
folders (executor output, fetched jars) stay in ``FOLDER``. ``stop`` ends them by their
process ids: each was started in a session of its own, so its process group holds it and
the executors it launched, and nothing else.

One implementation for every caller: ``python -m fstore.engine.cluster up|down|status``
(``scripts/cluster.sh``, ``make cluster-up`` / ``make cluster-down``) and the integration
tests' fixture. ``up`` prints the variables a driver needs::

    export SPARK_MASTER=spark://127.0.0.1:PORT
    export SPARK_LOCAL_IP=127.0.0.1
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fstore.core.errors import Unavailable

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
HOST = "127.0.0.1"
STATE_FILE = "cluster.json"


@dataclass(frozen=True, kw_only=True)
class Cluster:
    """A started cluster: where its state lives, its master's URLs, its processes (master first)."""

    folder: Path
    master_url: str
    web_url: str
    pids: tuple[int, ...]

    def exports(self) -> str:
        """Shell lines that point a driver at this cluster."""
        return f"export SPARK_MASTER={self.master_url}\nexport SPARK_LOCAL_IP={HOST}\n"

    def describe(self) -> dict:
        """What the master reports (``/json/``): its URL, status, alive workers, cores, applications."""
        return _master_json(self.web_url)


def default_folder() -> Path:
    """Where ``up`` keeps the cluster's state and logs when no folder is named: the user's cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "fstore" / "spark-cluster"


def spark_home() -> Path:
    """pyspark's installation: its ``bin/spark-class`` and ``jars/`` are the cluster's Spark."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port free on loopback now (the master binds it a moment later; see ``spark.port.maxRetries``)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _daemon_env(folder: Path) -> dict[str, str]:
    """The daemons' environment: loopback only, pyspark's Spark, the class archive, small heaps."""
    from fstore.engine.class_archive import driver_java_options
    from fstore.engine.spark_env import ensure_java

    ensure_java()
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST, "SPARK_LOG_DIR": str(folder),
           "SPARK_DAEMON_MEMORY": "512m",
           # The daemons load much of what a driver loads: the archive saves them seconds too.
           "SPARK_DAEMON_JAVA_OPTS": driver_java_options(),
           # A port taken between free_port() and the bind fails the start, rather than moving the master.
           "SPARK_MASTER_OPTS": "-Dspark.port.maxRetries=0"}
    return env


def _spawn(folder: Path, name: str, args: list[str], env: dict[str, str]) -> int:
    """Start ``spark-class ARGS`` in a session of its own (spark-class execs java: the pid is the JVM's)."""
    with open(folder / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=env, cwd=folder,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid


def _master_json(web_url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(f"{web_url}/json/", timeout=timeout) as answer:
        return json.loads(answer.read())


def _alive(pid: int, java_class: str | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``java_class``, is that daemon: a pid reused by another program is not)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (the tests' fixture): reap it
            return False
    except ChildProcessError:
        pass  # started by another process (``up``): look at /proc
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return java_class is None or java_class.encode() in command


def _tail(folder: Path, name: str, lines: int = 8) -> str:
    try:
        text = (folder / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line for line in text[-lines:] if line.strip())


def _wait(folder: Path, web_url: str, started: dict[str, int], workers: int, deadline: float) -> dict:
    """Poll the master's ``/json/`` until it is ALIVE with ``workers`` alive workers; fail at once when a daemon
    exits, or at ``deadline``."""
    last: object = None
    while True:
        for name, pid in started.items():
            if not _alive(pid):
                raise Unavailable(f"Spark {name} (pid {pid}) exited while starting: {_tail(folder, name)}")
        try:
            state = _master_json(web_url)
            if state.get("status") == "ALIVE" and state.get("aliveworkers", 0) >= workers:
                return state
            last = {k: state.get(k) for k in ("status", "aliveworkers")}
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise Unavailable(f"the Spark cluster in {folder} was not ready in time (master UI {web_url}: {last}); "
                              f"logs are in {folder}")
        time.sleep(0.25)


def load(folder: Path) -> Cluster | None:
    """The cluster recorded in ``folder``, or None when none is."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return Cluster(folder=folder, master_url=state["master_url"], web_url=state["web_url"],
                   pids=tuple(state["pids"]))


def running(folder: Path) -> Cluster | None:
    """The cluster recorded in ``folder`` if its master and every worker still run, else None."""
    cluster = load(folder)
    if cluster is None:
        return None
    master, *workers = cluster.pids
    if _alive(master, MASTER_CLASS) and all(_alive(pid, WORKER_CLASS) for pid in workers):
        return cluster
    return None


def start(folder: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g", timeout: float = 120.0) -> Cluster:
    """Start a master and ``workers`` workers with state, logs and work folders in ``folder``; wait until all
    are registered (at most ``timeout`` seconds). A cluster already running there is returned as it is."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (found := running(folder)) is not None:
        return found
    stop(folder)  # what is left of a cluster that half died
    env = _daemon_env(folder)
    deadline = time.monotonic() + timeout
    port, ui_port = free_port(), free_port()
    web_url = f"http://{HOST}:{ui_port}"
    started = {"master": _spawn(folder, "master", [MASTER_CLASS, "--host", HOST, "--port", str(port),
                                                   "--webui-port", str(ui_port)], env)}
    # Recorded at once, so that `down` (or the caller's clean-up) can stop what started even if the wait fails.
    _record(folder, f"spark://{HOST}:{port}", web_url, list(started.values()))
    try:
        _wait(folder, web_url, started, 0, deadline)  # workers started earlier would wait out a retry back-off
        for n in range(1, workers + 1):
            work = folder / f"work-{n}"
            work.mkdir(exist_ok=True)
            started[f"worker-{n}"] = _spawn(folder, f"worker-{n}", [
                WORKER_CLASS, "--host", HOST, "--port", "0", "--webui-port", "0", "--cores", str(cores),
                "--memory", memory, "--work-dir", str(work), f"spark://{HOST}:{port}"], env)
        _record(folder, f"spark://{HOST}:{port}", web_url, list(started.values()))
        state = _wait(folder, web_url, started, workers, deadline)
    except BaseException:
        stop(folder)
        raise
    _record(folder, state["url"], web_url, list(started.values()))
    return load(folder)


def _record(folder: Path, master_url: str, web_url: str, pids: list[int]) -> None:
    partial = folder / (STATE_FILE + ".partial")
    partial.write_text(json.dumps({"master_url": master_url, "web_url": web_url, "pids": pids}))
    partial.replace(folder / STATE_FILE)


def stop(folder: Path, *, timeout: float = 30.0) -> bool:
    """Stop the cluster recorded in ``folder`` (workers first, then the master; each with the executors in its
    process group): SIGTERM, then SIGKILL after ``timeout`` seconds. Returns whether anything was running."""
    folder = Path(folder).resolve()
    cluster = load(folder)
    if cluster is None:
        return False
    master, *workers = cluster.pids
    ours = [(pid, WORKER_CLASS) for pid in workers] + [(master, MASTER_CLASS)]
    # Checked before any signal: a pid the system gave to another program since is left alone.
    groups = [pid for pid, java_class in ours if _alive(pid, java_class)]
    for pid in groups:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in groups:
        _signal_group(pid, signal.SIGKILL)  # the leader, and any executor it left behind
    (folder / STATE_FILE).unlink(missing_ok=True)
    return bool(groups)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fstore.engine.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=None, help=f"state, logs, work folders (default {default_folder()})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="1g", help="memory per worker (an executor's spark.executor.memory, "
                                                       "1g by default, must fit)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the cluster to be ready")
    args = parser.parse_args(argv)
    folder = (args.dir or default_folder()).resolve()
    if args.action == "up":
        try:
            cluster = start(folder, workers=args.workers, cores=args.cores, memory=args.memory, timeout=args.timeout)
        except Unavailable as exc:
            print(f"cluster: {exc.message}", file=sys.stderr)
            return exc.exit_code
        print(f"# Spark cluster up: master UI {cluster.web_url}, logs in {folder}", file=sys.stderr)
        print(cluster.exports(), end="")
        return 0
    if args.action == "down":
        print(f"cluster: {'stopped' if stop(folder) else 'none running'} ({folder})", file=sys.stderr)
        return 0
    cluster = running(folder)
    if cluster is None:
        print(f"cluster: none running ({folder})", file=sys.stderr)
        return 1
    state = cluster.describe()
    print(f"{state['url']} {state['status']}: {state['aliveworkers']} workers, {state['cores']} cores, "
          f"{len(state['activeapps'])} running applications; UI {cluster.web_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
