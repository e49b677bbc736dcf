"""The online endpoint's fast path (``fstore.api.fast_online``) answers exactly as the Flask view would.

Every request below goes once through the whole app (fast path first) and once
through Flask alone, on the real Redis and on a real Redis Cluster; status and body must agree (apart from the
measured latency). Requests the fast path must not answer itself (errors, keys
limited by grants) are checked to reach Flask.
"""
from __future__ import annotations

import json

import pytest
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Response

from fstore.api import create_app
from fstore.api.fast_online import OnlineFastPath
from fstore.store import FeatureStore
from tests.integration.test_security_support import headers, make_keys, seed

URL = "/api/v1/serving/online"
GOOD = {"feature_sets": ["payments"], "entities": {"user_id": [1, 2]}, "features": ["amount", "risk_score"]}


@pytest.fixture()
def served(settings, any_redis_url, tmp_path):
    store = FeatureStore(settings.with_(auth_enabled=True, redis_url=any_redis_url), auto_upgrade=True)
    seed(store, str(tmp_path))
    keys = make_keys(store)
    app = create_app(store=store)
    security = app.extensions["fstore_security"]
    security.usage.stop()  # keep recorded usage in memory, where the test can see it
    yield app, keys
    store.close()


def _comparable(response) -> tuple[int, object]:
    body = json.loads(response.get_data())
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        body["metadata"].pop("latency_ms", None)
    return response.status_code, body


def _both(app, **request):
    fast = app.wsgi_app
    assert isinstance(fast, OnlineFastPath)
    whole = Client(app, Response).post(URL, **request)
    flask_only = Client(fast.app, Response).post(URL, **request)
    return whole, flask_only


CASES = {
    "bearer key": lambda k: {"json": GOOD, "headers": headers(k["serve_online"])},
    "x-api-key": lambda k: {"json": GOOD, "headers": headers(k["serve_online"], "x-api-key")},
    "qualified names, rows": lambda k: {"json": {"entities": [{"user_id": 1}], "features": ["payments:amount"]},
                                        "headers": headers(k["admin"])},
    "grant limited to the set": lambda k: {"json": GOOD, "headers": headers(k["payments_only"])},
    "grant lacks a feature": lambda k: {"json": GOOD, "headers": headers(k["amount_only"])},
    "no key": lambda k: {"json": GOOD},
    "wrong key": lambda k: {"json": GOOD, "headers": headers("fsk_" + "0" * 43)},
    "wrong scope": lambda k: {"json": GOOD, "headers": headers(k["read_registry"])},
    "revoked key": lambda k: {"json": GOOD, "headers": headers(k["revoked"])},
    "not JSON": lambda k: {"data": b"{nope", "content_type": "application/json", "headers": headers(k["admin"])},
    "wrong content type": lambda k: {"data": json.dumps(GOOD), "content_type": "text/plain",
                                     "headers": headers(k["admin"])},
    "a list body": lambda k: {"json": [GOOD], "headers": headers(k["admin"])},
    "unknown field": lambda k: {"json": {**GOOD, "extra": 1}, "headers": headers(k["admin"])},
    "features not a list": lambda k: {"json": {**GOOD, "features": "amount"}, "headers": headers(k["admin"])},
    "unknown feature": lambda k: {"json": {**GOOD, "features": ["nope"]}, "headers": headers(k["admin"])},
    "unknown entity key": lambda k: {"json": {**GOOD, "entities": {"merchant_id": [1]}}, "headers": headers(k["admin"])},
    "NaN in the body": lambda k: {"data": b'{"entities": {"user_id": [NaN]}, "features": ["amount"]}',
                                  "content_type": "application/json", "headers": headers(k["admin"])},
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_answers_as_flask_does(served, case):
    app, keys = served
    whole, flask_only = _both(app, **CASES[case](keys))
    assert _comparable(whole) == _comparable(flask_only)
    assert whole.headers["Content-Type"] == "application/json"


def test_fast_path_serves_good_requests_and_hands_the_rest_to_flask(served):
    app, keys = served
    fast: OnlineFastPath = app.wsgi_app

    def answered_here(**request) -> bool:
        environ = EnvironBuilder(path=URL, method="POST", **request).get_environ()
        body = fast._read_body(environ)
        return body is not None and fast._answer(environ, body, 0.0) is not None

    assert answered_here(json=GOOD, headers=headers(keys["serve_online"]))
    assert not answered_here(json=GOOD)  # no key: Flask answers 401
    assert not answered_here(json=GOOD, headers=headers(keys["payments_only"]))  # grant filtering lives in Flask
    assert not answered_here(json={**GOOD, "features": ["nope"]}, headers=headers(keys["admin"]))


def test_fast_path_records_metrics_and_usage(served):
    from prometheus_client import REGISTRY

    app, keys = served
    security = app.extensions["fstore_security"]
    labels = {"endpoint": URL, "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("fstore_http_requests_total", labels) or 0.0
    pending = len(security.usage._pending)
    response = Client(app, Response).post(URL, json=GOOD, headers=headers(keys["serve_online"]))
    assert response.status_code == 200
    assert REGISTRY.get_sample_value("fstore_http_requests_total", labels) == before + 1
    assert len(security.usage._pending) == pending + 1
    _, endpoint, api_key, asks, coverage, latency_ms = security.usage._pending[-1]
    assert (endpoint, asks) == ("online", (tuple(GOOD["features"]), tuple(GOOD["feature_sets"])))
    assert keys["serve_online"].startswith(api_key) and api_key
    assert response.json["features"]["1"] == {"amount": 5.0, "risk_score": 0.1}
    # what the answer found, counted by serving, not the answer to parse again
    assert (coverage.entities, coverage.found, coverage.cache_hit) == (
        len(response.json["features"]), {f: sum(status[f] == "present" and response.json["features"][e][f] is not None
                                                for e, status in response.json["statuses"].items())
                                         for f in GOOD["features"]}, False)
    assert latency_ms > 0
