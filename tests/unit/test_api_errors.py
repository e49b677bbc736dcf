"""The API's one error path, without services: every HTTP-level problem is JSON in the one shape,
validation errors name the field, and the OpenAPI document and docs are served."""
from __future__ import annotations

import pytest

from fstore.api import create_app


@pytest.fixture()
def app(settings):
    app = create_app(settings.with_(max_body_bytes=2048))
    yield app
    app.extensions["fstore"].close()


@pytest.fixture()
def client(app):
    return app.test_client()


def error_of(response) -> dict:
    assert response.mimetype == "application/json", response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["message"]
    return body["error"]


def test_health_does_no_io(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


@pytest.mark.parametrize(("case", "method", "url", "kwargs", "status", "code"), [
    ("unknown_route", "get", "/api/v1/nothing-here", {}, 404, "not_found"),
    ("wrong_method", "put", "/api/v1/entities", {"json": {}}, 405, "method_not_allowed"),
    ("delete_collection", "delete", "/api/v1/features", {}, 405, "method_not_allowed"),
    ("malformed_json", "post", "/api/v1/entities", {"data": "{oops", "content_type": "application/json"}, 400, "bad_request"),
    ("bad_utf8", "post", "/api/v1/entities", {"data": b'{"name": "\xff"}', "content_type": "application/json"}, 400, "bad_request"),
    ("infinity", "post", "/api/v1/serving/online", {"data": '{"features": [], "entities": {"a": [Infinity]}}',
                                                    "content_type": "application/json"}, 400, "bad_request"),
    ("huge_nesting", "post", "/api/v1/entities", {"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"},
     413, "too_large"),
    ("deep_nesting", "post", "/api/v1/entities", {"data": "[" * 1020 + "]" * 1020, "content_type": "application/json"},
     400, "bad_request"),
    ("no_content_type", "post", "/api/v1/entities", {"data": '{"name": "x"}'}, 415, "unsupported_media_type"),
    ("xml", "patch", "/api/v1/entities/x", {"data": "<x/>", "content_type": "application/xml"}, 415, "unsupported_media_type"),
    ("empty_json_body", "post", "/api/v1/entities", {"data": "", "content_type": "application/json"}, 400, "bad_request"),
    ("array_body", "post", "/api/v1/serving/online", {"json": [1, 2]}, 422, "invalid"),
    ("string_body", "post", "/api/v1/entities", {"json": '{"name": "x"}'}, 422, "invalid"),
    ("oversized", "post", "/api/v1/entities", {"json": {"name": "x", "description": "d" * 5000}}, 413, "too_large"),
])
def test_http_level_errors_are_json(client, case, method, url, kwargs, status, code):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert error_of(response)["code"] == code


def test_wrong_method_says_what_is_allowed(client):
    response = client.delete("/health")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"] and "GET" in error_of(response)["message"]


@pytest.mark.parametrize(("case", "url", "body", "field"), [
    ("online_missing_features", "/api/v1/serving/online", {"entities": {"user_id": [1]}}, "features"),
    ("online_unknown_field", "/api/v1/serving/online", {"entities": {}, "features": [], "colour": 1}, "colour"),
    ("online_entities_wrong_type", "/api/v1/serving/online", {"entities": "user 1", "features": ["x"]}, "entities"),
    ("online_features_not_strings", "/api/v1/serving/online", {"entities": {"u": [1]}, "features": [1]}, "features.0"),
    ("historical_missing_entity_df", "/api/v1/serving/historical", {"features": ["x"]}, "entity_df"),
    ("historical_ragged_rows", "/api/v1/serving/historical",
     {"features": ["x"], "entity_df": {"columns": ["a", "b"], "data": [[1]]}}, "entity_df.data"),
    ("historical_duplicate_columns", "/api/v1/serving/historical",
     {"features": ["x"], "entity_df": {"columns": ["a", "a"], "data": []}}, "entity_df.columns"),
    ("batch_missing_output", "/api/v1/serving/batch", {"entity_source": {"path": "/x"}, "features": ["x"]}, "output_path"),
    ("materialize_missing_end", "/api/v1/feature-sets/x/materialize", {"start_date": "2024-01-01"}, "end_date"),
    ("materialize_bad_date", "/api/v1/feature-sets/x/materialize",
     {"start_date": "yesterday", "end_date": "2024-01-01"}, "start_date"),
    ("materialize_reversed", "/api/v1/feature-sets/x/materialize",
     {"start_date": "2024-02-01T00:00:00+01:00", "end_date": "2024-01-01T00:00:00Z"}, "end_date"),
    ("materialize_unknown_field", "/api/v1/feature-sets/x/materialize",
     {"start_date": "2024-01-01", "end_date": "2024-01-02", "force": True}, "force"),
    ("materialize_number_date", "/api/v1/feature-sets/x/materialize", {"start_date": 20240101, "end_date": "2024-01-02"},
     "start_date"),
    ("entity_name_not_string", "/api/v1/entities", {"name": 7}, "name"),
    ("feature_set_tags_wrong_type", "/api/v1/feature-sets", {"name": "s", "entities": ["u"], "tags": 3}, "tags"),
])
def test_validation_errors_name_the_field(client, case, url, body, field):
    response = client.post(url, json=body)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = error_of(response)
    assert error["code"] == "invalid" and error["field"] == field, error


@pytest.mark.parametrize(("url", "field"), [
    ("/api/v1/entities?limit=0", "limit"),
    ("/api/v1/entities?limit=x", "limit"),
    ("/api/v1/feature-sets?offset=-1", "offset"),
    ("/api/v1/features?limit=501", "limit"),
    ("/api/v1/features?sort=name", "sort"),
    ("/api/v1/search?q=", "q"),
])
def test_bad_query_parameters(client, url, field):
    response = client.get(url)
    assert response.status_code == 422
    assert error_of(response)["field"] == field


def test_openapi_document_comes_from_the_schemas(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/api/v1/entities", "/api/v1/feature-sets/{id_or_name}", "/api/v1/features/{id_or_name}/versions",
                 "/api/v1/search", "/api/v1/feature-sets/{id_or_name}/materialize", "/api/v1/runs/{run_id}",
                 "/api/v1/serving/online", "/api/v1/serving/historical", "/api/v1/serving/batch",
                 "/api/v1/serving/jobs/{job_id}", "/health", "/ready"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert "features" in schemas["OnlineBody"]["required"]
    assert schemas["MaterializeBody"]["additionalProperties"] is False
    online = spec["paths"]["/api/v1/serving/online"]["post"]
    assert online["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/OnlineBody")
    assert "422" in online["responses"]


def test_docs_are_served(client):
    response = client.get("/docs", follow_redirects=True)
    assert response.status_code == 200
    assert "openapi.json" in response.get_data(as_text=True)


def test_timestamps_render_as_utc_z():
    from datetime import datetime, timedelta, timezone

    import numpy as np
    import pandas as pd

    from fstore.api.render import frame_to_json

    frame = pd.DataFrame({
        "user_id": [1, 2],
        "ts": pd.to_datetime(["2024-01-01T01:00:00+01:00", None], utc=True),
        "value": [1.5, np.nan],
        "label": ["a", None],
    })
    out = frame_to_json(frame, {"source": "test"})
    assert out["columns"] == ["user_id", "ts", "value", "label"]
    assert out["data"] == [[1, "2024-01-01T00:00:00Z", 1.5, "a"], [2, None, None, None]]
    assert out["metadata"] == {"rows": 2, "source": "test"}
    eastern = datetime(2024, 1, 1, 7, tzinfo=timezone(timedelta(hours=7)))
    from fstore.api.render import to_json_value

    assert to_json_value(eastern) == "2024-01-01T00:00:00Z"


def test_unexpected_exception_is_a_logged_generic_500(settings, caplog):
    app = create_app(settings)

    def boom():
        raise RuntimeError("secret detail")

    app.add_url_rule("/boom", "boom", boom)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error" and "secret" not in error["message"]
    assert any("secret detail" in (r.exc_text or "") or "boom" in r.getMessage() for r in caplog.records)
    app.extensions["fstore"].close()


# Every route and method, with path parameters any route accepts; the docs' own pages and the monitoring UI's
# HTML pages (fstore.api.ui, tested in tests/ui) are not the API.
_DOC_ENDPOINTS = ("static", "openapi.", "swagger.", "openapi_json", "docs", "ui.")
_PATH_VALUES = {"id_or_name": "x", "run_id": "r1", "job_id": "j1", "key_id": "1", "name": "t"}


def test_every_route_refuses_an_unknown_query_parameter(app, client):
    routes = [(rule, method) for rule in app.url_map.iter_rules() if not rule.endpoint.startswith(_DOC_ENDPOINTS)
              for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    assert len(routes) > 40
    for rule, method in routes:
        url = rule.rule.replace("<", "{").replace(">", "}").format(**_PATH_VALUES)
        response = client.open(f"{url}?bogus=1", method=method, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 422, (method, url, response.get_data(as_text=True))
        assert "unknown field bogus" in error_of(response)["message"], (method, url)  # a required q may come first


@pytest.mark.parametrize(("case", "body", "field"), [
    ("escaped_value", rb'{"name": "x", "description": "\ud800"}', "description"),
    ("escaped_low_half", rb'{"name": "x", "join_keys": ["a", "\uDFFF"]}', "join_keys.1"),
    ("escaped_key", rb'{"name": "x", "\ud800": 1}', None),
    ("reversed_pair", rb'{"name": "x", "description": "\udc00\ud800"}', "description"),
    ("raw_bytes", '{"name": "x", "description": "\ud800"}'.encode("utf-8", "surrogatepass"), None),
])
def test_text_that_is_not_unicode_is_a_400_naming_it(client, case, body, field):
    response = client.post("/api/v1/entities", data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    error = error_of(response)
    assert error["code"] == "bad_request" and "not valid" in error["message"] and error["field"] == field, error
    assert client.get("/api/v1/entities").get_json()["total"] == 0


def test_a_surrogate_pair_written_as_escapes_is_one_character(client):
    response = client.post("/api/v1/entities", data=rb'{"name": "x", "description": "\ud83d\ude00 \\ud800"}',
                           content_type="application/json")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["description"] == "\U0001F600 \\ud800"
