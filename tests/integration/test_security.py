"""Authentication, scopes and grants over the real app (Flask test client, real registry)."""
from __future__ import annotations

import json

import pytest

from fstore.ops import auth
from fstore.api import create_app
from fstore.api.security import is_local_bind
from fstore.core.settings import Settings
from test_security_support import client, headers, keys, ops_app, ops_store  # noqa: F401 - fixtures

HEADER_FORMS = ("bearer", "x-api-key")

# (method, path, JSON body, scope needed; None = any valid key)
ENDPOINTS = [
    ("GET", "/api/v1/entities", None, "read_registry"),
    ("GET", "/api/v1/feature-sets/payments", None, "read_registry"),
    ("GET", "/api/v1/search?q=a", None, "read_registry"),
    ("GET", "/api/v1/runs/no-such-run", None, "read_registry"),
    ("POST", "/api/v1/entities", {"name": "merchant", "join_keys": ["merchant_id"]}, "write_registry"),
    ("PATCH", "/api/v1/feature-sets/payments?allow_missing_sources=true", {"description": "card payments"},
     "write_registry"),
    ("POST", "/api/v1/feature-sets/payments/materialize",
     {"start_date": "2024-02-01T00:00:00Z", "end_date": "2024-01-01T00:00:00Z"}, "materialize"),
    ("POST", "/api/v1/serving/online", {"features": ["payments:amount"], "entities": {"user_id": [1]}}, "serve_online"),
    ("POST", "/api/v1/serving/historical", {"features": ["payments:amount"]}, "serve_historical"),
    ("GET", "/api/v1/serving/jobs/no-such-job", None, "serve_historical"),
    ("POST", "/api/v1/push", {"feature_set": "payments", "rows": [{"user_id": 1}]}, "push"),
    ("GET", "/api/v1/keys", None, "admin"),
    ("POST", "/api/v1/keys", {"owner": "someone", "scopes": ["read_registry"]}, "admin"),
    ("GET", "/api/v1/audit", None, "admin"),
    ("POST", "/api/v1/feature-sets/payments/vacuum", {"dry_run": True}, "admin"),
    ("GET", "/monitoring/metrics", None, "read_registry"),
    ("GET", "/monitoring/data-freshness", None, "read_registry"),
    ("GET", "/monitoring/usage", None, "admin"),
    ("GET", "/ready", None, None),
]


def call(client, method, path, body, hdrs):
    return client.open(path, method=method, json=body, headers=hdrs)


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize(("case", "hdrs"), [
    ("no header", {}),
    ("unknown bearer key", {"Authorization": "Bearer fsk_not_a_real_key_at_all_0000000000000000000"}),
    ("unknown X-API-Key", {"X-API-Key": "fsk_not_a_real_key_at_all_0000000000000000000"}),
    ("other scheme", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ("empty bearer", {"Authorization": "Bearer "}),
    ("expired key", "expired"),
    ("revoked key", "revoked"),
])
def test_missing_or_wrong_key_is_401_that_reveals_nothing(client, keys, case, hdrs):
    if isinstance(hdrs, str):
        hdrs = headers(keys[hdrs])
    for method, path, body, _ in ENDPOINTS:
        response = call(client, method, path, body, hdrs)
        if path == "/ready" and not hdrs:  # a probe without a key: the status, no details (test_security_api)
            assert response.get_json() == {"status": "ready"}, response.get_json()
            continue
        assert response.status_code == 401, (case, method, path, response.get_json())
        assert response.get_json() == {"error": {"code": "unauthorized", "message": "missing or invalid API key",
                                                 "field": None}}
    assert client.get("/no/such/route", headers=hdrs).status_code == 401  # routes are not probed without a key


@pytest.mark.parametrize(("method", "path", "body", "needed"), ENDPOINTS)
@pytest.mark.parametrize("form", HEADER_FORMS)
def test_scope_matrix(client, keys, method, path, body, needed, form):
    for scope in auth.SCOPES:
        response = call(client, method, path, body, headers(keys[scope], form))
        allowed = needed is None or scope in (needed, "admin")
        if allowed:
            assert response.status_code not in (401, 403), (scope, response.get_json())
        else:
            assert response.status_code == 403, (scope, response.status_code)
            error = response.get_json()["error"]
            assert error["code"] == "forbidden" and needed in error["message"], error


def test_admin_endpoints_need_admin_even_for_every_other_scope(ops_store, client):
    with ops_store.transaction() as s:
        almost = auth.create_key(s, owner="almost", scopes=[s_ for s_ in auth.SCOPES if s_ != "admin"])["key"]
    for path in ("/api/v1/keys", "/api/v1/audit", "/monitoring/usage"):
        assert client.get(path, headers=headers(almost)).status_code == 403


# -- grants --------------------------------------------------------------------------------------

def names(items, kind=None):
    return sorted((i.get("kind", kind), i.get("feature_set"), i["name"]) for i in items)


def test_a_set_grant_hides_other_sets_in_lists_and_search(client, keys):
    h = headers(keys["payments_only"])
    sets = client.get("/api/v1/feature-sets", headers=h).get_json()
    assert [i["name"] for i in sets["items"]] == ["payments"] and sets["total"] == 1
    features = client.get("/api/v1/features?limit=100", headers=h).get_json()
    assert sorted(i["name"] for i in features["items"]) == ["amount", "risk_score"]
    assert {i["feature_set"] for i in features["items"]} == {"payments"} and features["total"] == 2
    for text in ("a", "profile", "age", "segment"):
        found = client.get(f"/api/v1/search?q={text}", headers=h).get_json()
        assert "profile" not in str(found) and "segment" not in str(found), (text, found)
    # An unrestricted key sees both.
    all_sets = client.get("/api/v1/feature-sets", headers=headers(keys["read_registry"])).get_json()
    assert sorted(i["name"] for i in all_sets["items"]) == ["payments", "profile"]


# A name the key cannot see answers exactly as a name that does not exist ({set}/{feature} → profile/age, then
# nosuchset/nosuchfeature): a restricted key cannot enumerate hidden names.
HIDDEN_REQUESTS = [
    ("GET", "/api/v1/feature-sets/{set}", None),
    ("GET", "/api/v1/feature-sets/{set}/versions", None),
    ("GET", "/api/v1/features/{feature}", None),
    ("GET", "/api/v1/features?feature_set={set}", None),
    ("PATCH", "/api/v1/feature-sets/{set}", {"description": "x"}),
    ("POST", "/api/v1/features", {"name": "height", "feature_set_id": "{set}", "data_type": "float",
                                  "transformation": "height"}),
    ("POST", "/api/v1/features", {"name": "height", "feature_set": "{set}", "data_type": "float",
                                  "transformation": "height"}),
    ("POST", "/api/v1/feature-sets/{set}/materialize",
     {"start_date": "2024-01-01T00:00:00Z", "end_date": "2024-01-02T00:00:00Z"}),
    ("POST", "/api/v1/serving/online", {"features": ["{set}:{feature}"], "entities": {"user_id": [1]}}),
    ("POST", "/api/v1/serving/online", {"features": ["{feature}"], "entities": {"user_id": [1]}}),
    ("POST", "/api/v1/serving/online", {"feature_sets": ["{set}"], "features": ["{feature}"],
                                        "entities": {"user_id": [1]}}),
]


def fill(value, set_name, feature):
    text = json.dumps(value).replace("{set}", set_name).replace("{feature}", feature)
    return value if value is None else json.loads(text) if not isinstance(value, str) else json.loads(text)


@pytest.mark.parametrize(("method", "path", "body"), HIDDEN_REQUESTS)
def test_a_request_naming_anything_outside_the_grant_answers_as_for_an_unknown_name(client, keys, method, path, body):
    h = headers(keys["payments_only"], "x-api-key")
    hidden = call(client, method, fill(path, "profile", "age"), fill(body, "profile", "age"), h)
    unknown = call(client, method, fill(path, "nosuchset", "nosuchfeature"), fill(body, "nosuchset", "nosuchfeature"), h)
    assert hidden.status_code == unknown.status_code == 404, (hidden.get_json(), unknown.get_json())
    renamed = unknown.get_data(as_text=True).replace("nosuchset", "profile").replace("nosuchfeature", "age")
    assert hidden.get_data(as_text=True) == renamed


def test_feature_id_outside_the_grant_answers_as_an_unknown_id(client, keys):
    age = client.get("/api/v1/features/age", headers=headers(keys["admin"])).get_json()
    h = headers(keys["payments_only"])
    hidden = client.get(f"/api/v1/features/{age['id']}", headers=h)
    unknown = client.get("/api/v1/features/999999", headers=h)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.get_json() == {"error": {**unknown.get_json()["error"],
                                           "message": unknown.get_json()["error"]["message"].replace("999999", str(age["id"]))}}


def test_inside_the_grant_works(client, keys):
    h = headers(keys["payments_only"])
    assert client.get("/api/v1/feature-sets/payments", headers=h).status_code == 200
    response = client.post("/api/v1/serving/online", headers=h,
                           json={"features": ["payments:amount", "risk_score"], "entities": {"user_id": [1, 2]}})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["features"]["1"]["payments:amount"] == 5.0


def test_a_feature_grant_hides_the_sets_other_features(client, keys):
    h = headers(keys["amount_only"])
    payments = client.get("/api/v1/feature-sets/payments", headers=h).get_json()
    assert payments["features"] == ["amount"]
    listed = client.get("/api/v1/features", headers=h).get_json()
    assert [(i["feature_set"], i["name"]) for i in listed["items"]] == [("payments", "amount")]
    ok = client.post("/api/v1/serving/online", headers=h,
                     json={"features": ["payments:amount"], "entities": {"user_id": [1]}})
    assert ok.status_code == 200
    hidden = client.post("/api/v1/serving/online", headers=h,
                         json={"features": ["payments:amount", "payments:risk_score"], "entities": {"user_id": [1]}})
    unknown = client.post("/api/v1/serving/online", headers=h,
                          json={"features": ["payments:amount", "payments:nosuch"], "entities": {"user_id": [1]}})
    assert hidden.status_code == unknown.status_code == 404, hidden.get_json()
    assert hidden.get_data(as_text=True) == unknown.get_data(as_text=True).replace("nosuch", "risk_score")
    # A feature grant does not allow changing the whole set.
    patch = client.patch("/api/v1/feature-sets/payments", headers=h, json={"description": "x"})
    assert patch.status_code == 403


def test_restricted_key_sees_only_its_sets_in_monitoring(client, keys):
    h = headers(keys["payments_only"])
    freshness = client.get("/monitoring/data-freshness", headers=h).get_json()
    assert [i["feature_set"] for i in freshness["items"]] == ["payments"]
    client.post("/api/v1/serving/online", headers=headers(keys["admin"]),
                json={"features": ["profile:age"], "entities": {"user_id": [1]}})
    text = client.get("/monitoring/metrics", headers=h).get_data(as_text=True)
    assert 'feature_set="payments"' in text and 'feature_set="profile"' not in text


# -- key lifecycle through the API ---------------------------------------------------------------

def test_revoking_a_key_through_the_api_stops_it_at_once(client, keys):
    admin = headers(keys["admin"])
    created = client.post("/api/v1/keys", headers=admin, json={"owner": "ci", "scopes": ["read_registry"]})
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    secret, key_id = created.get_json()["key"], created.get_json()["id"]
    assert client.get("/api/v1/entities", headers=headers(secret)).status_code == 200  # now cached as valid
    listed = client.get("/api/v1/keys", headers=admin).get_json()
    assert secret not in str(listed) and auth.hash_key(secret) not in str(listed)
    assert client.get(f"/api/v1/keys/{key_id}", headers=admin).get_json().get("key") is None
    revoked = client.delete(f"/api/v1/keys/{key_id}", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    assert client.get("/api/v1/entities", headers=headers(secret)).status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({"owner": "x", "scopes": ["root"]}, "scopes"),
    ({"owner": "x", "scopes": []}, "scopes"),
    ({"owner": "", "scopes": ["admin"]}, "owner"),
    ({"owner": "x", "scopes": ["admin"], "expires_in": "soon"}, "expires_in"),
    ({"owner": "x", "scopes": ["admin"], "feature_sets": ["not a name"]}, "feature_sets"),
    ({"owner": "x", "scopes": ["admin"], "colour": "red"}, "colour"),
])
def test_bad_key_requests_name_the_field_and_store_nothing(client, keys, body, field):
    admin = headers(keys["admin"])
    before = client.get("/api/v1/keys", headers=admin).get_json()["total"]
    response = client.post("/api/v1/keys", headers=admin, json=body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["field"] == field
    assert client.get("/api/v1/keys", headers=admin).get_json()["total"] == before


# -- when is auth on ------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "on"), [
    ({}, False),                                          # not bound (tests, in-process): off
    ({"FSTORE_BIND_HOST": "127.0.0.1:8002"}, False),
    ({"FSTORE_BIND_HOST": "localhost:8002"}, False),
    ({"FSTORE_BIND_HOST": "[::1]:8002"}, False),
    ({"FSTORE_BIND_HOST": "0.0.0.0:8002"}, True),
    ({"FSTORE_BIND_HOST": "127.0.0.1:8002,10.0.0.5:8002"}, True),
    ({"FSTORE_BIND_HOST": "unix:/run/fstore.sock"}, True),
    ({"FSTORE_BIND_HOST": "0.0.0.0:8002", "AUTH_ENABLED": "false"}, False),
    ({"FSTORE_BIND_HOST": "127.0.0.1:8002", "AUTH_ENABLED": "true"}, True),
])
def test_auth_default_follows_the_bind_address(tmp_path, env, on):
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "s"), **env})
    app = create_app(settings)
    try:
        assert app.extensions["fstore_security"].enabled is on
        assert (app.test_client().get("/api/v1/entities").status_code == 401) is on
    finally:
        app.extensions["fstore_security"].usage.stop()
        app.extensions["fstore"].close()


def test_is_local_bind():
    assert is_local_bind("127.0.0.1:1") and not is_local_bind("192.168.1.2:1")


# -- bad input through the whole app (fast path included) -----------------------------------------

def test_a_query_parameter_on_the_online_endpoint_is_refused_not_answered(client, keys):
    """The fast path answers only plain requests: Flask names the unknown parameter, as on every route."""
    good = {"features": ["payments:amount"], "entities": {"user_id": [1]}}
    h = headers(keys["serve_online"])
    assert client.post("/api/v1/serving/online", headers=h, json=good).status_code == 200
    response = client.post("/api/v1/serving/online?bogus=1", headers=h, json=good)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["field"] == "bogus"


def test_a_lone_surrogate_in_an_online_body_is_a_400_on_either_path(client, keys):
    body = rb'{"features": ["payments:amount"], "entities": {"user_id": ["\ud800"]}}'
    response = client.post("/api/v1/serving/online", headers=headers(keys["serve_online"]), data=body,
                           content_type="application/json")
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert "not valid Unicode" in error["message"] and error["field"] == "entities.user_id.0", error


@pytest.mark.parametrize(("body", "status", "field", "named"), [
    ({"feature_sets": ["nope"]}, 404, "feature_sets", "feature set 'nope'"),
    ({"feature_sets": ["payments", "nope"]}, 404, "feature_sets", "feature set 'nope'"),
    ({"features": ["nope"]}, 404, "features", "feature 'nope'"),
    ({"features": ["payments:nope"]}, 404, "features", "feature 'nope' not found in feature set 'payments'"),
    ({"features": ["profile:amount"]}, 404, "features", "feature 'amount' not found in feature set 'profile'"),
    ({"expires_in": 1000000000000000000000000000000}, 422, "expires_in", "10 years"),
    ({"expires_in": "4000d"}, 422, "expires_in", "10 years"),
])
def test_a_key_request_naming_the_unknown_or_the_absurd_stores_nothing(client, keys, body, status, field, named):
    admin = headers(keys["admin"])
    before = client.get("/api/v1/keys", headers=admin).get_json()["total"]
    response = client.post("/api/v1/keys", headers=admin, json={"owner": "x", "scopes": ["serve_online"], **body})
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == field and named in error["message"], error
    assert client.get("/api/v1/keys", headers=admin).get_json()["total"] == before


def test_a_key_granting_registered_names_is_created(client, keys):
    response = client.post("/api/v1/keys", headers=headers(keys["admin"]),
                           json={"owner": "x", "scopes": ["serve_online"], "feature_sets": ["profile"],
                                 "features": ["amount", "payments:risk_score"], "expires_in": "3650d"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["grants"] == {"feature_sets": ["profile"], "features": ["amount", "payments:risk_score"]}
