"""1M-row materialization on a standalone Spark cluster (two 1-core workers) against local mode (``local[2]``).

    python -m bench.cluster [--scale 1] [--repeats 2] [--memory 1g]

The same generated events (``bench.data``), definitions and calls (``bench.fstore_side``: a cold session, then
``repeats`` whole-range ``store.materialize`` runs in one process, Redis flushed before each) on each side, in a
process of its own; the cluster is started and stopped by ``fstore.engine.cluster`` in a scratch folder. Both
sides get two cores: ``local[2]`` in the driver, or one executor on each worker. The online store is a Redis
server of its own on a free loopback port (no persistence), stopped at the end. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from bench import data
from bench.__main__ import REPO_ROOT, py, run_json


def side(store: Path, redis_port: int, dataset, repeats: int, master: str | None) -> dict:
    """Set up a fresh store and materialize the whole range on ``master`` (None: local[2])."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SOURCE_ROOTS": dataset.root,
           "BENCH_REDIS_PORT": str(redis_port)}
    env.pop("BENCH_SPARK_MASTER", None)
    if master:
        env["BENCH_SPARK_MASTER"] = master
    common = ["--store", str(store), "--redis-db", "0"]
    run_json(py("bench.fstore_side", *common, "setup", "--events", dataset.events_path), env=env)
    result, wall = run_json(py("bench.fstore_side", *common, "materialize", "--start", dataset.start.isoformat(),
                               "--end", dataset.end.isoformat(), "--repeats", str(repeats)), env=env)
    return {"master": master or "local[2]", "process_wall_seconds": wall, **result}


def main(argv: list[str] | None = None) -> None:
    from fstore.engine import cluster

    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory", default="1g", help="each worker's memory (its executor takes 1g)")
    args = parser.parse_args(argv)
    dataset = data.generate(args.scale)
    out = {"rows": dataset.sizes.events, "load_average_before": os.getloadavg()}
    port = cluster.free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory(prefix="fstore-bench-cluster-") as scratch:
            root = Path(scratch)
            out["local"] = side(root / "local", port, dataset, args.repeats, None)
            folder = root / "cluster"
            try:
                started = cluster.start(folder, workers=2, cores=1, memory=args.memory)
                out["cluster"] = side(root / "on-cluster", port, dataset, args.repeats, started.master_url)
            finally:
                cluster.stop(folder)
    finally:
        redis.terminate()
        redis.wait(timeout=30)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, default=str, indent=1))


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    main()
