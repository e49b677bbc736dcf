"""``python -m bench.historical_quick [--scale 1] [--repeats 3]``: historical retrieval time on a warm session.

Builds (once per scale) an offline store of the benchmark's ``user_events``
(1,000,000 rows × 10 float features at scale 1) by computing the feature set on
Spark and committing it to Delta — the offline stage of a materialization run,
without the online load — then times ``get_historical_features(...).to_df()``
for the 10,000- and 100,000-row entity frames: one warm-up call, then the best
of ``--repeats``. Prints one JSON object with the figures and the 100k/10k ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import pandas as pd

from bench.data import bench_dir, generate
from bench.fstore_side import FEATURE_SET, apply_definitions, feature_refs, open_store

REDIS_DB = 5  # not used by retrieval; the store wants a URL


def build_store(dataset, store_dir):
    """A fresh store whose offline table holds every event row's features."""
    from fstore.engine.spark import compute
    from fstore.storage.offline import write_range

    if store_dir.exists():
        shutil.rmtree(store_dir)
    store = open_store(store_dir, REDIS_DB)
    apply_definitions(store, dataset.events_path)
    fsv = store.feature_set_version(FEATURE_SET)
    start, end = dataset.start.replace(tzinfo=None), dataset.end.replace(tzinfo=None)
    t0 = time.perf_counter()
    write_range(store.spark, store.settings, fsv, compute(store.spark, fsv, settings=store.settings, start=start, end=end), start, end)
    return store, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.historical_quick", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dataset = generate(args.scale)
    store, offline_seconds = build_store(dataset, bench_dir() / f"historical-quick-{args.scale:g}")
    out = {"scale": args.scale, "feature_rows": dataset.sizes.events, "offline_build_seconds": round(offline_seconds, 2),
           "load_average_before": os.getloadavg()[0], "runs": {}}
    try:
        for rows in (dataset.sizes.entities_small, dataset.sizes.entities_large):
            entity_df = pd.read_parquet(dataset.entities_path(rows))
            store.get_historical_features(entity_df=entity_df, features=feature_refs()).to_df()  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = store.get_historical_features(entity_df=entity_df, features=feature_refs()).to_df()
                times.append(round(time.perf_counter() - t0, 3))
            assert len(result) == len(entity_df)
            out["runs"][rows] = {"seconds": times, "best": min(times),
                                 "rows_with_features": int(result[feature_refs()[0].replace(":", "__")].notna().sum())}
        small, large = (out["runs"][r]["best"] for r in (dataset.sizes.entities_small, dataset.sizes.entities_large))
        out["ratio_large_to_small"] = round(large / small, 2)
        out["load_average_after"] = os.getloadavg()[0]
    finally:
        spark = store.spark
        store.close()
        spark.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
