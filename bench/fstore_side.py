"""fstore's side of the benchmark: the same work as Feast, through the ``FeatureStore`` facade.

Run as a subprocess (``python -m bench.fstore_side <command> …``) printing one JSON
object on its last stdout line, so each part gets a Spark session of its own
(cold, then warm) and never shares a heap with Feast.

Commands:
  setup        register entity ``user_id``, feature set ``user_events`` (source: the generated
               Parquet) and features f0..f9 (float), in a fresh store folder
  setup-windows  (re)register ``user_windows`` over the same source: f0..f5 and four windows sized
               from today (``window_features``), for the online part's windowed rows
  materialize  ``store.materialize`` over the whole range, twice in one process: cold, then warm
               (Redis flushed before each), with the run record's seconds per stage
  historical   ``store.get_historical_features`` for entity Parquet files, in ``bench.retrieval_calls``'
               order (the first call on a fresh session); results saved as Parquet

The CLI job (``python jobs/materialize.py``) and the server (gunicorn) are started by
the orchestrator with ``job_command`` / ``server_command`` and ``environment``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.data import bench_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURE_SET = "user_events"
FEATURES = tuple(f"f{i}" for i in range(10))
SPARK_EXTRA = {"spark.driver.memory": "4g", "spark.ui.enabled": "false"}


def environment(store_dir: Path, redis_db: int, spark_remote: str | None = None) -> dict[str, str]:
    """The environment every fstore process of the benchmark runs with (also the server and the job): Spark on
    ``local[2]``, or the master ``BENCH_SPARK_MASTER`` names; Redis on port 6379, or ``BENCH_REDIS_PORT``
    (``bench.cluster`` gives both). Spark is a session of each process's own unless ``spark_remote`` names a
    Spark Connect server; a server some `fstore spark up` left running is never picked up by itself."""
    env = dict(os.environ)
    env.update({"STORAGE_PATH": str(store_dir), "REDIS_URL": f"redis://127.0.0.1:{redis_port()}/{redis_db}",
                "SPARK_MASTER": os.environ.get("BENCH_SPARK_MASTER") or "local[2]", "AUTH_ENABLED": "false",
                "DATABASE_URL": "", "SPARK_CONNECT": "off",
                "SOURCE_ROOTS": str(bench_dir())})  # the generated data, beside the store folders
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(name, None)
    if spark_remote:
        env["SPARK_REMOTE"] = spark_remote
    return env


def redis_port() -> int:
    return int(os.environ.get("BENCH_REDIS_PORT") or 6379)


def feature_refs() -> list[str]:
    return [f"{FEATURE_SET}:{name}" for name in FEATURES]


def open_store(store_dir: Path, redis_db: int):
    """A ``FeatureStore`` on the benchmark's store folder and Redis DB, with a local[2] Spark session."""
    from fstore.engine.session import get_spark
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    settings = Settings.from_env(environment(store_dir, redis_db, os.environ.get("SPARK_REMOTE")))
    store = FeatureStore(settings)
    if settings.compute_engine == "spark":
        store.use_spark(get_spark(settings, app_name="fstore-bench", extra=SPARK_EXTRA))
    return store


def apply_definitions(store, events_path: str) -> None:
    """The benchmark's definitions, through the facade (what a user would POST)."""
    store.create_entity({"name": "user_id", "join_keys": ["user_id"], "value_type": "int"}, actor="bench")
    store.create_feature_set({"name": FEATURE_SET, "entities": ["user_id"],
                              "source": {"path": events_path, "format": "parquet",
                                         "event_timestamp_column": "event_timestamp"}}, actor="bench")
    for name in FEATURES:
        store.create_feature({"name": name, "feature_set": FEATURE_SET, "data_type": "float",
                              "transformation": name}, actor="bench")


WINDOW_SET = "user_windows"


def window_features(now: datetime, start: datetime, end: datetime) -> list[dict]:
    """Six row features and four windows, 10 features as in ``user_events``: the long windows reach back
    past the data's first event and the short ones hold its last 30 days, at ``now`` (sized from today,
    so the windows are not empty however long after the data's fixed dates the benchmark runs)."""
    long_days, short_days = (now - start).days + 1, (now - end).days + 30
    return ([{"name": f, "data_type": "float", "transformation": f} for f in FEATURES[:6]]
            + [{"name": "cnt_short", "data_type": "int", "window_size": f"{short_days}d", "aggregation": "count"},
               {"name": "sum_short", "data_type": "float", "window_size": f"{short_days}d", "aggregation": "sum",
                "transformation": "f0"},
               {"name": "avg_long", "data_type": "float", "window_size": f"{long_days}d", "aggregation": "avg",
                "transformation": "f1"},
               {"name": "max_long", "data_type": "float", "window_size": f"{long_days}d", "aggregation": "max",
                "transformation": "f2"}])


def apply_window_set(store, events_path: str, start: datetime, end: datetime) -> list[dict]:
    """``user_windows`` (recreated when it exists): what the online part serves with windows exact at the request."""
    from fstore.core.errors import NotFound
    from fstore.storage.offline import table_uri

    try:
        store.delete_feature_set(WINDOW_SET, actor="bench")
    except NotFound:
        pass
    shutil.rmtree(table_uri(store.settings, WINDOW_SET), ignore_errors=True)  # the benchmark's own store
    features = window_features(datetime.now(timezone.utc), start, end)
    store.create_feature_set({"name": WINDOW_SET, "entities": ["user_id"], "features": features,
                              "source": {"path": events_path, "format": "parquet",
                                         "event_timestamp_column": "event_timestamp"}}, actor="bench")
    return features


def flush_redis(redis_db: int) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_port(), db=redis_db)
    client.flushdb()
    client.close()


def materialize(store_dir: Path, redis_db: int, start: datetime, end: datetime, repeats: int) -> dict:
    """Whole-range materialization ``repeats`` times in one process (the first on a cold session)."""
    began = time.perf_counter()
    store = open_store(store_dir, redis_db)
    if store.settings.compute_engine == "spark":
        store.spark.range(1).count()
    session_seconds = time.perf_counter() - began
    runs = []
    for _ in range(repeats):
        flush_redis(redis_db)
        t0 = time.perf_counter()
        run = store.materialize(FEATURE_SET, start, end, actor="bench")
        runs.append({"seconds": time.perf_counter() - t0, "status": run.get("status"),
                     "rows_read": run.get("rows_read"), "rows_written": run.get("rows_written"),
                     "online_rows": run.get("online_rows"), "stages": run.get("stages"),
                     "duration_s": run.get("duration_s")})
    store.close()
    return {"session_seconds": session_seconds, "runs": runs}


def job_command(start: datetime, end: datetime, feature_set: str = FEATURE_SET) -> list[str]:
    """``python jobs/materialize.py`` for the whole range (its own JVM: a CLI wall time)."""
    return [sys.executable, str(REPO_ROOT / "jobs" / "materialize.py"), "--feature-set", feature_set,
            "--start", start.isoformat(), "--end", end.isoformat(), "--actor", "bench"]


def server_command(port: int, workers: int = 2) -> list[str]:
    """gunicorn with the project's configuration; bind and workers given explicitly."""
    return [sys.executable, "-m", "gunicorn", "server:app", "-c", str(REPO_ROOT / "conf" / "gunicorn.conf.py"),
            "-b", f"127.0.0.1:{port}", "-w", str(workers)]


def granian_command(port: int, workers: int = 2) -> list[str]:
    """``fstore serve --server granian`` (``fstore.api.serve_granian``); bind and workers given explicitly."""
    return [sys.executable, "-m", "fstore.api.serve_granian", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers)]


def historical(store_dir: Path, redis_db: int, entity_files: list[str], outputs: list[str], repeats: int,
               long_lived: int) -> dict:
    """Retrieval per entity file in ``time_retrievals``' order (the first call on a fresh session); results saved."""
    import pandas as pd

    from bench.retrieval_calls import time_retrievals

    began = time.perf_counter()
    store = open_store(store_dir, redis_db)
    if store.settings.compute_engine == "spark":
        store.spark.range(1).count()
    session_seconds = time.perf_counter() - began
    frames = []
    for path in entity_files:
        entity_df = pd.read_parquet(path)
        entity_df.insert(0, "row_id", range(len(entity_df)))
        frames.append(entity_df)
    figures, results = time_retrievals(
        lambda frame: store.get_historical_features(entity_df=frame, features=feature_refs(), actor="bench").to_df(),
        frames, repeats=repeats, long_lived=long_lived)
    out: dict = {"session_seconds": session_seconds, "files": {}}
    for path, output, frame, result, figure in zip(entity_files, outputs, frames, results, figures):
        result.to_parquet(output, index=False)
        out["files"][path] = {"rows_in": len(frame), "rows_out": len(result), "columns": list(result.columns), **figure}
    store.close()
    return out


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fstore_side", description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="the benchmark's fstore folder (registry + Delta)")
    parser.add_argument("--redis-db", type=int, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--events", required=True)
    p = sub.add_parser("setup-windows")
    p.add_argument("--events", required=True)
    p.add_argument("--start", type=_date, required=True, help="the data's first event")
    p.add_argument("--end", type=_date, required=True, help="the data's end")
    p = sub.add_parser("materialize")
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("historical")
    p.add_argument("--entities", nargs="+", required=True)
    p.add_argument("--outputs", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--long-lived", type=int, default=0, help="calls per file in all (see bench.retrieval_calls)")
    args = parser.parse_args(argv)
    store_dir = Path(args.store)
    if args.command == "setup":
        shutil.rmtree(store_dir, ignore_errors=True)
        store_dir.mkdir(parents=True)
        store = open_store(store_dir, args.redis_db)
        t0 = time.perf_counter()
        apply_definitions(store, args.events)
        out = {"seconds": time.perf_counter() - t0}
        store.close()
    elif args.command == "setup-windows":
        store = open_store(store_dir, args.redis_db)
        out = {"features": apply_window_set(store, args.events, args.start, args.end)}
        store.close()
    elif args.command == "materialize":
        out = materialize(store_dir, args.redis_db, args.start, args.end, args.repeats)
    else:
        out = historical(store_dir, args.redis_db, args.entities, args.outputs, args.repeats, args.long_lived)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
