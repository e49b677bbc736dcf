"""A bounded schemathesis run over ``/openapi.json`` against the app in-process (WSGI): no request
generated from the schema may produce a 5xx."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hsettings

from fstore.api import create_app
from fstore.store import FeatureStore


@pytest.fixture()
def app(settings, spark):
    store = FeatureStore(settings).use_spark(spark)
    app = create_app(store=store)
    client = app.test_client()
    # Something to find: an entity and a set without a source (no Spark work at registration).
    assert client.post("/api/v1/feature-sets", json={
        "name": "user_profile", "entities": ["user_id"],
        "features": [{"name": "account_balance", "data_type": "float", "transformation": "account_balance"}],
    }).status_code == 201
    yield app
    store.close()


def test_no_generated_request_gets_a_server_error(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hsettings(max_examples=5, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code} "
                                f"{response.text[:300]}")

        run()
    assert operations >= 20
    assert not failures, "\n".join(failures)
