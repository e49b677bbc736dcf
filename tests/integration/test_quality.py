"""Feature quality on both engines: profiles per run, drift against each baseline, anomaly alerts with a real
webhook receiver on 127.0.0.1, and the fail policy. The data is built to drift, to spike and to stay put."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from fstore.core.errors import ComputeError

pytestmark = pytest.mark.spark

T0 = datetime(2024, 3, 1)
DAY = timedelta(days=1)
USERS = 2000


def day_rows(day: int, *, shift: float = 0.0, nulls: float = 0.0, cats=(0.6, 0.3, 0.1), seed: int | None = None):
    """One event per user on ``day``: ``x`` ~ N(shift, 1) (a share ``nulls`` of them null), ``cat`` a/b/c."""
    rng = np.random.default_rng(seed if seed is not None else day)
    x = rng.normal(shift, 1.0, USERS)
    if nulls:
        x[rng.random(USERS) < nulls] = np.nan
    return pd.DataFrame({"user_id": np.arange(USERS), "event_timestamp": [T0 + day * DAY + timedelta(hours=6)] * USERS,
                         "x": x, "cat": rng.choice(["a", "b", "c"], USERS, p=list(cats))})


def write(folder, frames):
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.concat(frames, ignore_index=True)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us]")
    frame.to_parquet(folder / "part-0.parquet", index=False)
    return str(folder)


def make_set(store, source: str, *, policy: dict | None = None, extra: tuple = ()):
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": "q", "entities": ["user"], "online_enabled": False,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        **({"anomaly_policy": policy} if policy else {}),
        "features": [{"name": "x", "data_type": "float", "transformation": "x"},
                     {"name": "cat", "data_type": "string", "transformation": "cat"}, *extra]})


def run_day(store, day: int):
    return store.materialize("q", T0 + day * DAY, T0 + (day + 1) * DAY)


@pytest.fixture()
def store(settings, on_engine):
    s = on_engine(settings, auto_upgrade=True)
    yield s
    s.close()


def by_feature(report):
    return {f["feature"]: f for f in report["features"]}


def test_profiles_and_drift_against_previous_window_and_training_set(store, tmp_path):
    from fstore.ops.drift import drift

    frames = [day_rows(0), day_rows(1), day_rows(2, shift=1.5, cats=(0.1, 0.3, 0.6))]
    make_set(store, write(tmp_path / "src", frames))
    run_day(store, 0)
    labels = pd.DataFrame({"user_id": np.arange(USERS), "event_timestamp": [T0 + DAY - timedelta(minutes=1)] * USERS})
    store.get_historical_features(entity_df=labels, features=["q:x", "q:cat"], save_as="trained").to_df()
    run_day(store, 1)

    with store.transaction() as s:
        same = by_feature(drift(s, "q", "previous"))
    from fstore.registry.quality import run_profiles

    with store.transaction() as s:
        profile = run_profiles(s, "q", limit=1)[0]["profile"]["features"]["x"]
    assert profile["count"] == USERS and profile["nulls"] == 0 and profile["coverage"] == 1.0
    assert sum(profile["histogram"]["counts"]) == USERS and len(profile["histogram"]["edges"]) == 21
    assert profile["quantiles"]["p5"] < profile["quantiles"]["p50"] < profile["quantiles"]["p95"]
    assert abs(profile["mean"]) < 0.2 and 0.8 < profile["std"] < 1.2
    # Two samples of one distribution: stable.
    assert same["x"]["psi"] < 0.1 and same["x"]["band"] == "stable" and same["x"]["ks"] < 0.1
    assert same["cat"]["psi"] < 0.1 and same["cat"]["ks"] is None

    run_day(store, 2)  # shifted by 1.5 standard deviations, categories reversed
    with store.transaction() as s:
        shifted = drift(s, "q", "previous")
        window = by_feature(drift(s, "q", f"window:{(T0 - DAY).isoformat()}/2099-01-01T00:00:00"))
        trained = by_feature(drift(s, "q", "training_set:trained"))
    moved = by_feature(shifted)
    assert moved["x"]["psi"] > 0.25 and moved["x"]["band"] == "significant" and moved["x"]["ks"] > 0.4
    assert moved["cat"]["psi"] > 0.25 and moved["x"]["js"] > 0.1
    assert sorted(shifted["drifted"]) == ["cat", "x"]
    assert len(window["x"]["baseline_rows"] and shifted["baseline"]["run_id"]) > 0
    assert trained["x"]["psi"] > 0.25 and trained["x"]["baseline_rows"] == USERS


class Receiver:
    """A webhook receiver on 127.0.0.1: answers the first POST 503 (so the sender must retry), then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                receiver.calls += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if receiver.calls == 1 else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_null_burst_raises_an_alert_metric_and_webhook(settings, on_engine, receiver, tmp_path):
    from fstore.ops import metrics

    store = on_engine(settings.with_(alert_webhook_url=receiver.url), auto_upgrade=True)
    try:
        make_set(store, write(tmp_path / "src", [day_rows(d) for d in range(5)] + [day_rows(5, nulls=0.4)]))
        for day in range(5):
            run_day(store, day)
        assert receiver.calls == 0  # five ordinary runs: no alert
        run_day(store, 5)
        with store.transaction() as s:
            from fstore.registry.quality import list_alerts

            alerts = list_alerts(s, feature_set="q")
        assert [(a["feature"], a["metric"], a["severity"]) for a in alerts] == [("x", "null_rate", "critical")]
        assert 0.3 < alerts[0]["value"] < 0.5 and alerts[0]["median"] == 0.0
        assert receiver.calls == 2 and receiver.bodies[0]["alerts"][0]["metric"] == "null_rate"
        assert receiver.bodies[0]["run_failed"] is False
        text = metrics.render(store)[0].decode()
        assert 'fstore_quality_alerts_total{feature="x",feature_set="q",metric="null_rate",severity="critical"} 1.0' in text
    finally:
        store.close()


def test_fail_policy_writes_nothing_on_a_critical_anomaly(store, tmp_path):
    make_set(store, write(tmp_path / "src", [day_rows(d) for d in range(3)] + [day_rows(3, nulls=0.5)]),
             policy={"on_anomaly": "fail", "min_runs": 3, "window": 10})
    for day in range(3):
        run_day(store, day)
    version = store.list_runs("q", limit=1)["items"][0]["offline_version"]
    with pytest.raises(ComputeError, match=r"critical anomalies: x\.null_rate = 0\.\d+ .*on_anomaly: fail"):
        run_day(store, 3)
    latest = store.list_runs("q", limit=1)["items"][0]
    assert latest["status"] == "failed" and latest["offline_version"] is None
    later = run_day(store, 2)  # the set still runs: the next commit follows the last good one
    assert later["status"] == "succeeded" and later["offline_version"] == version + 1


def test_importance_ranks_the_planted_feature_first_and_keeps_logged_scores(store, tmp_path):
    from fstore.api import create_app
    from fstore.ops.importance import analyze

    rng = np.random.default_rng(3)
    signal, noise = rng.normal(size=USERS), rng.normal(size=USERS)
    frame = pd.DataFrame({"user_id": np.arange(USERS), "event_timestamp": [T0 + timedelta(hours=6)] * USERS,
                          "x": noise, "cat": rng.choice(["a", "b", "c"], USERS), "s": signal})
    make_set(store, write(tmp_path / "src", [frame]),
             extra=({"name": "signal", "data_type": "float", "transformation": "s"},))
    run_day(store, 0)
    labels = pd.DataFrame({"user_id": np.arange(USERS), "event_timestamp": [T0 + DAY - timedelta(minutes=1)] * USERS,
                           "churned": (signal + 0.5 * rng.normal(size=USERS) > 0).astype(int)})
    store.get_historical_features(entity_df=labels, features=["q:x", "q:cat", "q:signal"], save_as="churn").to_df()

    spark = store.settings.compute_engine == "spark"
    result = analyze(store, "churn", "churned", methods=("mutual_information", "gbt") if spark else ("mutual_information",))
    mi = result["methods"]["mutual_information"]
    assert mi[0]["feature"] == "q__signal" and mi[0]["score"] > 10 * max(m["score"] for m in mi[1:])
    if spark:
        assert result["methods"]["gbt"][0]["feature"] == "q__signal"
    client = create_app(store=store).test_client()
    logged = client.post("/api/v1/training-sets/churn/importance",
                         json={"label": "churned", "method": "shap", "scores": {"q__signal": 0.9, "q__x": 0.05}})
    assert logged.status_code == 200, logged.get_json()
    shown = {(i["label"], i["method"]): i["scores"] for i in logged.get_json()["importances"]}
    assert shown[("churned", "shap")] == [{"feature": "q__signal", "score": 0.9}, {"feature": "q__x", "score": 0.05}]
    assert shown[("churned", "mutual_information")][0]["feature"] == "q__signal"
    refused = client.post("/api/v1/training-sets/churn/importance",
                          json={"label": "churned", "method": "shap", "scores": {"nope": 1.0}})
    assert refused.status_code == 422 and "nope" in refused.get_json()["error"]["message"]
