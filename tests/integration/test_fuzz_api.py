"""The whole REST API fuzzed from its own ``/openapi.json`` (schemathesis): no 5xx, no response off its schema.

Bounded: a few derandomized examples per operation, so the run stays well under a minute.
Authentication is on and every request carries an admin key, so the security hooks run on
every call; a registry with one entity and one feature set gives the generator names to hit.
"""
from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from fstore.ops import auth
from fstore.api import create_app
from fstore.store import FeatureStore

EXAMPLES_PER_OPERATION = 10


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, spark):
    from fstore.core.settings import Settings

    folder = tmp_path_factory.mktemp("fuzz")
    store = FeatureStore(Settings.from_env({"STORAGE_PATH": str(folder / "store"), "SOURCE_ROOTS": str(folder),
                                           "AUTH_ENABLED": "true"}),
                         auto_upgrade=True).use_spark(spark)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "payments", "entities": ["user"],
                              "source": {"path": str(folder / "missing"), "format": "parquet",
                                         "event_timestamp_column": "ts"},
                              "features": [{"name": "amount", "data_type": "float", "transformation": "amount"}]},
                             allow_missing_sources=True)
    with store.transaction() as s:
        key = auth.create_key(s, owner="fuzzer", scopes=["admin"])["key"]
    app = create_app(store=store)
    yield app, key
    app.extensions["fstore_security"].usage.stop()
    store.close()


def test_api_conforms_to_its_openapi_document(fuzz_env):
    app, key = fuzz_env
    auth_headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=auth_headers)
    failures: list[str] = []
    timings: list[tuple[float, str]] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy())
        def run(case):
            try:
                case.call_and_validate(headers=auth_headers)
            except Exception as exc:  # noqa: BLE001 - schemathesis raises one FailureGroup with every failed check
                failures.append(f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}: "
                                f"{str(exc)[:600]}")

        began = time.perf_counter()
        run()
        timings.append((time.perf_counter() - began, operation.label))
    print("slowest operations:", sorted(timings, reverse=True)[:5])
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
