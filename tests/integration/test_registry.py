"""The registry on SQLite and the real PostgreSQL: CRUD, versions, lineage, dependants, search, rollback."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fstore.core.errors import AlreadyExists, Conflict, InvalidDefinition, NotFound
from fstore.registry import repo
from fstore.registry.models import EntityRow, FeatureRow, FeatureSetRow, FeatureSetVersionRow, FeatureVersionRow
from fstore.store import FeatureStore

USER_PROFILE = {
    "name": "user_profile",
    "description": "User demographic and account features",
    "entities": ["user_id"],
    "owner": "data-science-team",
    "materialization_schedule": "0 * * * *",
    "source": {"path": "/data/users", "format": "parquet", "event_timestamp_column": "updated_at"},
    "ttl": "2d",
    "tags": {"team": "growth", "pii": "no"},
}
USER_AGE = {"name": "user_age", "feature_set_id": "user_profile", "description": "Age of the user in years",
            "data_type": "int", "transformation": "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))",
            "dialect": "postgres", "validation_rules": {"min_value": 0, "max_value": 150}}
BALANCE = {"name": "account_balance", "feature_set_id": "user_profile", "data_type": "float",
           "transformation": "account_balance", "validation_rules": {"min_value": 0, "on_violation": "null"},
           "owner": "finance", "tags": ["money"]}
RICH = {"name": "is_rich", "feature_set": "user_profile", "data_type": "bool",
        "transformation": "account_balance > 1000", "source_features": ["account_balance"]}


@pytest.fixture()
def store(any_registry_settings):
    # PostgreSQL is not auto-upgraded by the store; the test upgrades it as `fstore db upgrade` would.
    store = FeatureStore(any_registry_settings, auto_upgrade=True)
    yield store
    store.close()


def call(store, fn, *args, **kwargs):
    """One repo call in its own transaction, as the facade and the server frame it."""
    with store.transaction() as s:
        return fn(s, *args, **kwargs)


def counts(store) -> dict[str, int]:
    with store.transaction() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (EntityRow, FeatureSetRow, FeatureSetVersionRow, FeatureRow, FeatureVersionRow)}


def seed(store) -> None:
    call(store, repo.create_feature_set, USER_PROFILE, actor="alice")
    call(store, repo.create_feature, USER_AGE, actor="alice")
    call(store, repo.create_feature, BALANCE, actor="bob")


def test_entity_crud_and_join_key_lookup(store):
    created = store.create_entity({"name": "user", "join_keys": ["user_id"], "description": "a customer"}, actor="a")
    assert created["name"] == "user" and created["version"] == 1 and created["created_at"].endswith("Z")
    assert store.get_entity("user_id")["id"] == created["id"]
    assert store.get_entity(str(created["id"]))["name"] == "user"
    with pytest.raises(AlreadyExists, match="user"):
        store.create_entity({"name": "user", "join_keys": ["uid"]})
    updated = store.update_entity("user", {"description": "a paying customer"})
    assert updated["version"] == 2 and updated["description"] == "a paying customer"
    assert store.update_entity("user", {"description": "a paying customer"})["version"] == 2
    with pytest.raises(InvalidDefinition, match="renamed"):
        store.update_entity("user", {"name": "client"})
    with pytest.raises(InvalidDefinition, match="unknown field"):
        store.create_entity({"name": "x", "colour": "red"})
    store.delete_entity("user")
    with pytest.raises(NotFound, match="user"):
        store.get_entity("user")


def test_feature_set_names_entity_by_join_key_or_registers_it(store):
    store.create_entity({"name": "user", "join_keys": ["user_id"]})
    fs = call(store, repo.create_feature_set, USER_PROFILE, actor="alice")
    assert fs["entities"] == ["user"] and fs["ttl_seconds"] == 172800 and fs["version"] == 1
    other = call(store, repo.create_feature_set, {"name": "merchant_stats", "entities": ["merchant_id"],
                                                   "source": {"table": "db.merchants"}})
    assert other["entities"] == ["merchant_id"]
    assert store.get_entity("merchant_id")["join_keys"] == ["merchant_id"]
    with pytest.raises(Conflict, match="user_profile"):
        store.delete_entity("user")
    with pytest.raises(Conflict, match="join keys"):
        store.update_entity("user", {"join_keys": ["uid"]})


def test_duplicates_and_unknown_references(store):
    seed(store)
    with pytest.raises(AlreadyExists, match="user_profile"):
        call(store, repo.create_feature_set, USER_PROFILE)
    with pytest.raises(AlreadyExists, match="user_age"):
        call(store, repo.create_feature, USER_AGE)
    with pytest.raises(NotFound, match="nope"):
        call(store, repo.create_feature, {**USER_AGE, "name": "x", "feature_set_id": "nope"})
    with pytest.raises(NotFound, match="999"):
        call(store, repo.create_feature, {**USER_AGE, "name": "x", "feature_set_id": 999})
    with pytest.raises(InvalidDefinition, match="feature_set"):
        call(store, repo.create_feature, {k: v for k, v in USER_AGE.items() if k != "feature_set_id"})
    with pytest.raises(NotFound):
        call(store, repo.get_feature, "missing")
    with pytest.raises(InvalidDefinition, match="cron"):
        call(store, repo.create_feature_set, {**USER_PROFILE, "name": "other", "materialization_schedule": "every hour"})
    with pytest.raises(InvalidDefinition, match="not a valid name"):
        call(store, repo.create_feature_set, {**USER_PROFILE, "name": "x; DROP TABLE features"})


def test_feature_by_id_name_and_set(store):
    seed(store)
    fs = store.get_feature_set("user_profile")
    assert fs["features"] == ["user_age", "account_balance"]
    age = call(store, repo.get_feature, "user_age")
    assert call(store, repo.get_feature, age["id"])["name"] == "user_age"
    assert call(store, repo.get_feature, "user_profile:user_age")["id"] == age["id"]
    call(store, repo.create_feature_set, {**USER_PROFILE, "name": "user_profile_v2"})
    call(store, repo.create_feature, {**USER_AGE, "feature_set_id": "user_profile_v2"})
    with pytest.raises(InvalidDefinition, match="user_profile, user_profile_v2"):
        call(store, repo.get_feature, "user_age")
    assert call(store, repo.get_feature, "user_age", feature_set="user_profile_v2")["feature_set"] == "user_profile_v2"
    assert call(store, repo.feature_set_names_with_feature, "user_age") == ["user_profile", "user_profile_v2"]


def test_versions_record_changes_actor_and_stay_readable(store):
    seed(store)
    updated = call(store, repo.update_feature, "user_age", {"description": "years", "validation_rules": {"max_value": 120}},
                   actor="carol")
    assert updated["version"] == 2
    same = call(store, repo.update_feature, "user_age", {"description": "years"}, actor="carol")
    assert same["version"] == 2
    versions = call(store, repo.feature_versions, "user_age")
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["created_by"] == "carol"
    assert {c["field"] for c in versions[1]["changes"]} == {"description", "validation_rules"}
    old = call(store, repo.get_feature, "user_age", version=1)
    assert old["description"] == "Age of the user in years" and old["version"] == 1
    with pytest.raises(NotFound, match="no version 7"):
        call(store, repo.get_feature, "user_age", version=7)

    set_versions = call(store, repo.feature_set_versions, "user_profile")
    assert [v["features"] for v in set_versions] == [{}, {"user_age": 1}, {"user_age": 1, "account_balance": 1},
                                                     {"user_age": 2, "account_balance": 1}]
    changed = call(store, repo.update_feature_set, "user_profile", {"ttl": "3d", "owner": "ml"}, actor="dave")
    assert changed["version"] == 5 and changed["ttl_seconds"] == 3 * 86400
    assert call(store, repo.update_feature_set, "user_profile", {"ttl_seconds": 3 * 86400})["version"] == 5
    last = call(store, repo.feature_set_versions, "user_profile")[-1]
    assert {c["field"]: (c["old"], c["new"]) for c in last["changes"]} == {"ttl_seconds": (172800, 259200),
                                                                          "owner": ("data-science-team", "ml")}
    assert last["created_by"] == "dave"
    with pytest.raises(InvalidDefinition, match="renamed"):
        call(store, repo.update_feature_set, "user_profile", {"name": "profile"})

    v3 = call(store, repo.load_feature_set_version, "user_profile", version=3)
    assert v3.version == 3 and [f.name for f in v3.features] == ["user_age", "account_balance"]
    assert v3.feature("user_age").description == "Age of the user in years" and v3.ttl_seconds == 172800
    current = call(store, repo.load_feature_set_version, "user_profile")
    assert current.version == 5 and current.feature("user_age").validation.max_value == 120
    assert current.feature_versions == {"user_age": 2, "account_balance": 1}
    assert call(store, repo.get_feature_set, "user_profile", version=1)["features"] == []


def test_composites_lineage_cycles_and_dependants(store):
    seed(store)
    rich = call(store, repo.create_feature, RICH)
    assert rich["lineage"] == {"account_balance": 1}
    call(store, repo.update_feature, "account_balance", {"description": "in dollars"})
    changed = call(store, repo.update_feature, "is_rich", {"transformation": "account_balance > 2000"})
    assert changed["lineage"] == {"account_balance": 2}
    assert call(store, repo.feature_versions, "is_rich")[0]["lineage"] == {"account_balance": 1}
    with pytest.raises(InvalidDefinition, match="not_there"):
        call(store, repo.create_feature, {**RICH, "name": "bad", "source_features": ["not_there"]})
    with pytest.raises(InvalidDefinition, match="cycle"):
        call(store, repo.update_feature, "account_balance", {"source_features": ["is_rich"]})
    with pytest.raises(Conflict, match="is_rich"):
        call(store, repo.delete_feature, "account_balance")
    # not declared, still read: the transformation names it
    call(store, repo.update_feature, "is_rich", {"source_features": []})
    with pytest.raises(Conflict, match="account_balance is used by feature\\(s\\) is_rich"):
        call(store, repo.delete_feature, "account_balance")
    before = counts(store)
    call(store, repo.delete_feature, "is_rich", actor="eve")
    after = call(store, repo.feature_set_versions, "user_profile")[-1]
    assert "is_rich" not in after["features"] and after["changes"][0]["new"] is None
    assert counts(store)["features"] == before["features"] - 1
    # an old version keeps the deleted feature's spec
    old = call(store, repo.load_feature_set_version, "user_profile", version=after["version"] - 1)
    assert old.feature("is_rich").transformation == "account_balance > 2000"


def test_delete_feature_set_deletes_its_features(store):
    seed(store)
    store.delete_feature_set("user_profile")
    assert counts(store) == {"entities": 1, "feature_sets": 0, "feature_set_versions": 0, "features": 0,
                             "feature_versions": 0}
    store.delete_entity("user_id")


def test_search_filters_and_pagination(store):
    seed(store)
    call(store, repo.create_feature, RICH)
    call(store, repo.create_feature_set, {"name": "merchant_stats", "entities": ["merchant_id"], "owner": "risk",
                                           "description": "Merchant GROWTH metrics", "source": {"table": "m"}})
    call(store, repo.create_feature, {"name": "merchant_rate", "feature_set": "merchant_stats", "data_type": "float",
                                       "transformation": "rate", "tags": {"team": "risk"}})
    found = call(store, repo.search, "growth")
    assert [(i["kind"], i["name"]) for i in found["items"]] == [("feature_set", "user_profile"), ("feature_set", "merchant_stats")]
    found = call(store, repo.search, "_", kinds=("entity", "feature"), limit=2, offset=1)
    assert found["total"] == 6 and [(i["kind"], i["name"]) for i in found["items"]] == [("entity", "merchant_id"),
                                                                                       ("feature", "user_age")]
    assert [f["name"] for f in call(store, repo.list_features, entity="user_id")["items"]] == ["user_age", "account_balance", "is_rich"]
    assert [f["name"] for f in call(store, repo.list_features, data_type="double")["items"]] == ["account_balance", "merchant_rate"]
    assert [f["name"] for f in call(store, repo.list_features, owner="FINANCE")["items"]] == ["account_balance"]
    assert [f["name"] for f in call(store, repo.list_features, tag="money")["items"]] == ["account_balance"]
    assert [f["name"] for f in call(store, repo.list_features, feature_set="merchant_stats")["items"]] == ["merchant_rate"]
    assert call(store, repo.list_features, query="100%")["total"] == 0
    page = call(store, repo.list_features, limit=2, offset=2)
    assert page["total"] == 4 and [f["name"] for f in page["items"]] == ["is_rich", "merchant_rate"]
    assert [s["name"] for s in call(store, repo.list_feature_sets, tag="team=growth")["items"]] == ["user_profile"]
    assert [s["name"] for s in call(store, repo.list_feature_sets, entity="merchant_id")["items"]] == ["merchant_stats"]
    assert call(store, repo.list_feature_sets, owner="nobody")["total"] == 0
    assert call(store, repo.list_entities, query="MERCHANT")["total"] == 1
    with pytest.raises(InvalidDefinition, match="limit"):
        call(store, repo.list_features, limit=501)
    with pytest.raises(InvalidDefinition, match="offset"):
        call(store, repo.list_features, offset=-1)
    with pytest.raises(InvalidDefinition, match="data_type"):
        call(store, repo.list_features, data_type="blob")
    with pytest.raises(NotFound, match="ghost"):
        call(store, repo.list_features, entity="ghost")


def test_failed_call_leaves_registry_unchanged(store):
    seed(store)
    before = counts(store)
    snapshot = store.get_feature_set("user_profile")
    # the implicit entity is created, then an inline feature is refused: nothing may remain
    body = {**USER_PROFILE, "name": "orders", "entities": ["order_id"],
            "features": [{"name": "ok", "data_type": "int", "transformation": "1"},
                         {"name": "bad", "data_type": "blob", "transformation": "2"}]}
    with pytest.raises(InvalidDefinition, match="blob"):
        call(store, repo.create_feature_set, body)
    with pytest.raises(InvalidDefinition, match="loop2"):
        call(store, repo.create_feature, {**RICH, "name": "loop", "source_features": ["loop2"]})
    with pytest.raises(Conflict):
        with store.transaction() as s:
            repo.create_feature(s, RICH)
            repo.delete_feature(s, "account_balance")
    assert counts(store) == before
    assert store.get_feature_set("user_profile") == snapshot
    with pytest.raises(NotFound):
        store.get_entity("order_id")


def test_entity_versions_keep_every_spec(store):
    store.create_entity({"name": "user", "join_keys": ["user_id"]}, actor="ann")
    store.update_entity("user", {"description": "a customer"}, actor="bob")
    store.update_entity("user", {"description": "a customer"}, actor="bob")  # no change, no version
    versions = store.entity_versions("user")
    assert [(v["version"], v["created_by"], v["spec"]["description"]) for v in versions] == [
        (1, "ann", ""), (2, "bob", "a customer")]
    with pytest.raises(NotFound):
        store.entity_versions("nobody")


def test_upgrade_from_0001_records_existing_entities_as_their_first_version(any_registry_settings):
    """Migration 0002 backfills entity_versions for entities registered before it."""
    from fstore.registry.db import HEAD_REVISION, current_revision, make_engine, upgrade

    upgrade(any_registry_settings, "0001")
    engine = make_engine(any_registry_settings)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO entities (name, version, spec, description, created_at, updated_at, created_by) VALUES "
            "('user', 3, '{\"name\": \"user\", \"join_keys\": [\"user_id\"], \"value_type\": \"string\", "
            "\"description\": \"x\"}', 'x', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 'ann')")
    upgrade(any_registry_settings)
    assert current_revision(engine) == HEAD_REVISION
    engine.dispose()
    store = FeatureStore(any_registry_settings)
    assert [(v["version"], v["created_by"]) for v in store.entity_versions("user")] == [(3, "ann")]
    store.close()
