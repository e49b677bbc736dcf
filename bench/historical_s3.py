"""``python -m bench.historical_s3 [--scale 0.1] [--repeats 3]``: historical retrieval with the offline table
on S3 (a moto server on loopback) against the same table on local disk, on both engines.

The benchmark's ``user_events`` (``bench.data``: 1M rows × 10 float features at scale 1) is computed once
(DuckDB engine, in process) and committed twice with the same writer (``offline_arrow.write_range_arrow``):
to a local store and to an S3 store (``STORAGE_BACKEND=s3``, a moto server started here on a free port and
stopped by its PID at the end). Then for each engine (Spark ``local[2]`` with the hadoop-aws jars, DuckDB)
and each store it times ``get_historical_features(...).to_df()`` for the large entity frame: one warm-up,
then the best of ``--repeats``. Prints one JSON object. moto keeps objects in its own process's memory
and answers over HTTP on loopback: the S3 figures are the cost of the S3 code path (requests, no local
file reads), not of a network.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pandas as pd

from bench.data import bench_dir, generate
from bench.fstore_side import FEATURE_SET, SPARK_EXTRA, apply_definitions, feature_refs

BUCKET = "fstore-bench"


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 on a free loopback port; waits (bounded) until it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit("moto did not start")
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.historical_s3", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import boto3

    from fstore.core.settings import Settings
    from fstore.engine import duckdb as engine
    from fstore.engine.jars import spark_conf
    from fstore.engine.session import get_spark
    from fstore.storage.offline_arrow import write_range_arrow
    from fstore.store import FeatureStore

    dataset = generate(args.scale)
    work = bench_dir() / f"historical-s3-{args.scale:g}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    moto, endpoint = start_moto()
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
        places = {
            "local": {"STORAGE_PATH": str(work / "local")},
            "s3": {"STORAGE_BACKEND": "s3", "S3_BUCKET": BUCKET, "S3_ENDPOINT": endpoint, "S3_ACCESS_KEY": "bench",
                   "S3_SECRET_KEY": "bench", "STORAGE_PATH": "bench",
                   "DATABASE_URL": f"sqlite:///{work / 's3-registry.db'}"},
        }
        settings = {name: Settings.from_env({"SPARK_MASTER": "local[2]", "SOURCE_ROOTS": dataset.root, **env})
                    for name, env in places.items()}
        stores = {name: FeatureStore(s.with_(compute_engine="duckdb")) for name, s in settings.items()}
        for store in stores.values():
            apply_definitions(store, dataset.events_path)
        fsv = stores["local"].feature_set_version(FEATURE_SET)
        start, end = dataset.start.replace(tzinfo=None), dataset.end.replace(tzinfo=None)
        with engine.connect() as con:
            rows = engine.compute(con, fsv, settings=stores["local"].settings, start=start, end=end)
        out = {"scale": args.scale, "feature_rows": rows.num_rows, "load_average_before": os.getloadavg()[0],
               "write_seconds": {}, "retrieval_best_seconds": {}, "retrieval_seconds": {}}
        for name, store in stores.items():
            t0 = time.perf_counter()
            write_range_arrow(store.settings, store.feature_set_version(FEATURE_SET), rows, start, end)
            out["write_seconds"][name] = round(time.perf_counter() - t0, 2)

        base = settings["local"]
        extra = {**SPARK_EXTRA, "spark.jars": spark_conf(base.with_(storage_backend="s3")).get("spark.jars", "")}
        spark = get_spark(base, app_name="fstore-bench-s3", extra={k: v for k, v in extra.items() if v})
        entity_df = pd.read_parquet(dataset.entities_path(dataset.sizes.entities_large))
        answers = {}
        for engine_name in ("spark", "duckdb"):
            for name, s in settings.items():
                store = FeatureStore(s.with_(compute_engine=engine_name))
                if engine_name == "spark":
                    store.use_spark(spark)
                store.get_historical_features(entity_df=entity_df, features=feature_refs()).to_df()  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    result = store.get_historical_features(entity_df=entity_df, features=feature_refs()).to_df()
                    times.append(round(time.perf_counter() - t0, 3))
                key = f"{engine_name}/{name}"
                out["retrieval_seconds"][key] = times
                out["retrieval_best_seconds"][key] = min(times)
                answers[key] = result
                store.close()
        for engine_name in ("spark", "duckdb"):
            pd.testing.assert_frame_equal(answers[f"{engine_name}/s3"], answers[f"{engine_name}/local"])
        out["entity_rows"] = len(entity_df)
        out["s3_equals_local"] = True
        out["load_average_after"] = os.getloadavg()[0]
        spark.stop()
    finally:
        moto.terminate()  # by its PID (this Popen), nothing else
        moto.wait(timeout=10)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
