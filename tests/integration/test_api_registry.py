"""The registry REST API on SQLite and the real PostgreSQL: the seed's bodies, CRUD, versions, search,
and every kind of bad input — each rejected write leaving the registry exactly as it was."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from fstore.api import create_app
from fstore.store import FeatureStore

SEED_SET = {
    "name": "user_profile",
    "description": "User demographic and account features",
    "entities": ["user_id"],
    "source_type": "batch",
    "offline_enabled": True,
    "online_enabled": True,
    "materialization_schedule": "0 * * * *",
}
SEED_FEATURES = [
    {"name": "user_age", "feature_set_id": "user_profile", "description": "Age of user in years", "data_type": "int",
     "transformation": "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))", "dialect": "postgres",
     "validation_rules": {"min_value": 0, "max_value": 150}},
    {"name": "account_balance", "feature_set_id": "user_profile", "description": "Current account balance",
     "data_type": "float", "transformation": "account_balance", "validation_rules": {"min_value": 0}},
    {"name": "user_segment", "feature_set_id": "user_profile", "description": "Customer segment", "data_type": "string",
     "transformation": "user_segment", "validation_rules": {"allowed_values": ["premium", "standard", "basic"]}},
    {"name": "purchases_last_30d", "feature_set_id": "user_profile", "description": "Purchases in the last 30 days",
     "data_type": "int", "dialect": "postgres",
     "transformation": "COUNT(*) OVER (PARTITION BY user_id ORDER BY timestamp "
                       "RANGE BETWEEN INTERVAL '30 days' PRECEDING AND CURRENT ROW)"},
    {"name": "purchase_frequency", "feature_set_id": "user_profile", "description": "Purchases per day since signup",
     "data_type": "float", "transformation": "purchases_last_30d / NULLIF(days_since_signup, 0)",
     "source_features": ["purchases_last_30d"]},
]


@pytest.fixture()
def source_path(tmp_path) -> str:
    """A tiny parquet source with the columns the seed's features read."""
    path = tmp_path / "user_events.parquet"
    pd.DataFrame({
        "user_id": [1001, 1001, 1002],
        "timestamp": pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-10T00:00:00Z", "2024-01-05T00:00:00Z"]).astype("datetime64[us, UTC]"),
        "date_of_birth": pd.to_datetime(["1990-05-01", "1990-05-01", "1985-02-28"]).date,
        "account_balance": [10.5, 20.0, 0.0],
        "user_segment": ["premium", "premium", "basic"],
        "days_since_signup": [10, 19, 0],
    }).to_parquet(path, index=False)
    return str(path)


@pytest.fixture()
def store(any_registry_settings, spark):
    store = FeatureStore(any_registry_settings.with_(max_body_bytes=8192), auto_upgrade=True).use_spark(spark)
    yield store
    store.close()


@pytest.fixture()
def client(store):
    return create_app(store=store).test_client()


def source_of(path: str) -> dict:
    return {"path": path, "format": "parquet", "timestamp_column": "timestamp"}


@pytest.fixture()
def seeded(client, source_path):
    """The seed's feature set with its five features inline (one request, one compile check)."""
    body = {**SEED_SET, "source": source_of(source_path), "features": SEED_FEATURES}
    response = client.post("/api/v1/feature-sets", json=body, headers={"X-Actor": "alice"})
    assert response.status_code == 201, response.get_json()
    return client


def snapshot(client) -> str:
    """Everything the registry API can show, as one comparable string."""
    parts = {}
    for kind in ("entities", "feature-sets", "features"):
        listing = client.get(f"/api/v1/{kind}?limit=500").get_json()
        parts[kind] = listing
        if kind != "entities":
            parts[f"{kind}-versions"] = [client.get(f"/api/v1/{kind}/{item['id']}/versions").get_json()
                                         for item in listing["items"]]
    return json.dumps(parts, sort_keys=True)


def test_seed_bodies_are_accepted_and_readable(client, source_path):
    """The seed's requests one by one, as written: the set, then each feature naming its set."""
    response = client.post("/api/v1/feature-sets", json={**SEED_SET, "source": source_of(source_path)},
                           headers={"X-Actor": "alice"})
    assert response.status_code == 201, response.get_json()
    for feature in SEED_FEATURES:
        response = client.post("/api/v1/features", json=feature, headers={"X-Actor": "alice"})
        assert response.status_code == 201, (feature["name"], response.get_json())
    by_name = client.get("/api/v1/feature-sets/user_profile").get_json()
    by_id = client.get(f"/api/v1/feature-sets/{by_name['id']}").get_json()
    assert by_name == by_id
    assert by_name["entities"] == ["user_id"]
    assert by_name["materialization_schedule"] == "0 * * * *"
    assert sorted(by_name["features"]) == sorted(f["name"] for f in SEED_FEATURES)
    feature = client.get("/api/v1/features/user_age").get_json()
    assert feature["transformation"] == SEED_FEATURES[0]["transformation"]
    assert feature["feature_set"] == "user_profile"
    frequency = client.get("/api/v1/features/purchase_frequency").get_json()
    assert frequency["source_features"] == ["purchases_last_30d"]
    versions = client.get("/api/v1/feature-sets/user_profile/versions").get_json()["items"]
    assert [v["version"] for v in versions] == list(range(1, len(SEED_FEATURES) + 2))
    assert {v["created_by"] for v in versions} == {"alice"}
    sql = client.get("/api/v1/feature-sets/user_profile/compile").get_json()["sql"]
    assert "purchases_last_30d" in sql


def test_feature_set_id_takes_an_id(client):
    created = client.post("/api/v1/feature-sets", json=SEED_SET)
    assert created.status_code == 201
    assert created.headers["Location"] == f"/api/v1/feature-sets/{created.get_json()['id']}"
    body = {**SEED_FEATURES[1], "feature_set_id": created.get_json()["id"]}
    response = client.post("/api/v1/features", json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["feature_set"] == "user_profile"


def test_list_filters_and_pagination(seeded):
    client = seeded
    page = client.get("/api/v1/features?feature_set=user_profile&limit=2&offset=1").get_json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1 and len(page["items"]) == 2
    floats = client.get("/api/v1/features?data_type=float").get_json()
    assert sorted(i["name"] for i in floats["items"]) == ["account_balance", "purchase_frequency"]
    assert client.get("/api/v1/features?entity=user_id").get_json()["total"] == 5
    assert client.get("/api/v1/features?q=segment").get_json()["items"][0]["name"] == "user_segment"
    assert client.get("/api/v1/feature-sets?entity=user_id").get_json()["total"] == 1
    assert client.get("/api/v1/feature-sets?owner=nobody").get_json()["total"] == 0
    assert client.get("/api/v1/entities?q=user").get_json()["total"] == 1
    found = client.get("/api/v1/search?q=balance").get_json()
    assert [(i["kind"], i["name"]) for i in found["items"]] == [("feature", "account_balance")]
    only_sets = client.get("/api/v1/search?q=user&kinds=feature_set").get_json()
    assert {i["kind"] for i in only_sets["items"]} == {"feature_set"}


def test_patch_makes_new_versions_and_delete(seeded):
    client = seeded
    before = client.get("/api/v1/feature-sets/user_profile").get_json()["version"]
    response = client.patch("/api/v1/features/account_balance", json={"description": "balance in EUR"},
                            headers={"X-Actor": "bob"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["version"] == 2
    versions = client.get("/api/v1/features/account_balance/versions").get_json()["items"]
    assert [v["version"] for v in versions] == [1, 2] and versions[-1]["created_by"] == "bob"
    assert client.get("/api/v1/features/account_balance?version=1").get_json()["description"] == "Current account balance"
    assert client.get("/api/v1/feature-sets/user_profile").get_json()["version"] == before + 1
    response = client.patch("/api/v1/feature-sets/user_profile", json={"materialization_schedule": "*/5 * * * *"})
    assert response.status_code == 200 and response.get_json()["version"] == before + 2
    assert client.get(f"/api/v1/feature-sets/user_profile?version={before}").get_json()["materialization_schedule"] == "0 * * * *"

    assert client.delete("/api/v1/features/user_segment").status_code == 204
    assert client.get("/api/v1/features/user_segment").status_code == 404
    assert client.delete("/api/v1/feature-sets/user_profile").status_code == 204
    assert client.get("/api/v1/feature-sets/user_profile").status_code == 404


def test_entity_crud(client):
    created = client.post("/api/v1/entities", json={"name": "merchant", "join_keys": ["merchant_id"], "value_type": "int"})
    assert created.status_code == 201, created.get_json()
    assert client.get("/api/v1/entities/merchant").get_json()["join_keys"] == ["merchant_id"]
    patched = client.patch("/api/v1/entities/merchant", json={"description": "a shop"}, headers={"X-Actor": "eve"})
    assert patched.status_code == 200 and patched.get_json()["description"] == "a shop"
    versions = client.get("/api/v1/entities/merchant/versions").get_json()["items"]
    assert [(v["version"], v["created_by"]) for v in versions] == [(1, ""), (2, "eve")]
    assert versions[1]["changes"] == [{"field": "description", "old": "", "new": "a shop"}]
    assert versions[0]["spec"]["description"] == ""
    assert client.delete("/api/v1/entities/merchant").status_code == 204
    assert client.get("/api/v1/entities/merchant").status_code == 404


BAD_WRITES = [
    ("malformed_json", "post", "/api/v1/feature-sets", {"data": '{"name": "x",', "content_type": "application/json"}, 400, None),
    ("nan_in_json", "post", "/api/v1/entities", {"data": '{"name": NaN}', "content_type": "application/json"}, 400, None),
    ("wrong_content_type", "post", "/api/v1/feature-sets", {"data": "name=x", "content_type": "text/plain"}, 415, None),
    ("form_body", "post", "/api/v1/entities", {"data": {"name": "x"}}, 415, None),
    ("body_not_object", "post", "/api/v1/features", {"json": ["user_age"]}, 422, None),
    ("missing_name", "post", "/api/v1/feature-sets", {"json": {"entities": ["user_id"]}}, 422, "name"),
    ("unknown_field", "post", "/api/v1/feature-sets", {"json": {**SEED_SET, "name": "x", "colour": "red"}}, 422, "colour"),
    ("wrong_type", "post", "/api/v1/feature-sets", {"json": {**SEED_SET, "name": "x", "entities": 5}}, 422, "entities"),
    ("wrong_bool", "post", "/api/v1/feature-sets", {"json": {**SEED_SET, "name": "x", "online_enabled": "yes"}}, 422, "online_enabled"),
    ("duplicate_set", "post", "/api/v1/feature-sets", {"json": SEED_SET}, 409, "name"),
    ("invalid_cron", "post", "/api/v1/feature-sets", {"json": {**SEED_SET, "name": "x", "materialization_schedule": "every hour"}},
     422, "materialization_schedule"),
    ("injection_name", "post", "/api/v1/feature-sets", {"json": {**SEED_SET, "name": "x; DROP TABLE features"}}, 422, "name"),
    ("bad_entity_name", "post", "/api/v1/entities", {"json": {"name": "user id"}}, 422, "name"),
    ("duplicate_feature", "post", "/api/v1/features", {"json": SEED_FEATURES[0]}, 409, "name"),
    ("bad_data_type", "post", "/api/v1/features", {"json": {**SEED_FEATURES[1], "name": "x", "data_type": "money"}}, 422, "data_type"),
    ("missing_data_type", "post", "/api/v1/features", {"json": {"name": "x", "feature_set_id": "user_profile",
                                                              "transformation": "account_balance"}}, 422, "data_type"),
    ("bad_sql", "post", "/api/v1/features", {"json": {**SEED_FEATURES[1], "name": "x", "transformation": "no_such_column + 1"}},
     422, "transformation"),
    ("patch_bad_cron", "patch", "/api/v1/feature-sets/user_profile", {"json": {"materialization_schedule": "61 * * * *"}},
     422, "materialization_schedule"),
    ("patch_wrong_type", "patch", "/api/v1/features/user_age", {"json": {"description": 5}}, 422, "description"),
    ("patch_unknown_set", "patch", "/api/v1/feature-sets/nope", {"json": {"description": "x"}}, 404, None),
    ("delete_depended_on", "delete", "/api/v1/features/purchases_last_30d", {}, 409, None),
    ("delete_used_entity", "delete", "/api/v1/entities/user_id", {}, 409, None),
    ("delete_unknown", "delete", "/api/v1/features/nope", {}, 404, None),
    ("oversized", "post", "/api/v1/entities", {"json": {"name": "x", "description": "d" * 10000}}, 413, None),
    ("long_actor", "post", "/api/v1/entities", {"json": {"name": "x"}, "headers": {"X-Actor": "a" * 500}}, 422, "X-Actor"),
]


@pytest.mark.parametrize(("case", "method", "url", "kwargs", "status", "field"), BAD_WRITES, ids=[c[0] for c in BAD_WRITES])
def test_rejected_write_names_the_problem_and_changes_nothing(seeded, case, method, url, kwargs, status, field):
    client = seeded
    before = snapshot(client)
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["message"] and error["code"]
    if field is not None:
        assert error["field"] == field, error
    assert snapshot(client) == before


@pytest.mark.parametrize(("case", "url", "status", "field"), [
    ("unknown_feature_set_ref", "/api/v1/feature-sets/nope", 404, None),
    ("unknown_feature", "/api/v1/features/nope", 404, None),
    ("unknown_entity", "/api/v1/entities/42", 404, None),
    ("unknown_version", "/api/v1/feature-sets/user_profile?version=99", 404, None),
    ("limit_zero", "/api/v1/features?limit=0", 422, "limit"),
    ("limit_negative", "/api/v1/entities?limit=-1", 422, "limit"),
    ("limit_text", "/api/v1/feature-sets?limit=ten", 422, "limit"),
    ("limit_huge", "/api/v1/features?limit=50000", 422, "limit"),
    ("offset_negative", "/api/v1/features?offset=-5", 422, "offset"),
    ("unknown_param", "/api/v1/features?colour=red", 422, "colour"),
    ("search_without_q", "/api/v1/search", 422, "q"),
    ("search_bad_kind", "/api/v1/search?q=x&kinds=tables", 422, "kinds"),
    ("bad_version", "/api/v1/features/user_age?version=abc", 422, "version"),
])
def test_bad_reads(seeded, case, url, status, field):
    response = seeded.get(url)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field, error


def test_unknown_feature_set_reference_in_feature(seeded):
    before = snapshot(seeded)
    response = seeded.post("/api/v1/features", json={**SEED_FEATURES[1], "feature_set_id": "nope"})
    assert response.status_code in (404, 422), response.get_json()
    assert "nope" in response.get_json()["error"]["message"]
    assert snapshot(seeded) == before


def test_entity_versions_by_query(client):
    client.post("/api/v1/entities", json={"name": "merchant", "join_keys": ["merchant_id"], "description": "a shop"})
    client.patch("/api/v1/entities/merchant", json={"description": "a store"})
    first = client.get("/api/v1/entities/merchant?version=1")
    assert first.status_code == 200, first.get_json()
    assert (first.get_json()["version"], first.get_json()["description"]) == (1, "a shop")
    assert client.get("/api/v1/entities/merchant?version=2").get_json() == client.get("/api/v1/entities/merchant").get_json()
    missing = client.get("/api/v1/entities/merchant?version=99")
    assert missing.status_code == 404 and "no version 99" in missing.get_json()["error"]["message"]
    for bad in ("abc", "0"):
        response = client.get(f"/api/v1/entities/merchant?version={bad}")
        assert response.status_code == 422 and response.get_json()["error"]["field"] == "version", response.get_json()


@pytest.mark.parametrize(("method", "url"), [
    ("get", "/api/v1/entities/user_id?bogus=1"),
    ("get", "/api/v1/entities/user_id/versions?bogus=1"),
    ("get", "/api/v1/feature-sets/user_profile/versions?bogus=1"),
    ("get", "/monitoring/data-freshness?bogus=1"),
    ("delete", "/api/v1/feature-sets/user_profile?bogus=1"),
    ("delete", "/api/v1/feature-sets/user_profile?force=1"),
    ("delete", "/api/v1/entities/user_id?bogus=1"),
])
def test_unknown_query_parameters_are_refused_and_change_nothing(seeded, method, url):
    before = snapshot(seeded)
    response = getattr(seeded, method)(url)
    assert response.status_code == 422, response.get_data(as_text=True)
    name = url.rsplit("?", 1)[1].split("=")[0]
    assert response.get_json()["error"] == {"code": "invalid", "message": f"unknown field {name}", "field": name}
    assert snapshot(seeded) == before


def test_text_that_is_not_unicode_is_refused_and_stores_nothing(seeded):
    before = snapshot(seeded)
    response = seeded.post("/api/v1/entities", data=rb'{"name": "x11", "join_keys": ["a"], "description": "\ud800"}',
                           content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert "not valid Unicode" in error["message"] and error["field"] == "description", error
    patch = seeded.patch("/api/v1/feature-sets/user_profile", data=rb'{"description": "\udfff"}',
                         content_type="application/json")
    assert patch.status_code == 400, patch.get_data(as_text=True)
    assert snapshot(seeded) == before
