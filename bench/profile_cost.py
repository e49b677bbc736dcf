"""What feature profiles cost a materialization: the same run with PROFILES=on and PROFILES=off.

``python -m bench.profile_cost --rows 1000000 --engine duckdb --repeat 3 --folder /tmp/pc``

Writes ROWS events (200k users, one day apart over 10 days) with two float features, one int and one string,
then materializes the whole range offline (no online load, so the ratio is over the smallest run) alternating
off/on REPEAT times after one warm-up each, and prints one JSON line: the median seconds per mode and their ratio.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

T0 = datetime(2024, 1, 1)


def write_source(folder: Path, rows: int) -> str:
    rng = np.random.default_rng(1)
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({
        "user_id": rng.integers(0, 200_000, rows),
        "event_timestamp": (np.datetime64(T0) + rng.integers(0, 10 * 86_400, rows).astype("timedelta64[s]")
                            ).astype("datetime64[us]"),
        "amount": rng.lognormal(3, 1, rows), "score": rng.normal(0, 1, rows),
        "items": rng.integers(0, 50, rows), "country": rng.choice(["us", "de", "fr", "jp", "br", "in"], rows)})
    frame.loc[rng.random(rows) < 0.05, "score"] = np.nan
    frame.to_parquet(src / "part-0.parquet", index=False)
    return str(src)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--folder", default="/tmp/fstore-profile-cost")
    args = parser.parse_args()

    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    source = write_source(folder, args.rows)
    base = Settings.from_env({"STORAGE_PATH": str(folder / "store"), "SOURCE_ROOTS": str(folder),
                              "COMPUTE_ENGINE": args.engine, "SPARK_MASTER": "local[2]"})
    stores = {mode: FeatureStore(base.with_(profiles=mode == "on"), auto_upgrade=True) for mode in ("off", "on")}
    store = stores["off"]
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": "cost", "entities": ["user"], "online_enabled": False,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": "amount", "data_type": "float", "transformation": "amount"},
                     {"name": "score", "data_type": "float", "transformation": "score"},
                     {"name": "items", "data_type": "int", "transformation": "items"},
                     {"name": "country", "data_type": "string", "transformation": "country"}]})
    if args.engine == "spark":
        stores["on"].use_spark(store.spark)
    end = T0 + timedelta(days=10)
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for mode in ("off", "on"):  # warm-up: JIT, Spark's first jobs, file cache
        stores[mode].materialize("cost", T0, end)
    for _ in range(args.repeat):
        for mode in ("off", "on"):
            t = time.perf_counter()
            run = stores[mode].materialize("cost", T0, end)
            seconds[mode].append(time.perf_counter() - t)
            assert run["rows_written"] == args.rows
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    print(json.dumps({"engine": args.engine, "rows": args.rows, "repeat": args.repeat,
                      "seconds_off": [round(x, 3) for x in seconds["off"]], "seconds_on": [round(x, 3) for x in seconds["on"]],
                      "median_off": round(off, 3), "median_on": round(on, 3), "ratio": round(on / off, 3)}))
    for s in stores.values():
        s.close()


if __name__ == "__main__":
    main()
