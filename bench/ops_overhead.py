"""What authentication, metrics and usage recording add to one online request, measured in-process.

The same app serves the same online request (1 entity × 10 features, from the real Redis
when REDIS_URL is set, else the embedded store) in three configurations, interleaved in
rounds so machine noise hits all of them alike:

* ``bare``      — the app with the security hooks removed (the serving path alone);
* ``hooks``     — auth off: request metrics, serving metrics and the usage append;
* ``auth+hooks``— auth on with a key (cached verification) plus the same bookkeeping.

Run: ``python bench/ops_overhead.py [--requests 3000] [--rounds 5]``. Prints p50/p99/mean per
configuration in microseconds, and the usage flush time for what was recorded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime


def build(redis_url: str, folder: str):
    from fstore.ops import auth
    from fstore.api import create_app
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    features = [f"f{i}" for i in range(10)]
    apps = {}
    for name, auth_on in (("bare", False), ("hooks", False), ("auth+hooks", True)):
        settings = Settings.from_env({"STORAGE_PATH": os.path.join(folder, name), "REDIS_URL": redis_url,
                                      "AUTH_ENABLED": "true" if auth_on else "false",
                                      "REDIS_TIMEOUT": os.environ.get("REDIS_TIMEOUT", "2")})
        store = FeatureStore(settings)
        if name == "bare":
            store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
            store.create_feature_set({"name": "bench", "entities": ["user"],
                                      "source": {"path": os.path.join(folder, "none"), "format": "parquet",
                                                 "event_timestamp_column": "ts"},
                                      "features": [{"name": f, "data_type": "float", "transformation": f}
                                                   for f in features]})
            store.online.write_rows(store.feature_set_version("bench"),
                                    [{"user_id": 1, "event_timestamp": datetime(2024, 1, 1), **{f: 1.5 for f in features}}])
        else:
            # Same registry content, same online data: share the first store's registry file.
            store.close()
            settings = settings.with_(database_url=apps["bare"][0].extensions["fstore"].settings.database_url)
            store = FeatureStore(settings)
        app = create_app(store=store)
        headers = {}
        if auth_on:
            with store.transaction() as s:
                headers = {"X-API-Key": auth.create_key(s, owner="bench", scopes=["serve_online"])["key"]}
        if name == "bare":
            security = app.extensions["fstore_security"]
            security.usage.stop()
            app.before_request_funcs[None] = [f for f in app.before_request_funcs[None] if f.__name__ != "before"]
            app.after_request_funcs[None] = [f for f in app.after_request_funcs[None] if f.__name__ != "after"]
        apps[name] = (app, headers)
    body = {"features": [f"bench:{f}" for f in features], "entities": {"user_id": [1]}}
    return apps, body


def measure(app, headers, body, n: int) -> list[float]:
    client = app.test_client()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.post("/api/v1/serving/online", json=body, headers=headers)
        out.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"unexpected {response.status_code}: {response.get_data(as_text=True)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "")
    with tempfile.TemporaryDirectory() as folder:
        apps, body = build(redis_url, folder)
        for app, headers in apps.values():
            measure(app, headers, body, 300)  # warm up
        results: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(args.rounds):
            for name, (app, headers) in apps.items():
                results[name] += measure(app, headers, body, args.requests)
        print(f"online store: {'Redis ' + redis_url if redis_url else 'embedded'}; "
              f"{args.rounds} rounds × {args.requests} requests per configuration (Flask test client)")
        for name, values in results.items():
            values.sort()
            p50, p99 = values[len(values) // 2], values[int(len(values) * 0.99)]
            print(f"{name:>11}: p50 {p50 * 1e6:7.1f} µs  p99 {p99 * 1e6:7.1f} µs  mean {statistics.fmean(values) * 1e6:7.1f} µs")
        for name in ("hooks", "auth+hooks"):
            usage = apps[name][0].extensions["fstore_security"].usage
            t0 = time.perf_counter()
            flushed = usage.flush()
            print(f"{name:>11}: background flush of {flushed} recorded requests took {time.perf_counter() - t0:.3f} s")
            usage.stop()


if __name__ == "__main__":
    main()
