"""Push (#25 part 1): source rows computed at once and written online (newer-wins) and offline (idempotent).

Everything real: DuckDB computes in process, the online store is the real Redis (the test database) or the
embedded SQLite store, the offline table is Delta on disk, the registry SQLite, the API the Flask app with
API keys checked.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition
from fstore.ops import auth
from fstore.storage.offline import table_uri
from fstore.store import FeatureStore
from test_materialize_support import create_set, events, write_source
from test_security_support import headers

T0 = datetime(2024, 1, 1)
ASK = {"features": ["clicks:clicks_x2", "clicks:page_upper"], "entities": {"user_id": [1, 2]}}


def clicks_body(source: str, name: str = "clicks") -> dict:
    return {
        "name": name, "entities": ["user"], "online_enabled": True,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [
            {"name": "clicks_x2", "data_type": "int", "transformation": "clicks * 2"},
            {"name": "page_upper", "data_type": "string", "transformation": "upper(page)"},
        ],
    }


@pytest.fixture(params=["redis", "embedded"])
def store(request, settings, tmp_path):
    if request.param == "redis":
        settings = settings.with_(redis_url=request.getfixturevalue("redis_url"))
    s = FeatureStore(settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    source = write_source(tmp_path / "source" / "clicks", pd.DataFrame({
        "user_id": [1, 2], "event_timestamp": [T0 + timedelta(days=2), T0 + timedelta(days=1)],
        "clicks": [10, 20], "page": ["home", "cart"]}))
    create_set(s, write_source(tmp_path / "source" / "txn", events()))  # the entity, and a windowed set: user_txn
    s.create_feature_set(clicks_body(source))
    yield s
    s.close()


def values(store: FeatureStore) -> dict:
    return store.get_online_features(**ASK)["features"]


def offline(store: FeatureStore, name: str = "clicks") -> pd.DataFrame:
    return DeltaTable(table_uri(store.settings, name)).to_pandas().sort_values(["user_id", "event_timestamp"])


def test_push_online_is_newer_wins_against_a_materialized_row(store):
    store.materialize("clicks", T0, T0 + timedelta(days=5))
    assert values(store)["1"] == {"clicks:clicks_x2": 20, "clicks:page_upper": "HOME"}
    # Older than the materialized row of user 1 (day 2): dropped, atomically, by the store's newer-wins rule.
    older = store.push("clicks", [{"user_id": 1, "event_timestamp": T0 + timedelta(days=1), "clicks": 1, "page": "old"}])
    assert older["rows_computed"] == 1
    assert values(store)["1"] == {"clicks:clicks_x2": 20, "clicks:page_upper": "HOME"}
    # Newer: visible as soon as the call returns, for user 1 only.
    store.push("clicks", [{"user_id": 1, "event_timestamp": "2024-01-04T00:00:00Z", "clicks": 7, "page": "new"}])
    got = values(store)
    assert got["1"] == {"clicks:clicks_x2": 14, "clicks:page_upper": "NEW"}
    assert got["2"] == {"clicks:clicks_x2": 40, "clicks:page_upper": "CART"}


def test_the_same_push_twice_is_stored_once_offline(store):
    rows = [{"user_id": 1, "event_timestamp": T0 + timedelta(hours=h), "clicks": h, "page": "p"} for h in (1, 2, 30)]
    first = store.push("clicks", rows, to="online_and_offline")
    assert (first["appended"], first["skipped"], first["online_rows"]) == (3, 0, 3)
    again = store.push("clicks", rows, to="online_and_offline")
    assert (again["appended"], again["skipped"]) == (3 - 3, 3)
    assert again["offline_version"] == first["offline_version"]  # no new Delta version at all
    # One new row among old ones, a row given twice in one push, and caller ids: only the new events land.
    mixed = rows + [{"user_id": 2, "event_timestamp": T0, "clicks": 5, "page": "q", "push_id": "evt-9"},
                    {"user_id": 2, "event_timestamp": T0, "clicks": 5, "page": "q", "push_id": "evt-9"}]
    assert store.push("clicks", mixed, to="offline")["appended"] == 1
    # The same caller id with other values is the same event: skipped.
    assert store.push("clicks", [{"user_id": 2, "event_timestamp": T0, "clicks": 6, "page": "r", "push_id": "evt-9"}],
                      to="offline")["appended"] == 0
    table = offline(store)
    assert len(table) == 4
    assert table["push_id"].is_unique
    assert list(table["clicks_x2"]) == [2, 4, 60, 10]
    assert list(table[table.push_id == "evt-9"]["page_upper"]) == ["Q"]


def test_bad_rows_are_refused_naming_the_column_and_nothing_is_written(store):
    good = {"user_id": 1, "event_timestamp": "2024-01-05T00:00:00", "clicks": 3, "page": "x"}
    cases = {
        "clicks": {**good, "clicks": "many"},
        "colour": {**good, "colour": "red"},
        "user_id": {k: v for k, v in good.items() if k != "user_id"},
        "event_timestamp": {**good, "event_timestamp": None},
        "page": {**good, "page": 5},
    }
    for column, value in (("clicks", 1.5), ("clicks", True), ("user_id", "abc"), ("event_timestamp", 1704067200),
                          ("event_timestamp", "yesterday")):
        with pytest.raises(InvalidDefinition) as caught:
            store.push("clicks", [good, {**good, column: value}], to="online_and_offline")
        assert repr(column) in caught.value.message and caught.value.field == f"rows[1].{column}"
    for column, bad in cases.items():
        with pytest.raises(InvalidDefinition) as caught:
            store.push("clicks", [good, bad], to="online_and_offline")  # the good row first: still nothing written
        assert repr(column) in caught.value.message and caught.value.field == f"rows[1].{column}"
    assert values(store)["1"] is None or values(store)["1"] == {"clicks:clicks_x2": None, "clicks:page_upper": None}
    assert not DeltaTable.is_deltatable(table_uri(store.settings, "clicks"))


def test_a_set_with_windowed_features_is_pushed_with_exact_windows(store):
    """Windowed sets go through fstore.compute.stream_windows (tests/integration/test_stream_windows.py)."""
    rows = [{"user_id": 1, "event_timestamp": T0 + timedelta(hours=h), "amount": float(h)} for h in (1, 2)]
    result = store.push("user_txn", rows, to="online_and_offline")
    assert (result["online_rows"], result["appended"], result["late_events"]) == (1, 2, 0)
    got = store.get_online_features(features=["user_txn:txn_count_2d", "user_txn:amount_sum_2d"],
                                    entities={"user_id": [1]}, at=T0 + timedelta(hours=2))["features"]["1"]
    assert got == {"user_txn:txn_count_2d": 2, "user_txn:amount_sum_2d": 3.0}


@pytest.fixture()
def api(settings, redis_url, tmp_path):
    s = FeatureStore(settings.with_(compute_engine="duckdb", redis_url=redis_url, auth_enabled=True), auto_upgrade=True)
    source = write_source(tmp_path / "source" / "clicks", pd.DataFrame({
        "user_id": [1], "event_timestamp": [T0], "clicks": [1], "page": ["a"]}))
    s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    s.create_feature_set(clicks_body(source))
    s.create_feature_set(clicks_body(source, name="other"))
    with s.transaction() as tx:
        keys = {
            "push": auth.create_key(tx, owner="pusher", scopes=["push", "serve_online"])["key"],
            "serve": auth.create_key(tx, owner="reader", scopes=["serve_online", "materialize", "write_registry"])["key"],
            "other_only": auth.create_key(tx, owner="team-other", scopes=["push"], feature_sets=["other"])["key"],
        }
    app = create_app(store=s)
    yield app.test_client(), keys
    app.extensions["fstore_security"].usage.stop()
    s.close()


def test_rest_push_scope_grants_and_422(api):
    client, keys = api
    row = {"user_id": 1, "event_timestamp": "2024-01-03T00:00:00Z", "clicks": 4, "page": "web"}
    body = {"feature_set": "clicks", "rows": [row], "to": "online_and_offline"}
    ok = client.post("/api/v1/push", json=body, headers=headers(keys["push"]))
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["online_rows"] == 1 and ok.get_json()["appended"] == 1
    served = client.post("/api/v1/serving/online", headers=headers(keys["push"]), json=ASK).get_json()
    assert served["features"]["1"] == {"clicks:clicks_x2": 8, "clicks:page_upper": "WEB"}

    denied = client.post("/api/v1/push", json=body, headers=headers(keys["serve"]))
    assert denied.status_code == 403 and "'push'" in denied.get_json()["error"]["message"]

    hidden = client.post("/api/v1/push", json=body, headers=headers(keys["other_only"]))
    unknown = client.post("/api/v1/push", json={**body, "feature_set": "nope"}, headers=headers(keys["push"]))
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.get_json()["error"] == {**unknown.get_json()["error"],
                                          "message": unknown.get_json()["error"]["message"].replace("nope", "clicks")}
    assert client.post("/api/v1/push", json={**body, "feature_set": "other"},
                       headers=headers(keys["other_only"])).status_code == 200

    bad = client.post("/api/v1/push", headers=headers(keys["push"]),
                      json={**body, "rows": [{**row, "clicks": 5, "event_timestamp": "2024-01-04T00:00:00Z"},
                                             {**row, "clicks": 1.5}]})
    assert bad.status_code == 422
    assert "'clicks'" in bad.get_json()["error"]["message"]
    served = client.post("/api/v1/serving/online", headers=headers(keys["push"]), json=ASK).get_json()
    assert served["features"]["1"]["clicks:clicks_x2"] == 8  # the good row of the refused push was not written
    wrong_to = client.post("/api/v1/push", headers=headers(keys["push"]), json={**body, "to": "everywhere"})
    assert wrong_to.status_code == 422 and "to must be one of" in wrong_to.get_json()["error"]["message"]


def test_validation_rules_apply_to_pushed_rows(store, tmp_path):
    body = clicks_body(str(tmp_path / "source" / "clicks"), name="guarded")
    body["features"][0]["validation_rules"] = {"max_value": 100, "on_violation": "drop_row"}
    store.create_feature_set(body)
    rows = [{"user_id": 1, "event_timestamp": T0, "clicks": 10, "page": "ok"},
            {"user_id": 2, "event_timestamp": T0, "clicks": 500, "page": "too many"}]
    done = store.push("guarded", rows, to="online_and_offline")
    assert (done["rows"], done["rows_computed"], done["appended"], done["online_rows"]) == (2, 1, 1, 1)
    got = store.get_online_features(features=["guarded:clicks_x2"], entities={"user_id": [1, 2]})["features"]
    assert got["1"] == {"guarded:clicks_x2": 20} and got["2"] == {"guarded:clicks_x2": None}
    assert list(offline(store, "guarded")["user_id"]) == [1]


def test_pushed_offline_rows_are_read_by_retrieval_and_survive_a_run_of_other_days(store):
    rows = [{"user_id": 3, "event_timestamp": T0 + timedelta(days=4, hours=h), "clicks": h, "page": "p"} for h in (1, 2)]
    assert store.push("clicks", rows, to="offline")["appended"] == 2
    store.materialize("clicks", T0, T0 + timedelta(days=3))  # another range: its commit keeps the pushed days
    assert store.push("clicks", rows, to="offline")["appended"] == 0  # their ids are still known
    assert len(offline(store)) == 2 + 2
    asked = pd.DataFrame({"user_id": [1, 3], "event_timestamp": [T0 + timedelta(days=3), T0 + timedelta(days=5)]})
    got = store.get_historical_features(entity_df=asked, features=["clicks:clicks_x2"]).arrow
    assert got.column("clicks__clicks_x2").to_pylist() == [20, 4]


def test_a_pushed_row_past_its_ttl_is_not_stored_and_is_counted(store):
    """Pushing history to a set with a TTL: rows already past it are not stored online (serving would call
    them expired; Redis would expire them at once) and the answer counts them instead of dropping them silently."""
    store.update_feature_set("clicks", {"ttl": "1h"})
    now = datetime.utcnow()
    done = store.push("clicks", [{"user_id": 1, "event_timestamp": now - timedelta(minutes=5), "clicks": 2, "page": "a"},
                                 {"user_id": 2, "event_timestamp": now - timedelta(hours=2), "clicks": 3, "page": "b"}])
    assert (done["online_rows"], done["online_past_ttl"]) == (1, 1)
    answer = store.get_online_features(**ASK)
    assert answer["features"] == {"1": {"clicks:clicks_x2": 4, "clicks:page_upper": "A"},
                                  "2": {"clicks:clicks_x2": None, "clicks:page_upper": None}}
    assert answer["statuses"]["2"] == {"clicks:clicks_x2": "missing", "clicks:page_upper": "missing"}
