"""The audit log on SQLite and the real PostgreSQL: writes, rejected writes and key changes are recorded."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from fstore.ops import audit
from fstore.api import create_app
from fstore.store import FeatureStore
from test_security_support import headers, make_keys, seed


@pytest.fixture()
def audited(any_registry_settings, spark, tmp_path):
    store = FeatureStore(any_registry_settings.with_(auth_enabled=True), auto_upgrade=True).use_spark(spark)
    seed(store, str(tmp_path))
    keys = make_keys(store)
    app = create_app(store=store)
    yield store, app.test_client(), keys
    app.extensions["fstore_security"].usage.stop()
    store.close()


def rows(client, keys, **query):
    response = client.get("/api/v1/audit", headers=headers(keys["admin"]), query_string={"limit": 1000, **query})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["items"]


def test_writes_and_rejected_writes_are_recorded_with_who_what_where_and_outcome(audited):
    store, client, keys = audited
    ok = client.post("/api/v1/entities", headers=headers(keys["write_registry"]),
                     json={"name": "merchant", "join_keys": ["merchant_id"]}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 201
    forbidden = client.post("/api/v1/entities", headers=headers(keys["read_registry"]),
                            json={"name": "shop", "join_keys": ["shop_id"]})
    assert forbidden.status_code == 403
    duplicate = client.post("/api/v1/entities", headers=headers(keys["write_registry"]),
                            json={"name": "merchant", "join_keys": ["merchant_id"]})
    assert duplicate.status_code == 409
    no_key = client.delete("/api/v1/feature-sets/payments")
    assert no_key.status_code == 401
    reads_before = len(rows(client, keys))
    client.get("/api/v1/entities", headers=headers(keys["read_registry"]))  # reads are not audited
    items = rows(client, keys)
    assert len(items) == reads_before

    entity_rows = [r for r in items if r["action"] == "POST /api/v1/entities"]
    assert [(r["outcome"], r["detail"]["status"]) for r in entity_rows] == [("rejected", 409), ("rejected", 403), ("ok", 201)]
    created = entity_rows[-1]
    assert created["actor"].startswith("owner-write_registry (fsk_") and created["source_ip"] == "10.1.2.3"
    assert created["target"] == "/api/v1/entities" and created["detail"]["name"] == "merchant"
    assert created["at"].endswith("Z")
    assert entity_rows[1]["actor"].startswith("owner-read_registry") and "write_registry" in entity_rows[1]["detail"]["error"]["message"]
    assert entity_rows[0]["detail"]["error"]["code"] == "already_exists"
    anonymous = [r for r in items if r["action"].startswith("DELETE /api/v1/feature-sets")]
    assert anonymous and anonymous[0]["actor"] == "anonymous" and anonymous[0]["outcome"] == "rejected"
    # The rejected delete changed nothing; the rejected create stored nothing.
    assert client.get("/api/v1/feature-sets/payments", headers=headers(keys["admin"])).status_code == 200
    assert client.get("/api/v1/entities/shop", headers=headers(keys["admin"])).status_code == 404


def test_key_changes_are_recorded_through_rest_and_cli(audited, monkeypatch):
    store, client, keys = audited
    admin = headers(keys["admin"])
    created = client.post("/api/v1/keys", headers=admin, json={"owner": "bot", "scopes": ["serve_online"]}).get_json()
    client.delete(f"/api/v1/keys/{created['id']}", headers=admin)
    refused = client.post("/api/v1/keys", headers=headers(keys["write_registry"]), json={"owner": "me", "scopes": ["admin"]})
    assert refused.status_code == 403
    items = rows(client, keys, action="/api/v1/keys")
    assert [(r["action"], r["outcome"]) for r in items] == [
        ("POST /api/v1/keys", "rejected"), ("DELETE /api/v1/keys/<key_id>", "ok"), ("POST /api/v1/keys", "ok")]
    assert items[2]["detail"]["prefix"] == created["prefix"]
    assert created["key"] not in str(items)  # the secret never reaches the log

    from fstore.cli import main

    for name, value in store.settings.__dict__.items():
        if name == "database_url":
            monkeypatch.setenv("DATABASE_URL", value)
        if name == "storage_path":
            monkeypatch.setenv("STORAGE_PATH", value)
    runner = CliRunner()
    result = runner.invoke(main, ["--actor", "carol", "keys", "create", "--owner", "svc", "--scopes", "read_registry"])
    assert result.exit_code == 0, result.output
    secret = result.output.splitlines()[0]
    assert secret.startswith("fsk_") and "shown once" in result.output
    bad = runner.invoke(main, ["--actor", "carol", "keys", "revoke", "no-such-key"])
    assert bad.exit_code == 3 and "not found" in bad.output
    cli_rows = rows(client, keys, actor="carol")
    assert [(r["action"], r["outcome"]) for r in cli_rows] == [("keys revoke", "rejected"), ("keys create", "ok")]
    listed = runner.invoke(main, ["audit", "list", "--actor", "carol", "--json"])
    assert listed.exit_code == 0 and '"keys create"' in listed.output
    assert client.get("/api/v1/entities", headers=headers(secret)).status_code == 200


def test_a_write_that_fails_inside_its_transaction_is_recorded_and_changes_nothing(audited):
    store, client, keys = audited
    admin = headers(keys["admin"])
    before = client.get("/api/v1/feature-sets/payments", headers=admin).get_json()
    response = client.patch("/api/v1/feature-sets/payments", headers=admin, json={"materialization_schedule": "often"})
    assert response.status_code == 422
    assert client.get("/api/v1/feature-sets/payments", headers=admin).get_json() == before
    [row] = rows(client, keys, action="PATCH")
    assert row["outcome"] == "rejected" and row["detail"]["error"]["code"] == "invalid"
    assert audit.outcome_for_status(503) == "failed"


@pytest.mark.parametrize(("query", "field"), [
    ({"outcome": "maybe"}, "outcome"), ({"limit": 0}, "limit"), ({"since": "yesterday"}, "since"),
    ({"since": "2024-02-01", "until": "2024-01-01"}, "since"), ({"colour": "red"}, "colour"),
])
def test_bad_audit_queries_name_the_field(audited, query, field):
    _, client, keys = audited
    response = client.get("/api/v1/audit", headers=headers(keys["admin"]), query_string=query)
    assert response.status_code == 422 and response.get_json()["error"]["field"] == field, response.get_json()


def test_only_admins_read_the_audit_log(audited):
    _, client, keys = audited
    assert client.get("/api/v1/audit", headers=headers(keys["read_registry"])).status_code == 403
    assert client.get("/api/v1/audit").status_code == 401
