"""The wide case: many feature sets of many features over one source, and many label rows.

Feast users' best-known retrieval complaint is width (feast#3003: 17,000 label rows ×
1,000 features across 10 feature views). This module builds that case and measures fstore on
it, one process per point (``python -m bench.wide point …`` prints one JSON line):

* data: ``events`` rows of ``columns`` float columns ``c0..`` for ``users`` users over 60 days
  (the issue's figure: 200,000 × 100, 20,000 users), and ``labels`` label rows
  ``(user_id, event_timestamp)`` over the same span, from one fixed seed;
* definitions: ``sets`` feature sets ``w0..`` over that one Parquet source, each with
  ``features / sets`` features ``c0..`` (plain columns), no TTL;
* work: materialize every set over the whole range (``FeatureStore.materialize_many``: one
  run per set, all reading one shared scan of their source), then ``calls`` historical retrievals of every feature for the label
  rows, recording each call's seconds, the rows returned, and (Spark) the driver's heap after
  the call (after a full GC), and the process tree's peak resident memory at the end.

``python -m bench --wide`` runs the issue's point on both engines, after Feast's side of it
(``bench.wide_feast``, on the same data) and with the values compared (``bench.wide_compare``);
``--sweep`` the scaling curve (``bench.wide_report`` writes the table and chart).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261207
START = datetime(2026, 7, 1, tzinfo=timezone.utc)
SPAN_DAYS = 60
ENTITY = "user_id"
SPARK_EXTRA = {"spark.ui.enabled": "false"}  # the default driver memory (spark-defaults.conf), as the issue asks


def set_names(sets: int) -> list[str]:
    return [f"w{i}" for i in range(sets)]


def column_names(count: int) -> list[str]:
    return [f"c{i}" for i in range(count)]


def data_dir(root: Path, events: int, users: int, columns: int) -> Path:
    return root / f"wide-{events}x{columns}-{users}u"


def make_data(root: Path, *, events: int, users: int, columns: int, labels: list[int]) -> Path:
    """Write (or reuse) the events Parquet and one label Parquet per size; returns the folder."""
    folder = data_dir(root, events, users, columns)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "events.parquet"
    if not source.exists():
        rng = np.random.default_rng(SEED)
        span = SPAN_DAYS * 86400
        frame = pd.DataFrame({ENTITY: rng.integers(0, users, size=events, dtype=np.int64),
                              "event_timestamp": _timestamps(rng.integers(0, span, size=events, dtype=np.int64))})
        values = rng.standard_normal((events, columns))
        frame = pd.concat([frame, pd.DataFrame(values, columns=column_names(columns))], axis=1)
        # One row per (user, second): "the latest row at or before t" has one answer on every engine.
        frame = frame.drop_duplicates([ENTITY, "event_timestamp"]).sort_values("event_timestamp", kind="stable")
        frame.to_parquet(source, index=False, row_group_size=50_000)
    for rows in labels:
        path = label_path(folder, rows)
        if not path.exists():
            rng = np.random.default_rng(SEED + rows)
            pd.DataFrame({ENTITY: rng.integers(0, users, size=rows, dtype=np.int64),
                          "event_timestamp": _timestamps(rng.integers(0, SPAN_DAYS * 86400, size=rows,
                                                                      dtype=np.int64))}).to_parquet(path, index=False)
    return folder


def label_path(folder: Path, rows: int) -> Path:
    return folder / f"labels-{rows}.parquet"


def _timestamps(offsets: np.ndarray) -> pd.Series:
    base = np.datetime64(START.replace(tzinfo=None), "s")
    return pd.Series(base + offsets.astype("timedelta64[s]")).astype("datetime64[us]").dt.tz_localize("UTC")


def environment(store_dir: Path, redis_db: int, engine: str, data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"STORAGE_PATH": str(store_dir), "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
                "SPARK_MASTER": "local[2]", "AUTH_ENABLED": "false", "DATABASE_URL": "", "COMPUTE_ENGINE": engine,
                "SOURCE_ROOTS": f"{store_dir},{data_root}"})
    env.pop("SPARK_REMOTE", None)
    return env


def open_store(store_dir: Path, redis_db: int, engine: str, data_root: Path):
    from fstore.engine.session import get_spark
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    settings = Settings.from_env(environment(store_dir, redis_db, engine, data_root))
    store = FeatureStore(settings)
    if engine == "spark":
        store.use_spark(get_spark(settings, app_name="fstore-bench-wide", extra=SPARK_EXTRA))
    return store


def apply_definitions(store, source: str, *, sets: int, per_set: int) -> None:
    store.create_entity({"name": ENTITY, "join_keys": [ENTITY], "value_type": "int"}, actor="bench")
    for name in set_names(sets):  # one body per set, its features in it (one check against the source, not 100)
        store.create_feature_set({"name": name, "entities": [ENTITY],
                                  "source": {"path": source, "format": "parquet",
                                             "event_timestamp_column": "event_timestamp"},
                                  "features": [{"name": column, "data_type": "float", "transformation": column}
                                               for column in column_names(per_set)]}, actor="bench")


def feature_refs(sets: int, per_set: int) -> list[str]:
    return [f"{s}:{c}" for s in set_names(sets) for c in column_names(per_set)]


def driver_heap_mb(store) -> float | None:
    """The Spark driver's used heap after a full GC (MB), or None on DuckDB."""
    if store.settings.compute_engine != "spark":
        return None
    jvm = store.spark.sparkContext._jvm
    jvm.java.lang.System.gc()
    runtime = jvm.java.lang.Runtime.getRuntime()
    return round((runtime.totalMemory() - runtime.freeMemory()) / 2**20, 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its children still running (the Spark JVM), MB (VmHWM)."""
    def hwm(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    total, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += hwm(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
                stack.extend(int(c) for c in children)
        except OSError:
            pass
    return round(total / 1024, 1)


def point(args: argparse.Namespace) -> dict:
    """One measured point (see the module docstring); the result frame of the last call goes to ``--output``."""
    per_set = args.features // args.sets
    folder = make_data(Path(args.data), events=args.events, users=args.users, columns=per_set, labels=[args.labels])
    store_dir = Path(args.work) / f"store-{args.engine}-{args.features}"
    out: dict = {"engine": args.engine, "features": per_set * args.sets, "sets": args.sets, "labels": args.labels,
                 "events": args.events, "data": str(folder)}
    fresh = not (store_dir / "materialized.json").exists()
    if fresh:
        shutil.rmtree(store_dir, ignore_errors=True)
        store_dir.mkdir(parents=True)
    began = time.perf_counter()
    store = open_store(store_dir, args.redis_db, args.engine, folder)
    if args.engine == "spark":
        store.spark.range(1).count()
    out["session_seconds"] = round(time.perf_counter() - began, 2)
    if fresh:
        import redis

        redis.Redis.from_url(f"redis://127.0.0.1:6379/{args.redis_db}").flushdb()
        apply_definitions(store, str(folder / "events.parquet"), sets=args.sets, per_set=per_set)
        end = START + timedelta(days=SPAN_DAYS)
        t0 = time.perf_counter()
        runs = store.materialize_many(set_names(args.sets), START, end, actor="bench")
        out["materialize_seconds"] = round(time.perf_counter() - t0, 2)
        out["materialize_rows"] = [r.get("rows_written") for r in runs]
        (store_dir / "materialized.json").write_text("{}")
    labels = pd.read_parquet(label_path(folder, args.labels))
    refs = feature_refs(args.sets, per_set)
    timed_calls(out, args, lambda: store.get_historical_features(entity_df=labels, features=refs, actor="bench").to_df(),
                lambda: {"driver_heap_mb": driver_heap_mb(store)})
    store.close()
    return out


def timed_calls(out: dict, args: argparse.Namespace, call, after=dict) -> None:
    """``args.calls`` timed retrievals (``call`` returns the frame) into ``out``: seconds, rows and ``after()`` per
    call, then the last frame's width and non-null values (written to ``args.output`` when given), and peak RSS."""
    calls = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        result = call()
        calls.append({"seconds": round(time.perf_counter() - t0, 2), "rows": len(result), **after()})
    out["calls"] = calls
    out["columns"] = len(result.columns)
    out["non_null_values"] = int(result.notna().to_numpy().sum())
    if args.output:
        result.to_parquet(args.output, index=False)
    out["peak_rss_mb"] = peak_rss_mb()


def point_parser(prog: str, work: str) -> argparse.ArgumentParser:
    """The arguments of one point, for fstore's side and Feast's (``bench.wide_feast``) alike."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--labels", type=int, default=17_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--data", required=True, help="folder for the generated data")
    parser.add_argument("--work", required=True, help=work)
    parser.add_argument("--output", default="", help="write the last call's rows here (Parquet)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = point_parser("python -m bench.wide", "folder for the stores")
    parser.add_argument("--engine", choices=("spark", "duckdb"), required=True)
    parser.add_argument("--redis-db", type=int, default=9)
    print(json.dumps(point(parser.parse_args(argv)), default=str))


if __name__ == "__main__":
    sys.exit(main())
