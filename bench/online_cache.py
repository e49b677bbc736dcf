"""Online serving with the value cache off, on with a TTL, and on with Redis invalidations, in one run.

    .venv/bin/python bench/online_cache.py [--redis redis://127.0.0.1:6379/10] [--keys 20000] [--hot 1000]
                                          [--requests 4000] [--batch 1] [--write-rate 200] [--rounds 2]

Loads ``--keys`` entity keys × 10 float features into the real Redis, then in each round times
``FeatureStore.get_online_features`` for ``--batch`` entities per request on one store per
``ONLINE_CACHE`` mode (off, ttl, tracking), each request asked of every mode in turn (the order
rotating), while another process rewrites ``--write-rate`` keys a second (a load or a push
elsewhere: what invalidates). Every mode thus sees the same keys, writes and machine load. Keys, read and rewritten alike, are drawn ``--hot-share`` of the
time from ``--hot`` hot keys, else from all keys. Prints per mode the key hit rate, p50/p95/p99, the
keys Redis invalidated, and the load average (``uptime``) around each measurement.
Flushes the Redis database it used (use one of your own). Redis tracks keys server-wide: a
``FLUSHDB`` in *any* database of that Redis empties a tracking cache (tests of others sharing it
do that often), so ``--own-redis`` runs a throw-away ``redis-server`` of its own for the run.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fstore.core.settings import Settings  # noqa: E402
from fstore.store import FeatureStore  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]
T0 = datetime.now(timezone.utc) - timedelta(hours=1)


def pick(rng: random.Random, args) -> int:
    return rng.randrange(args.hot) if rng.random() < args.hot_share else rng.randrange(args.keys)


def rows(keys, at: datetime, rng: random.Random) -> list[dict]:
    return [{"user_id": k, "event_timestamp": at, **{f: rng.random() * 100 for f in FEATURES}} for k in keys]


def writer(settings: Settings, args, stop, ready) -> None:
    """Another process rewriting ``write_rate`` keys a second, newer each time (10 keys per write)."""
    store = FeatureStore(settings.with_(online_cache="off"))
    fsv = store.feature_set_version("bench_cache")
    rng = random.Random(os.getpid())
    step, n = 10 / args.write_rate, 0
    next_at = time.monotonic()
    while not stop.is_set():
        n += 1
        store.online.write_rows(fsv, rows([pick(rng, args) for _ in range(10)], T0 + timedelta(microseconds=n), rng))
        ready.set()
        next_at += step
        time.sleep(max(0.0, next_at - time.monotonic()))
    store.close()


def load_average() -> str:
    return open("/proc/loadavg").read().split(" ", 3)[0]


def measure(settings: Settings, modes: list[str], args, rng: random.Random) -> list[dict]:
    """One round: a store per mode, asked the same entities request after request, the modes' order
    rotating, while the writer process runs; so every mode sees the same load, keys and writes."""
    from fstore.ops import metrics
    from fstore.serving import online as serving

    stores = {mode: FeatureStore(settings.with_(online_cache=mode, serving_cache_ttl=args.ttl)) for mode in modes}
    names = ["bench_cache:" + f for f in FEATURES]
    for mode, store in stores.items():
        if mode == "tracking":
            assert serving.tracker(store).wait_established(5.0)
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    counts = {mode: [0, 0] for mode in modes}

    def call(i: int, record: bool) -> None:
        ids = list({pick(rng, args) for _ in range(args.batch)})
        for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
            t = time.perf_counter()
            meta = stores[mode].get_online_features(features=names, entities={"user_id": ids})["metadata"]
            if record:
                samples[mode].append(time.perf_counter() - t)
                counts[mode][0] += meta["cache_hits"]
                counts[mode][1] += meta["cache_misses"]

    spawn = multiprocessing.get_context("spawn")
    stop, ready = spawn.Event(), spawn.Event()
    proc = spawn.Process(target=writer, args=(settings, args, stop, ready))
    proc.start()
    try:
        assert ready.wait(120), "the writer process did not start"
        for i in range(args.warmup):
            call(i, False)
        load_before = load_average()
        totals = metrics.cache_totals()
        for i in range(args.requests):
            call(i, True)
        now = metrics.cache_totals()
    finally:
        stop.set()
        proc.join(10)
    load = f"{load_before}→{load_average()}"
    out = []
    for mode in modes:
        x = sorted(samples[mode])
        hits, misses = counts[mode]

        def at(q: float) -> float:
            return x[min(len(x) - 1, int(q * len(x)))] * 1000

        out.append({"mode": mode, "hit_rate": hits / (hits + misses) if hits + misses else 0.0, "p50": at(0.5),
                    "p95": at(0.95), "p99": at(0.99), "mean": sum(x) / len(x) * 1000,
                    # only the tracking store is told of invalidations
                    "invalidated": int(now["invalidated_keys"] - totals["invalidated_keys"]) if mode == "tracking" else 0,
                    "flushes": int(now["flushes"] - totals["flushes"]) if mode == "tracking" else 0, "load": load})
    for store in stores.values():
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/10"))
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--hot", type=int, default=1_000)
    parser.add_argument("--hot-share", type=float, default=0.9)
    parser.add_argument("--requests", type=int, default=4_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=1, help="entities per request")
    parser.add_argument("--write-rate", type=float, default=200.0, help="keys rewritten a second by another process")
    parser.add_argument("--ttl", type=float, default=5.0, help="SERVING_CACHE_TTL of the ttl mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="off,ttl,tracking")
    parser.add_argument("--own-redis", action="store_true",
                        help="a redis-server of its own on a free loopback port (stopped at the end)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")  # why a cache was flushed

    import redis

    own = own_redis() if args.own_redis else None
    if own is not None:
        args.redis = f"redis://127.0.0.1:{own}/0"
    raw = redis.Redis.from_url(args.redis)
    raw.flushdb()
    folder = tempfile.mkdtemp(prefix="fstore-bench-cache-")
    settings = Settings.from_env({"STORAGE_PATH": folder, "REDIS_URL": args.redis, "COMPUTE_ENGINE": "duckdb"})
    store = FeatureStore(settings)
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        store.create_feature_set({"name": "bench_cache", "entities": ["user"], "ttl": "30d", "features": [
            {"name": f, "data_type": "float", "transformation": f} for f in FEATURES]})
        fsv = store.feature_set_version("bench_cache")
        rng = random.Random(7)
        for start in range(0, args.keys, 2000):
            store.online.write_rows(fsv, rows(range(start, min(start + 2000, args.keys)), T0, rng))
        print(f"{args.keys:,} keys x 10 float features; {args.batch} entities/request; {args.hot_share:.0%} of keys "
              f"from {args.hot:,} hot ones; another process rewrites {args.write_rate:g} keys/s; "
              f"{args.requests:,} timed requests per mode and round, modes interleaved; TTL mode {args.ttl:g} s; "
              f"{os.cpu_count()} cores; uptime: {os.popen('uptime').read().strip()}")
        print(f"{'round':>5} {'mode':>9} {'hit rate':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
              f"{'invalidated':>11} {'flushes':>7}  load 1m (before→after)")
        for r in range(1, args.rounds + 1):
            for m in measure(settings, args.modes.split(","), args, rng):
                print(f"{r:>5} {m['mode']:>9} {m['hit_rate']:>9.1%} {m['p50']:>8.3f} {m['p95']:>8.3f} {m['p99']:>8.3f} "
                      f"{m['mean']:>8.3f} {m['invalidated']:>11,} {m['flushes']:>7}  {m['load']}", flush=True)
    finally:
        raw.flushdb()
        if own is not None:
            raw.shutdown(nosave=True)
        raw.close()
        store.close()


def own_redis() -> int:
    """Start a redis-server (no persistence) on a free loopback port; its port."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="fstore-bench-redis-")
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--daemonize", "yes", "--dir", folder], check=True, capture_output=True)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return port
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


if __name__ == "__main__":
    main()
