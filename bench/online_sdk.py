"""Micro-benchmark of the SDK online path and of the Spark bulk load into the real Redis.

    .venv/bin/python bench/online_sdk.py [--redis redis://127.0.0.1:6379/4] [--entities 100000]
                                         [--load-keys 1000000] [--iterations 5000] [--profile]

1. bulk-loads ``--entities`` keys × 10 float features with ``load_dataframe`` (Spark
   local, executors writing pipelined Lua batches) and prints keys/s;
2. optionally loads ``--load-keys`` more keys into a second set for a larger rate figure;
3. times ``FeatureStore.get_online_features`` for 1 entity × 10 features and
   100 entities × 10 features (cache off, then on) and prints p50/p95/p99 in ms;
4. flushes the Redis database it used (so use a database of your own).

Compare the load rate with ``redis-benchmark -q -P 16 -t hset -n 1000000`` on the same machine.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fstore.core.settings import Settings  # noqa: E402
from fstore.store import FeatureStore  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"p50 {at(0.50):.3f} ms  p95 {at(0.95):.3f} ms  p99 {at(0.99):.3f} ms  (n={len(samples)}, mean {statistics.mean(samples) * 1000:.3f} ms)"


def make_set(store: FeatureStore, name: str) -> None:
    store.create_feature_set({"name": name, "entities": ["user"], "ttl": "30d", "features": [
        {"name": f, "data_type": "float", "transformation": f} for f in FEATURES]})


def load(store: FeatureStore, spark, name: str, keys: int) -> tuple[int, float]:
    from fstore.storage.online import load_dataframe

    exprs = ["id AS user_id", "current_timestamp() - INTERVAL 1 HOUR AS event_timestamp"]
    exprs += [f"rand({i}) * 100 AS {f}" for i, f in enumerate(FEATURES)]
    df = spark.range(0, keys, numPartitions=4).selectExpr(*exprs)
    started = time.perf_counter()
    written = load_dataframe(df, store.feature_set_version(name), store.settings)
    return written, time.perf_counter() - started


def time_calls(fn, iterations: int) -> list[float]:
    for _ in range(min(200, iterations)):
        fn()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/4"))
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--load-keys", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="cProfile the 100-entity path")
    parser.add_argument("--outage", action="store_true",
                        help="only time how fast serving fails while a redis-server of its own is down or paused")
    args = parser.parse_args()
    if args.outage:
        outage()
        return

    import redis

    raw = redis.Redis.from_url(args.redis)
    raw.flushdb()
    folder = tempfile.mkdtemp(prefix="fstore-bench-online-")
    settings = Settings.from_env({"STORAGE_PATH": folder, "REDIS_URL": args.redis, "SPARK_MASTER": "local[2]"})
    store = FeatureStore(settings)
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        make_set(store, "bench_users")
        spark = store.spark
        written, seconds = load(store, spark, "bench_users", args.entities)
        print(f"bulk load: {written:,} keys x 10 features in {seconds:.2f} s = {written / seconds:,.0f} keys/s "
              f"({written * 10 / seconds:,.0f} field writes/s), including Spark's latest-per-key aggregation")
        if args.load_keys:
            make_set(store, "bench_load")
            written, seconds = load(store, spark, "bench_load", args.load_keys)
            print(f"bulk load: {written:,} keys x 10 features in {seconds:.2f} s = {written / seconds:,.0f} keys/s "
                  f"({written * 10 / seconds:,.0f} field writes/s)")
        rng = random.Random(7)
        names = ["bench_users:" + f for f in FEATURES]

        def one() -> None:
            store.get_online_features(features=names, entities={"user_id": [rng.randrange(args.entities)]})

        def hundred() -> None:
            store.get_online_features(features=names, entities={"user_id": [rng.randrange(args.entities) for _ in range(100)]})

        check = store.get_online_features(features=names, entities={"user_id": [1]})
        assert set(check["statuses"]["1"].values()) == {"present"}, check
        print("SDK online, cache off, real Redis on loopback:")
        print("  1 entity x 10 features:    " + percentiles(time_calls(one, args.iterations)))
        print("  100 entities x 10 features: " + percentiles(time_calls(hundred, max(args.iterations // 5, 500))))
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            for _ in range(500):
                hundred()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)

        cached = FeatureStore(settings.with_(online_cache="ttl", serving_cache_ttl=60.0))
        hot = list(range(1000))

        def one_hot() -> None:
            cached.get_online_features(features=names, entities={"user_id": [rng.choice(hot)]})

        def hundred_hot() -> None:
            cached.get_online_features(features=names, entities={"user_id": rng.sample(hot, 100)})

        print("SDK online, cache on (1,000 hot keys, warm):")
        print("  1 entity x 10 features:    " + percentiles(time_calls(one_hot, args.iterations)))
        print("  100 entities x 10 features: " + percentiles(time_calls(hundred_hot, max(args.iterations // 5, 500))))
        cached.close()
    finally:
        raw.flushdb()
        raw.close()
        store.close()
        if store._spark is not None:
            store._spark.stop()


def outage() -> None:
    """Seconds per failing call: Redis refusing connections, Redis hung (CLIENT PAUSE), breaker open."""
    import socket
    import subprocess

    from fstore.core.errors import Unavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="fstore-bench-outage-"))
    subprocess.run(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--dir", str(folder)], check=True, capture_output=True)
    time.sleep(0.5)
    store = FeatureStore(Settings.from_env({"STORAGE_PATH": str(folder / "store"), "REDIS_URL": f"redis://127.0.0.1:{port}/0"}))
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        make_set(store, "bench_users")
        names = ["bench_users:" + f for f in FEATURES]

        def failing_call() -> float:
            t = time.perf_counter()
            try:
                store.get_online_features(features=names, entities={"user_id": [1]})
            except Unavailable:
                return time.perf_counter() - t
            raise AssertionError("expected Unavailable")

        store.get_online_features(features=names, entities={"user_id": [1]})
        subprocess.run(["redis-cli", "-p", str(port), "client", "pause", "3000", "ALL"], check=True, capture_output=True)
        hung = [failing_call() for _ in range(3)]
        opened = [failing_call() for _ in range(1000)]
        print(f"Redis hung (CLIENT PAUSE): first 3 calls {', '.join(f'{x * 1000:.0f} ms' for x in hung)} "
              f"(timeout {store.settings.redis_timeout}s x attempts), then breaker open: "
              f"median {sorted(opened)[500] * 1e6:.0f} us per call")
        time.sleep(3.5)
        store.get_online_features(features=names, entities={"user_id": [1]})
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        time.sleep(0.3)
        refused = [failing_call() for _ in range(3)]
        opened = [failing_call() for _ in range(1000)]
        print(f"Redis down (connection refused): first 3 calls {', '.join(f'{x * 1000:.1f} ms' for x in refused)}, "
              f"then breaker open: median {sorted(opened)[500] * 1e6:.0f} us per call")
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        store.close()


if __name__ == "__main__":
    main()
