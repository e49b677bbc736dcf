"""Online store on one Redis against a 3-master Redis Cluster, on servers of its own (loopback, no persistence).

    .venv/bin/python bench/online_cluster.py [--keys 1000000] [--iterations 3000] [--skip-single]

For each target: a Spark bulk load of ``--keys`` keys × 10 float features (``load_dataframe``, local[2],
4 partitions) in keys/s, the same through the in-process Arrow path (``load_arrow``), then
``FeatureStore.get_online_features`` for 1 and 100 entities × 10 features (cache off): p50/p95/p99.
On the cluster it also times a 100-key ``read_many`` with the nodes sent their writes all at once
(the default) and node by node. The servers are started and stopped here (by PID).
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.online_sdk import FEATURES, load, make_set, percentiles, time_calls  # noqa: E402
from fstore.core.settings import Settings  # noqa: E402
from fstore.store import FeatureStore  # noqa: E402
from redis_cluster_support import RedisClusterServers, free_cluster_ports  # noqa: E402


def single_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_cluster_ports(1)[0]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--daemonize", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    RedisClusterServers._wait(lambda: RedisClusterServers.client(port).ping(), "redis-server did not start")
    return proc, f"redis://127.0.0.1:{port}/0"


def arrow_load(store: FeatureStore, name: str, keys: int) -> tuple[int, float]:
    import numpy as np
    import pyarrow as pa

    from fstore.storage.online.load_arrow import load_arrow

    rng = np.random.default_rng(1)
    now = np.datetime64("now", "us") - np.timedelta64(3600, "s")
    table = pa.table({"user_id": np.arange(keys, dtype=np.int64), "event_timestamp": np.full(keys, now),
                      **{f: rng.random(keys) * 100 for f in FEATURES}})
    started = time.perf_counter()
    written = load_arrow(table, store.feature_set_version(name), store.settings)
    return written, time.perf_counter() - started


def run(label: str, url: str, args, folder: Path) -> None:
    settings = Settings.from_env({"STORAGE_PATH": str(folder / label), "REDIS_URL": url, "SPARK_MASTER": "local[2]"})
    store = FeatureStore(settings)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    make_set(store, "bench_users")
    make_set(store, "bench_arrow")
    written, seconds = load(store, store.spark, "bench_users", args.keys)
    print(f"[{label}] Spark bulk load: {written:,} keys x 10 features in {seconds:.2f} s = {written / seconds:,.0f} keys/s",
          flush=True)
    written, seconds = arrow_load(store, "bench_arrow", args.keys)
    print(f"[{label}] Arrow bulk load: {written:,} keys x 10 features in {seconds:.2f} s = {written / seconds:,.0f} keys/s",
          flush=True)
    rng = random.Random(7)
    names = ["bench_users:" + f for f in FEATURES]

    def one() -> None:
        store.get_online_features(features=names, entities={"user_id": [rng.randrange(args.keys)]})

    def hundred() -> None:
        store.get_online_features(features=names, entities={"user_id": [rng.randrange(args.keys) for _ in range(100)]})

    check = store.get_online_features(features=names, entities={"user_id": [1]})
    assert set(check["statuses"]["1"].values()) == {"present"}, check
    print(f"[{label}] 1 entity x 10 features:     " + percentiles(time_calls(one, args.iterations)), flush=True)
    print(f"[{label}] 100 entities x 10 features: " + percentiles(time_calls(hundred, max(args.iterations // 3, 300))),
          flush=True)
    online = store.online
    if hasattr(online, "overlap"):
        codec = store.feature_set_version("bench_users")
        from fstore.storage.online.base import Codec

        codec = Codec.from_version(codec)

        def raw100() -> None:
            online.read_many([("bench_users", [codec.key_of({"user_id": rng.randrange(args.keys)}) for _ in range(100)],
                               codec.feature_names)])

        for overlap in (True, False):
            online.overlap = overlap
            print(f"[{label}] read_many 100 keys, nodes {'all sent, then read' if overlap else 'one after another'}: "
                  + percentiles(time_calls(raw100, args.iterations)), flush=True)
        online.overlap = True
    store.close()
    if store._spark is not None:
        store._spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--skip-single", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="fstore-bench-cluster-"))
    if not args.skip_single:
        proc, url = single_redis(folder)
        try:
            run("single Redis", url, args, folder)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    cluster = RedisClusterServers(folder / "cluster").start()
    try:
        run("Redis Cluster x3", cluster.url, args, folder)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
