"""Security issue #20, parts 5-8, tried as an attacker through the real app with real keys.

Source secrets at rest and on every read path; what a restricted key learns from totals
and paging; small leaks (deep JSON, spoofed audit actors, 65-bit keys, ``?q=%00``,
gunicorn's HTML pages, an OpenAPI document without success bodies); readiness probes.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition
from fstore.core.settings import Settings
from fstore.definitions.secrets import REDACTED
from test_security_support import client, headers, keys, ops_app, ops_store  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-AKIA-value-that-must-never-show"


def _set_body(name: str, folder, options: dict) -> dict:
    return {"name": name, "entities": ["user"],
            "source": {"path": f"{folder}/{name}_missing", "format": "parquet", "event_timestamp_column": "ts",
                       "options": options},
            "features": [{"name": "amount", "data_type": "float", "transformation": "amount"}]}


def _registry_text(store) -> str:
    """Everything the registry holds about feature sets, as text (what a stolen database file shows)."""
    with store.engine.connect() as connection:
        rows = [[str(value) for value in row] for table in ("feature_sets", "feature_set_versions", "audit_log")
                for row in connection.execute(text(f"SELECT * FROM {table}")).all()]
    return "\n".join(" | ".join(row) for row in rows)  # every value whole (a Row's repr shortens long ones)


# -- part 5: secrets in source.options --------------------------------------------------------------

def test_source_secrets_are_encrypted_at_rest_and_redacted_on_every_read_path(ops_store, client, keys, tmp_path,
                                                                              monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FSTORE_SOURCE_PW", "resolved-password-value")
    writer, reader = headers(keys["write_registry"]), headers(keys["read_registry"])
    options = {"fs.s3a.secret.key": SECRET, "password": "${FSTORE_SOURCE_PW}", "sep": ";"}
    created = client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=writer, json=_set_body("vault", tmp_path, options))
    assert created.status_code == 201, created.get_json()
    patched = client.patch("/api/v1/feature-sets/vault?allow_missing_sources=true", headers=writer,
                           json={"source": {**created.get_json()["source"],
                                            "options": {**created.get_json()["source"]["options"], "sep": ","}}})
    assert patched.status_code == 200, patched.get_json()

    answers = {
        "create": created, "patch": patched,
        "get": client.get("/api/v1/feature-sets/vault", headers=reader),
        "get v1": client.get("/api/v1/feature-sets/vault?version=1", headers=reader),
        "list": client.get("/api/v1/feature-sets", headers=reader),
        "search": client.get("/api/v1/search?q=vault", headers=reader),
        "versions (with the diff)": client.get("/api/v1/feature-sets/vault/versions", headers=reader),
        "audit": client.get("/api/v1/audit", headers=headers(keys["admin"])),
    }
    for what, response in answers.items():
        body = response.get_data(as_text=True)
        assert response.status_code in (200, 201), (what, body)
        assert SECRET not in body and "resolved-password-value" not in body, what
    shown = answers["get"].get_json()["source"]["options"]
    assert shown == {"fs.s3a.secret.key": REDACTED, "password": "${FSTORE_SOURCE_PW}", "sep": ","}
    changes = answers["versions (with the diff)"].get_json()["items"][-1]["changes"]
    assert changes[0]["field"] == "source" and changes[0]["old"]["options"]["fs.s3a.secret.key"] == REDACTED

    # At rest: the registry rows hold ciphertext, and the key file beside the SQLite registry is private.
    at_rest = _registry_text(ops_store)
    assert SECRET not in at_rest, at_rest[max(0, at_rest.find(SECRET) - 300):at_rest.find(SECRET) + 100]
    assert "fernet:" in at_rest
    key_file = Path(ops_store.settings.secret_key_file)
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The CLI shows what the API shows.
    env = {"STORAGE_PATH": ops_store.settings.storage_path, "DATABASE_URL": ops_store.settings.database_url}
    shown_cli = CliRunner().invoke(_cli_main(), ["feature-sets", "show", "vault", "--json"], env=env,
                                   catch_exceptions=False)
    assert shown_cli.exit_code == 0 and REDACTED in shown_cli.output and SECRET not in shown_cli.output
    # No log line carries it either.
    assert not [r for r in caplog.records if SECRET in r.getMessage() or "resolved-password-value" in r.getMessage()]
    # Only the engine's input holds the plain values (the stored secret decrypted, the reference resolved).
    engine_options = ops_store.feature_set_version("vault").feature_set.source.options
    assert engine_options == {"fs.s3a.secret.key": SECRET, "password": "resolved-password-value", "sep": ","}


def _cli_main():
    from fstore.cli import main

    return main


def test_sending_back_the_redacted_marker_keeps_the_secret(ops_store, client, keys, tmp_path):
    writer = headers(keys["write_registry"])
    created = client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=writer,
                          json=_set_body("vault", tmp_path, {"token": SECRET})).get_json()
    assert created["source"]["options"] == {"token": REDACTED}
    # What GET answered, written back with another change: the secret stays as it was.
    response = client.patch("/api/v1/feature-sets/vault?allow_missing_sources=true", headers=writer,
                            json={"description": "edited", "source": created["source"]})
    assert response.status_code == 200, response.get_json()
    assert ops_store.feature_set_version("vault").feature_set.source.options == {"token": SECRET}
    # A new option cannot be the marker itself.
    refused = client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=writer,
                          json=_set_body("vault2", tmp_path, {"password": REDACTED}))
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "source.options.password"


@pytest.mark.parametrize("variable", ["DATABASE_URL", "S3_SECRET_KEY", "FSTORE_SECRET_KEY", "HOME"])
def test_a_reference_to_a_variable_outside_the_allow_list_is_refused(client, keys, tmp_path, variable):
    response = client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=headers(keys["write_registry"]),
                           json=_set_body("leak", tmp_path, {"endpoint": "https://x/${" + variable + "}"}))
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["field"] == "source.options.endpoint" and "SOURCE_ENV_ALLOW" in error["message"]
    assert client.get("/api/v1/feature-sets/leak", headers=headers(keys["admin"])).status_code == 404


def test_an_unset_reference_fails_at_run_time_naming_the_variable(ops_store, client, keys, tmp_path, monkeypatch):
    monkeypatch.delenv("FSTORE_SOURCE_MISSING", raising=False)
    response = client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=headers(keys["write_registry"]),
                           json=_set_body("later", tmp_path, {"password": "${FSTORE_SOURCE_MISSING}"}))
    assert response.status_code == 201, response.get_json()
    with pytest.raises(InvalidDefinition, match="FSTORE_SOURCE_MISSING.*not set"):
        ops_store.feature_set_version("later")


def test_a_secret_stored_in_clear_before_sealing_still_works_is_redacted_and_is_sealed_on_change(
        ops_store, client, keys, tmp_path):
    writer = headers(keys["write_registry"])
    assert client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=writer,
                       json=_set_body("old", tmp_path, {"sep": ";"})).status_code == 201
    with ops_store.transaction() as s:  # the row as an older fstore wrote it: the password in clear
        from fstore.registry.models import FeatureSetRow

        row = s.query(FeatureSetRow).filter_by(name="old").one()
        row.spec = {**row.spec, "source": {**row.spec["source"], "options": {"sep": ";", "password": SECRET}}}
    shown = client.get("/api/v1/feature-sets/old", headers=headers(keys["read_registry"])).get_json()
    assert shown["source"]["options"]["password"] == REDACTED
    assert ops_store.feature_set_version("old").feature_set.source.options["password"] == SECRET
    assert client.patch("/api/v1/feature-sets/old?allow_missing_sources=true", headers=writer,
                        json={"description": "x"}).status_code == 200
    with ops_store.engine.connect() as connection:
        spec = connection.execute(text("SELECT spec FROM feature_sets WHERE name = 'old'")).scalar()
    assert SECRET not in str(spec) and "fernet:" in str(spec)
    assert ops_store.feature_set_version("old").feature_set.source.options["password"] == SECRET


def test_postgres_registry_without_a_key_refuses_a_secret_and_with_one_seals_it(pg_settings, tmp_path):
    from cryptography.fernet import Fernet

    from fstore.store import FeatureStore

    def store_with(**env):
        return FeatureStore(Settings.from_env({"STORAGE_PATH": pg_settings.storage_path,
                                               "DATABASE_URL": pg_settings.database_url,
                                               "SOURCE_ROOTS": str(tmp_path), **env}), auto_upgrade=True)

    keyless = store_with()
    keyless.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    with pytest.raises(InvalidDefinition, match="FSTORE_SECRET_KEY") as info:
        keyless.create_feature_set(_set_body("pg", tmp_path, {"password": SECRET}), allow_missing_sources=True)
    assert info.value.field == "FSTORE_SECRET_KEY"
    # A reference needs no key.
    keyless.create_feature_set(_set_body("pgref", tmp_path, {"password": "${FSTORE_SOURCE_PG}"}),
                               allow_missing_sources=True)
    keyless.close()
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keyed = store_with(FSTORE_SECRET_KEY=old_key)
    keyed.create_feature_set(_set_body("pg", tmp_path, {"password": SECRET}), allow_missing_sources=True)
    assert SECRET not in _registry_text(keyed)
    keyed.close()
    rotated = store_with(FSTORE_SECRET_KEY=f"{new_key},{old_key}")  # rotation: the old key still decrypts
    assert rotated.feature_set_version("pg").feature_set.source.options["password"] == SECRET
    rotated.close()
    wrong = store_with(FSTORE_SECRET_KEY=new_key)
    with pytest.raises(InvalidDefinition, match="another key") as info:
        wrong.feature_set_version("pg")
    assert SECRET not in info.value.message
    wrong.close()


# -- part 6: what a restricted key learns from lists ------------------------------------------------

def test_totals_and_pages_count_only_what_a_restricted_key_sees(ops_store, client, keys, tmp_path):
    admin = headers(keys["admin"])
    for number in range(6):  # six more sets the restricted key must not learn about, even by counting
        body = _set_body(f"hidden{number}", tmp_path, {})
        body["features"] = [{"name": f"amount{number}", "data_type": "float", "transformation": "amount"}]
        assert client.post("/api/v1/feature-sets?allow_missing_sources=true", headers=admin, json=body).status_code == 201
    h = headers(keys["payments_only"])
    sets = client.get("/api/v1/feature-sets?limit=1", headers=h).get_json()
    assert [i["name"] for i in sets["items"]] == ["payments"] and sets["total"] == 1
    first = client.get("/api/v1/features?limit=1", headers=h).get_json()
    second = client.get("/api/v1/features?limit=1&offset=1", headers=h).get_json()
    assert first["total"] == second["total"] == 2
    assert [i["name"] for i in first["items"] + second["items"]] == ["amount", "risk_score"]
    assert client.get("/api/v1/features?limit=1&offset=2", headers=h).get_json() == \
        {"items": [], "total": 2, "limit": 1, "offset": 2}
    found = client.get("/api/v1/search?q=amount&limit=1", headers=h).get_json()
    assert found["total"] == 1 and [(i["kind"], i["name"]) for i in found["items"]] == [("feature", "amount")]
    features_only = client.get("/api/v1/features", headers=headers(keys["amount_only"])).get_json()
    assert features_only["total"] == 1 and [i["name"] for i in features_only["items"]] == ["amount"]
    # An unrestricted key still sees everything.
    assert client.get("/api/v1/feature-sets", headers=admin).get_json()["total"] == 8


def test_snapshots_of_every_feature_need_the_whole_set(ops_store, client):
    """Snapshots without ``features`` answer every feature of the sets: a key allowed to retrieve one feature is
    refused before anything is read, and the message names the set, not its other features."""
    from fstore.ops import auth

    with ops_store.transaction() as s:
        key = auth.create_key(s, owner="team-amount", scopes=["read_registry", "serve_historical"],
                              features=["payments:amount"])["key"]
    body = {"feature_sets": ["payments"], "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z", "every": "1d"}
    refused = client.post("/api/v1/serving/snapshots", headers=headers(key), json=body)
    assert refused.status_code == 403, refused.get_json()
    assert "risk_score" not in refused.get_data(as_text=True)


# -- part 7: smaller leaks ------------------------------------------------------------------------

def test_deeply_nested_json_from_a_restricted_key_is_a_400_not_a_500(client, keys):
    depth = 100_000
    body = '{"features": ' + "[" * depth + "]" * depth + ', "entities": {"user_id": [1]}}'
    for path in ("/api/v1/serving/online", "/api/v1/feature-sets", "/api/v1/features"):
        response = client.post(path, headers=headers(keys["payments_only"]), data=body,
                               content_type="application/json")
        assert response.status_code == 400, (path, response.status_code, response.get_data(as_text=True)[:300])
        assert response.get_json()["error"]["code"] == "bad_request"


def test_an_unauthenticated_request_cannot_choose_its_audit_actor(client, keys):
    response = client.post("/api/v1/entities", headers={"X-Actor": "the-ceo"},
                           json={"name": "merchant", "join_keys": ["merchant_id"]})
    assert response.status_code == 401
    audit = client.get("/api/v1/audit", headers=headers(keys["admin"])).get_json()["items"]
    mine = [row for row in audit if row["target"] == "/api/v1/entities"]
    assert mine and all(row["actor"] == "anonymous" and row["outcome"] == "rejected" for row in mine), mine
    assert "the-ceo" not in json.dumps(audit)


@pytest.mark.parametrize("value", [2**64, 2**63, -(2**63) - 1, 10**30, "18446744073709551616"])
def test_an_entity_key_beyond_64_bits_is_a_422_on_either_path(ops_store, client, keys, value):
    body = json.dumps({"features": ["payments:amount"], "entities": {"user_id": [1, value]}})
    for form in ("bearer", "x-api-key"):  # the fast path answers an unrestricted key; a restricted one goes to Flask
        for key in ("serve_online", "payments_only"):
            response = client.post("/api/v1/serving/online", headers=headers(keys[key], form), data=body,
                                   content_type="application/json")
            assert response.status_code == 422, (key, value, response.get_json())
            error = response.get_json()["error"]
            assert error["field"] == "entities" and "64-bit" in error["message"], error
    fine = client.post("/api/v1/serving/online", headers=headers(keys["serve_online"]),
                       json={"features": ["payments:amount"], "entities": {"user_id": [1, 2**63 - 1]}})
    assert fine.status_code == 200 and set(fine.get_json()["features"]) == {"1", str(2**63 - 1)}


@pytest.mark.parametrize("path", ["/api/v1/search?q=%00", "/api/v1/search?q=a%00", "/api/v1/feature-sets?q=%00",
                                  "/api/v1/features?q=%00", "/api/v1/entities?q=%00", "/api/v1/features?tag=%00",
                                  "/api/v1/audit?actor=%00"])
def test_a_nul_in_search_text_is_a_422_not_a_match_for_everything(client, keys, path):
    response = client.get(path, headers=headers(keys["admin"]))
    assert response.status_code == 422, (path, response.get_json())
    assert response.get_json()["error"]["code"] == "invalid"


def test_the_library_refuses_a_nul_in_search_text_too(ops_store):
    with pytest.raises(InvalidDefinition, match="control character") as info:
        ops_store.search("\x00")
    assert info.value.field == "q"
    with pytest.raises(InvalidDefinition, match="control character"):
        ops_store.list_feature_sets(query="\x00")


def test_every_operation_declares_its_success_body(client, keys):
    document = client.get("/openapi.json", headers=headers(keys["read_registry"])).get_json()
    undeclared = [(method, path) for path, operations in document["paths"].items()
                  for method, operation in operations.items()
                  if not any(str(code).startswith("2") for code in operation.get("responses", {}))]
    assert not undeclared
    entity = document["paths"]["/api/v1/entities/{id_or_name}"]["get"]["responses"]["200"]
    assert entity["content"]["application/json"]["schema"]["$ref"].endswith("/Entity")


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_gunicorn_answers_its_own_errors_in_the_json_shape(tmp_path, free_port, run_server, worker_class):
    env = {**os.environ, "STORAGE_PATH": str(tmp_path / "store"), "WEB_CONCURRENCY": "1", "PORT": str(free_port),
           "HOST": "127.0.0.1", "COMPUTE_ENGINE": "duckdb", "GUNICORN_WORKER_CLASS": worker_class}
    for name in ("DATABASE_URL", "REDIS_URL", "AUTH_ENABLED", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    run_server([sys.executable, "-m", "gunicorn", "server:app", "-c", str(REPO / "conf" / "gunicorn.conf.py"),
                "--pythonpath", str(REPO), "--bind", f"127.0.0.1:{free_port}"], free_port, cwd=tmp_path, env=env)
    cases = {
        "oversize header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        "too many headers": (b"GET /health HTTP/1.1\r\nHost: x\r\n"
                             + b"".join(b"X-H%d: 1\r\n" % n for n in range(150)) + b"\r\n", 431),
        "bad request line": (b"GET /health HTTP/9.9 extra\r\nHost: x\r\n\r\n", 400),
    }
    for what, (request, expected) in cases.items():
        status, fields, body = _raw(free_port, request)
        assert status == expected, (what, status, body[:200])
        assert fields.get("content-type") == "application/json", (what, fields, body[:200])
        error = json.loads(body)["error"]
        assert set(error) == {"code", "message", "field"} and error["code"] in ("bad_request", "headers_too_large")
        assert b"<html" not in body


# -- part 8: readiness ------------------------------------------------------------------------------

def test_ready_answers_a_keyless_probe_with_the_status_alone(client, keys):
    probe = client.get("/ready")
    assert probe.status_code == 200 and probe.get_json() == {"status": "ready"}
    detailed = client.get("/ready", headers=headers(keys["serve_online"]))
    assert detailed.status_code == 200
    assert detailed.get_json() == {"status": "ready", "checks": {"registry": "ok", "online_store": "ok"}}
    wrong = client.get("/ready", headers=headers("fsk_not_a_real_key_at_all_0000000000000000000"))
    assert wrong.status_code == 401


def test_a_keyless_probe_of_a_server_that_is_not_ready_gets_503_without_details(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the online store is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "AUTH_ENABLED": "true",
                                  "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    app = create_app(settings)
    try:
        probe = app.test_client().get("/ready")
        assert probe.status_code == 503
        body = probe.get_json()
        assert body["status"] == "unavailable" and "checks" not in body
        assert body["error"] == {"code": "unavailable", "message": "not ready", "field": None}
        assert str(port) not in probe.get_data(as_text=True)
    finally:
        app.extensions["fstore_security"].usage.stop()
        app.extensions["fstore"].close()
