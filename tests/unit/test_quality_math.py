"""Drift measures, the robust z-score, the anomaly policy, mutual information and the webhook's bounded retries."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from fstore.core.errors import InvalidDefinition
from fstore.core.settings import Settings
from fstore.definitions.model import AnomalyPolicy, FeatureSet
from fstore.ops import quality
from fstore.ops.drift import band, compare, parse_baseline
from fstore.ops.importance import mutual_information


def numeric_profile(values: np.ndarray) -> dict:
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=20, range=(lo, hi))
    return {"kind": "numeric", "count": len(values), "nulls": 0, "null_rate": 0.0,
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def test_psi_bands_for_the_same_and_a_shifted_distribution():
    rng = np.random.default_rng(0)
    base = numeric_profile(rng.normal(0, 1, 20_000))
    assert compare([base], base)["psi"] == 0.0
    same = compare([base], numeric_profile(rng.normal(0, 1, 20_000)))
    assert same["psi"] < 0.1 and same["band"] == "stable" and same["ks"] < 0.05 and same["js"] < 0.01
    moved = compare([base], numeric_profile(rng.normal(1.0, 1, 20_000)))
    assert moved["psi"] > 0.25 and moved["band"] == "significant" and 0.3 < moved["ks"] < 0.45
    apart = compare([numeric_profile(np.arange(100.0))], numeric_profile(np.arange(1000.0, 1100.0)))
    assert apart["ks"] == pytest.approx(1.0) and apart["js"] == pytest.approx(1.0, abs=1e-3)
    assert (band(0.05), band(0.2), band(0.3)) == ("stable", "moderate", "significant")


def test_constant_and_categorical_features_compare():
    point = {"kind": "numeric", "count": 10, "nulls": 0, "histogram": {"edges": [3.0, 3.0], "counts": [10]}}
    assert compare([point], point)["psi"] == 0.0
    cat = lambda a, b: {"kind": "categorical", "count": a + b, "nulls": 0, "top_k": [["x", a], ["y", b]]}  # noqa: E731
    assert compare([cat(900, 100)], cat(880, 120))["psi"] < 0.1
    flipped = compare([cat(900, 100)], cat(100, 900))
    assert flipped["psi"] > 0.25 and flipped["ks"] is None


def test_baselines_parse_and_bad_ones_name_the_field():
    assert parse_baseline("previous") == ("previous", None)
    assert parse_baseline("training_set:churn") == ("training_set", "churn")
    kind, (start, end) = parse_baseline("window:2024-01-01T00:00:00Z/2024-02-01")
    assert kind == "window" and start.month == 1 and end.month == 2
    for bad in ("last", "window:2024-02-01/2024-01-01", "training_set:"):
        with pytest.raises(InvalidDefinition) as info:
            parse_baseline(bad)
        assert info.value.field == "baseline"


def test_robust_z_alerts_on_a_burst_from_zero_and_ignores_a_wobble():
    _, z = quality.robust_z([0.0] * 6, 0.4)
    assert z > 1e4
    _, z = quality.robust_z([1000, 1003, 998, 1001, 1000], 1004)
    assert abs(z) < 1
    median, z = quality.robust_z([1000, 1003, 998, 1001, 1000, 5000], 10)  # one bad run does not hide a drop
    assert median == 1000.5 and z < -6


def test_anomaly_policy_round_trips_and_refuses_bad_values():
    fs = FeatureSet.from_dict({"name": "s", "entities": ["u"], "anomaly_policy": {"on_anomaly": "fail", "window": 10}})
    assert fs.anomaly_policy == AnomalyPolicy(on_anomaly="fail", window=10)
    assert FeatureSet.from_dict(fs.to_dict()) == fs
    assert "anomaly_policy" not in FeatureSet.from_dict({"name": "s", "entities": ["u"]}).to_dict()
    for bad, field in (({"on_anomaly": "page"}, "anomaly_policy.on_anomaly"), ({"window": 1}, "anomaly_policy.window"),
                       ({"min_runs": 30}, "anomaly_policy.min_runs"), ({"warning_z": 9}, "anomaly_policy.critical_z"),
                       ({"zz": 1}, "zz")):
        with pytest.raises(InvalidDefinition) as info:
            FeatureSet.from_dict({"name": "s", "entities": ["u"], "anomaly_policy": bad})
        assert info.value.field == field


def test_mutual_information_finds_the_planted_signal():
    rng = np.random.default_rng(1)
    signal, noise = rng.normal(size=5000), rng.normal(size=5000)
    label = (signal + 0.5 * rng.normal(size=5000) > 0).astype(int)
    assert mutual_information(signal, label) > 0.2 > 0.01 > mutual_information(noise, label)
    strings = np.where(signal > 0, "hi", "lo")
    assert mutual_information(strings, label) > 0.2


def test_webhook_retries_a_bounded_number_of_times(monkeypatch):
    calls = []

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            calls.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(quality, "WEBHOOK_WAIT", 0.01)
    try:
        settings = Settings.from_env({"ALERT_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/"})
        assert quality.notify(settings, {"event": "anomaly"}) is False
        assert len(calls) == quality.WEBHOOK_TRIES == 3 and b'"anomaly"' in calls[0]
        assert quality.notify(Settings.from_env({}), {"event": "anomaly"}) is False  # no URL: nothing sent
        assert len(calls) == 3
    finally:
        server.shutdown()
        server.server_close()
