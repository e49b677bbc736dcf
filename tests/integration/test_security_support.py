"""Shared fixtures for the security, audit and monitoring tests (no tests of its own).

A registry with one entity and two feature sets (``payments``: amount, risk_score;
``profile``: age, segment) whose sources do not exist yet (so no Spark work), one
online row for user 1 in ``payments``, an app with authentication on, and a key
per scope plus keys limited by grants.
"""
from __future__ import annotations

from datetime import datetime

import pytest

from fstore.ops import auth
from fstore.api import create_app
from fstore.store import FeatureStore

SETS = {"payments": ("amount", "risk_score"), "profile": ("age", "segment")}


def seed(store: FeatureStore, folder: str) -> None:
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    for name, features in SETS.items():
        store.create_feature_set({
            "name": name, "entities": ["user"], "materialization_schedule": "0 * * * *",
            "source": {"path": f"{folder}/{name}_missing", "format": "parquet", "event_timestamp_column": "ts"},
            "features": [{"name": f, "data_type": "float", "transformation": f} for f in features],
        }, allow_missing_sources=True)
    store.online.write_rows(store.feature_set_version("payments"),
                            [{"user_id": 1, "event_timestamp": datetime(2024, 1, 1), "amount": 5.0, "risk_score": 0.1}])


def make_keys(store: FeatureStore) -> dict[str, str]:
    """One key per scope, and keys with grants, expired and revoked ones; name -> secret."""
    keys = {}
    with store.transaction() as s:
        for scope in auth.SCOPES:
            keys[scope] = auth.create_key(s, owner=f"owner-{scope}", scopes=[scope])["key"]
        keys["payments_only"] = auth.create_key(
            s, owner="team-payments", scopes=["read_registry", "write_registry", "serve_online", "materialize"],
            feature_sets=["payments"])["key"]
        keys["amount_only"] = auth.create_key(s, owner="team-amount", scopes=["read_registry", "serve_online"],
                                              features=["payments:amount"])["key"]
        keys["expired"] = auth.create_key(s, owner="old", scopes=["admin"], expires_in="1h")["key"]
        keys["revoked"] = auth.create_key(s, owner="gone", scopes=["admin"])["key"]
        auth.revoke_key(s, keys["revoked"][: auth.PREFIX_LENGTH])
    # Expire a key the way time would: move its expiry into the past.
    from sqlalchemy import update

    from fstore.registry.models import ApiKeyRow

    with store.transaction() as s:
        s.execute(update(ApiKeyRow).where(ApiKeyRow.key_hash == auth.hash_key(keys["expired"]))
                  .values(expires_at=datetime(2000, 1, 1)))
    return keys


def headers(key: str, form: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if form == "bearer" else {"X-API-Key": key}


@pytest.fixture()
def ops_store(settings, spark, tmp_path):
    store = FeatureStore(settings.with_(auth_enabled=True), auto_upgrade=True).use_spark(spark)
    seed(store, str(tmp_path))
    yield store
    store.close()


@pytest.fixture()
def ops_app(ops_store):
    app = create_app(store=ops_store)
    yield app
    app.extensions["fstore_security"].usage.stop()


@pytest.fixture()
def client(ops_app):
    return ops_app.test_client()


@pytest.fixture()
def keys(ops_store) -> dict[str, str]:
    return make_keys(ops_store)
