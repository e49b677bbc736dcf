"""Push → online visibility latency (#25 part 1): p50/p99 of single-row pushes, library and HTTP.

Each push writes one new row (a newer event time each time) of a row-feature set; the clock runs from the
call until it returns, and right after the return the online store is read directly (a second connection)
to check the row is there: a push that returned before its row was readable would count as ``not_visible``.
Over HTTP the Flask app runs in process (test client) with API keys on, so the key check, the grant check,
the body model and the audit are inside the figure; the network stack is not.

    python -m bench.push_latency --redis redis://127.0.0.1:6379/3 [--pushes 200]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from fstore.api import create_app
from fstore.core.settings import Settings
from fstore.ops import auth
from fstore.storage.online import open_online_store
from fstore.store import FeatureStore

T0 = datetime(2024, 1, 1)


def _store(root: Path, redis_url: str | None) -> FeatureStore:
    settings = Settings.from_env({"STORAGE_PATH": str(root / "store"), "SOURCE_ROOTS": str(root),
                                  "COMPUTE_ENGINE": "duckdb", "AUTH_ENABLED": "true",
                                  **({"REDIS_URL": redis_url} if redis_url else {})})
    store = FeatureStore(settings, auto_upgrade=True)
    source = root / "source"
    source.mkdir()
    pd.DataFrame({"user_id": [1], "event_timestamp": pd.Series([T0]).astype("datetime64[us]"), "clicks": [1],
                  "page": ["a"]}).to_parquet(source / "part-0.parquet", index=False)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": "clicks", "entities": ["user"], "online_enabled": True,
        "source": {"path": str(source), "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": "clicks_x2", "data_type": "int", "transformation": "clicks * 2"},
                     {"name": "page_upper", "data_type": "string", "transformation": "upper(page)"}]})
    return store


def _visible(reader, fsv, user: int, clicks: int) -> bool:
    from fstore.storage.online.base import as_codec

    raw = reader.read(fsv, [as_codec(fsv).key_of({"user_id": user})], ["clicks_x2"])[0]
    return raw is not None and raw[1][0] is not None and int(raw[1][0]) == clicks * 2


def _figures(seconds: list[float], misses: int, cpu_seconds: float) -> dict:
    ms = np.array(seconds) * 1000
    return {"pushes": len(seconds), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2), "not_visible": misses,
            # CPU of the whole process (background writers included) per push: what machine load does not change.
            "cpu_ms_per_push": round(cpu_seconds * 1000 / len(seconds), 2)}


def measure(redis_url: str | None, pushes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), redis_url)
        fsv = store.feature_set_version("clicks")
        reader = open_online_store(store.settings)
        with store.transaction() as s:
            key = auth.create_key(s, owner="bench", scopes=["push"])["key"]
        app = create_app(store=store)
        client = app.test_client()
        out = {}
        try:
            for way in ("library", "http"):
                user = 10 if way == "library" else 20
                start = datetime.now(timezone.utc).replace(tzinfo=None)  # newer than any row of an earlier run
                # Warm up: the set's compiled query, source schema and DuckDB connection are made once per process.
                store.push("clicks", [{"user_id": user, "event_timestamp": T0, "clicks": 0, "page": "w"}])
                seconds, misses, visible_cpu = [], 0, 0.0
                cpu = time.process_time()
                for i in range(1, pushes + 1):
                    row = {"user_id": user, "event_timestamp": (start + timedelta(milliseconds=i)).isoformat() + "Z",
                           "clicks": i, "page": "p"}
                    t = time.perf_counter()
                    if way == "library":
                        store.push("clicks", [row])
                    else:
                        answer = client.post("/api/v1/push", json={"feature_set": "clicks", "rows": [row]},
                                             headers={"Authorization": f"Bearer {key}"})
                        assert answer.status_code == 200, answer.get_json()
                    seconds.append(time.perf_counter() - t)
                    check = time.process_time()
                    misses += not _visible(reader, fsv, user, i)
                    visible_cpu += time.process_time() - check
                out[way] = _figures(seconds, misses, time.process_time() - cpu - visible_cpu)
        finally:
            app.extensions["fstore_security"].usage.stop()
            reader.delete_feature_set("clicks")  # the Redis database holds no row of the bench afterwards
            reader.close()
            store.close()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="a Redis URL (default: the embedded online store)")
    parser.add_argument("--pushes", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps({"online": "redis" if args.redis else "embedded", **measure(args.redis, args.pushes)}, indent=2))


if __name__ == "__main__":
    main()
