"""Online latency with windowed features (answered at the request's time) against the same without windows.

    .venv/bin/python bench/online_windows.py [--redis redis://127.0.0.1:6379/4] [--entities 10000]
                                             [--events 20] [--iterations 3000] [--embedded]

Materializes (DuckDB engine) two feature sets over one source of ``--entities`` users with
``--events`` events each in the last 30 days: ``plain`` has 10 row features; ``windowed`` has
6 row features and 4 windows (count and sum over 7 days, avg and max over 30 days), whose
contributions (``fstore.storage.online.windows``) hold every event of the window. Then times
``FeatureStore.get_online_features`` (the server's own read, cache off) for 1 and 100 entities
on each, prints p50/p95/p99, and the online memory per entity (Redis ``MEMORY USAGE`` averaged
over 200 keys). Flushes the Redis database it used, so give it one of your own.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.online_sdk import percentiles  # noqa: E402
from fstore.core.settings import Settings  # noqa: E402
from fstore.store import FeatureStore  # noqa: E402

ROW = [f"f{i}" for i in range(10)]
WINDOWS = [{"name": "cnt_7d", "data_type": "int", "window_size": "7d", "aggregation": "count"},
           {"name": "sum_7d", "data_type": "float", "window_size": "7d", "aggregation": "sum", "transformation": "f0"},
           {"name": "avg_30d", "data_type": "float", "window_size": "30d", "aggregation": "avg", "transformation": "f1"},
           {"name": "max_30d", "data_type": "float", "window_size": "30d", "aggregation": "max", "transformation": "f2"}]


def write_source(folder: Path, entities: int, events: int, now: datetime) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(7)
    users, times = [], []
    for user in range(entities):
        for _ in range(events):
            users.append(user)
            times.append(now - timedelta(seconds=rng.randint(60, 30 * 86400)))
    columns = {"user_id": pa.array(users, pa.int64()), "event_timestamp": pa.array(times, pa.timestamp("us"))}
    for i, name in enumerate(ROW):
        columns[name] = pa.array([round(rng.random() * 100, 2) for _ in users], pa.float64())
    path = folder / "source"
    path.mkdir(parents=True)
    pq.write_table(pa.table(columns), path / "part-0.parquet")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/4"))
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=20, help="events per entity in the last 30 days")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--embedded", action="store_true", help="the embedded online store instead of Redis")
    args = parser.parse_args()
    import redis

    raw = None if args.embedded else redis.Redis.from_url(args.redis)
    if raw is not None:
        raw.flushdb()
    folder = Path(tempfile.mkdtemp(prefix="fstore-bench-windows-"))
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    source = write_source(folder, args.entities, args.events, now)
    env = {"STORAGE_PATH": str(folder / "store"), "COMPUTE_ENGINE": "duckdb", "SOURCE_ROOTS": str(folder)}
    if raw is not None:
        env["REDIS_URL"] = args.redis
    store = FeatureStore(Settings.from_env(env))
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        src = {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"}
        store.create_feature_set({"name": "plain", "entities": ["user"], "source": src, "ttl": "30d",
                                  "features": [{"name": f, "data_type": "float", "transformation": f} for f in ROW]})
        store.create_feature_set({"name": "windowed", "entities": ["user"], "source": src, "ttl": "30d",
                                  "features": [{"name": f, "data_type": "float", "transformation": f} for f in ROW[:6]]
                                  + WINDOWS})
        for name in ("plain", "windowed"):
            run = store.materialize(name, now - timedelta(days=31), now)
            print(f"materialized {name}: {run.get('rows_written')} rows in {run.get('duration_s')} s")
        rng = random.Random(11)
        print(f"SDK online, cache off, {'embedded store' if raw is None else 'real Redis on loopback'}, "
              f"{args.entities:,} entities x {args.events} events; the two sets timed call by call in turn, "
              "so both see the same machine load:")
        calls = {}
        for name in ("plain", "windowed"):
            fsv = store.feature_set_version(name)
            names = [f"{name}:{f.name}" for f in fsv.features]
            check = store.get_online_features(features=names, entities={"user_id": [1]})
            assert set(check["statuses"]["1"].values()) == {"present"}, check
            calls[name] = names
        for size, iterations in ((1, args.iterations), (100, max(args.iterations // 5, 500))):
            samples: dict[str, list[float]] = {"plain": [], "windowed": []}
            for i in range(iterations + 100):
                users = [rng.randrange(args.entities) for _ in range(size)]
                for name in ("plain", "windowed") if i % 2 else ("windowed", "plain"):
                    t = time.perf_counter()
                    store.get_online_features(features=calls[name], entities={"user_id": users})
                    if i >= 100:  # warm-up
                        samples[name].append(time.perf_counter() - t)
            for name in ("plain", "windowed"):
                print(f"  {name:9s} {size:3d} entit{'y' if size == 1 else 'ies'} x 10 features: " + percentiles(samples[name]))
        if raw is not None:
            for name in ("plain", "windowed"):
                keys = [k for _, k in zip(range(200), raw.scan_iter(match=f"fs:{name}:*", count=1000))]
                used = [raw.memory_usage(k, samples=0) for k in keys]
                record = [len(raw.hget(k, "@w") or b"") for k in keys]
                print(f"  {name:9s} online memory per entity: {sum(used) / len(used):,.0f} bytes (Redis MEMORY USAGE, "
                      f"mean of {len(used)} keys), of which the window record's text: {sum(record) / len(record):,.0f} bytes")
    finally:
        if raw is not None:
            raw.flushdb()
            raw.close()
        store.close()


if __name__ == "__main__":
    main()
