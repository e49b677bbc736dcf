"""Usage-based retention: features neither served online nor used in a training set for N days are reported;
with UNUSED_ONLINE_DROP_DAYS their online values are dropped (never their definitions), serving answers them
null with the reason, later loads keep them dropped, and a restore brings them back."""
from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import redis
from sqlalchemy import update

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.models import FeatureRow, UsageRow, utcnow
from fstore.storage.online.base import Codec
from fstore.store import FeatureStore
from test_materialize_support import T0, T_END, create_set, source  # noqa: F401 - fixtures

USERS = (1, 2, 3)


@pytest.fixture(params=["embedded", "redis"])
def store(request, settings, source):
    """A DuckDB store on the embedded online store, then on the real Redis; its set materialized, its features
    made 40 days old, ``amount_x2`` served online through the REST API, ``txn_count_2d`` only in a training set."""
    client = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")  # the real Redis, emptied
        client = redis.Redis.from_url(url, socket_timeout=2)
        settings = settings.with_(redis_url=url)
    store = FeatureStore(settings.with_(compute_engine="duckdb", unused_online_drop_days=30))
    create_set(store, source)
    store.materialize("user_txn", T0, T_END)
    with store.transaction() as s:
        s.execute(update(FeatureRow).values(created_at=utcnow() - timedelta(days=40)))
    app = create_app(store=store)
    http = app.test_client()
    served = http.post("/api/v1/serving/online", json={"features": ["user_txn:amount_x2"], "entities": {"user_id": [1, 2]}})
    assert served.status_code == 200
    app.extensions["fstore_security"].usage.flush()  # what its background thread does every few seconds
    labels = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [T_END, T_END]})
    store.get_historical_features(entity_df=labels, features=["user_txn:txn_count_2d"], save_as="churn").to_df()
    yield store, http
    app.extensions["fstore_security"].usage.stop()
    store.close()
    if client is not None:
        client.flushdb()
        client.close()


def stored(store, feature: str) -> list:
    """The raw stored value of ``feature`` per user (None: the key holds no such field)."""
    codec = Codec.from_version(store.feature_set_version("user_txn"))
    index = codec.feature_names.index(feature)
    return [None if r is None else r[1][index] for r in store.online.read(codec, [codec.key_of({"user_id": u}) for u in USERS])]


def test_unused_features_are_reported_and_a_training_set_counts_as_use(store):
    store, http = store
    with store.transaction() as s:  # served once, 40 days ago: still unused for 30 days, its last use reported
        s.add(UsageRow(minute=utcnow() - timedelta(days=40), api_key="", endpoint="online", feature_set="user_txn",
                       feature="amount_sum_2d", requests=1, entities=1, entities_found=1, cache_hits=0, latency_ms=[1]))
    report = http.get("/monitoring/unused?days=30").get_json()  # the view flushes this worker's usage first
    by_name = {i["feature"]: i for i in report["items"]}
    assert set(by_name) == {"amount_sum_2d", "avg_amount_2d"}  # amount_x2 served, txn_count_2d trained on
    assert report["features_checked"] == 4 and report["unused"] == 2
    assert by_name["amount_sum_2d"]["last_served_online"] is not None
    assert by_name["avg_amount_2d"]["last_served_online"] is None and by_name["avg_amount_2d"]["last_training_set"] is None
    assert report["policy"] == {"unused_online_drop_days": 30, "action": "drop online values after 30 days unused"}
    # a 50-day look-back reaches the old request: amount_sum_2d is used then; features younger than that are not judged
    assert store.unused_features(50)["items"] == []
    # the training set is what makes txn_count_2d used: once it is older than the period, the feature is reported
    with store.transaction() as s:
        from fstore.registry.models import TrainingSetRow

        s.execute(update(TrainingSetRow).values(created_at=utcnow() - timedelta(days=31)))
    again = {i["feature"]: i for i in store.unused_features(30)["items"]}
    assert "txn_count_2d" in again and again["txn_count_2d"]["last_training_set"]["name"] == "churn"
    assert http.get("/monitoring/unused?days=0").status_code in (400, 422)


def test_the_policy_drops_online_values_only_and_serving_says_why(store):
    store, http = store
    assert all(v is not None for v in stored(store, "avg_amount_2d"))
    preview = store.drop_unused_online(dry_run=True)
    assert preview["dropped"] == [{"feature_set": "user_txn", "features": ["amount_sum_2d", "avg_amount_2d"], "keys": None}]
    assert all(v is not None for v in stored(store, "avg_amount_2d"))  # a dry run drops nothing
    done = store.drop_unused_online(actor="ops")
    assert done["dropped"] == [{"feature_set": "user_txn", "features": ["amount_sum_2d", "avg_amount_2d"], "keys": 3}]
    assert stored(store, "avg_amount_2d") == [None] * 3 and stored(store, "amount_sum_2d") == [None] * 3
    assert all(v is not None for v in stored(store, "amount_x2"))  # the used features keep theirs
    # the registry keeps everything: the definition, its versions; the offline rows stay
    assert store.get_feature("avg_amount_2d", feature_set="user_txn")["name"] == "avg_amount_2d"
    answer = store.get_online_features(features=["user_txn:amount_x2", "user_txn:avg_amount_2d"],
                                       entities={"user_id": [1]})
    assert answer["features"]["1"]["user_txn:avg_amount_2d"] is None
    assert answer["statuses"]["1"] == {"user_txn:amount_x2": "present", "user_txn:avg_amount_2d": "dropped"}
    assert "not served online nor used in a training set for 30 days" in answer["metadata"]["dropped"]["user_txn:avg_amount_2d"]
    assert store.unused_features(30)["items"][0]["online_dropped_at"] is not None
    # a later run writes every feature, then removes the dropped ones again
    store.materialize("user_txn", T0, T_END)
    assert stored(store, "avg_amount_2d") == [None] * 3 and all(v is not None for v in stored(store, "amount_x2"))
    assert store.drop_unused_online()["dropped"] == []  # already dropped: nothing more
    # restored: forgotten, reloaded from the offline table, served again
    store.restore_online_feature("user_txn", "avg_amount_2d")
    assert all(v is not None for v in stored(store, "avg_amount_2d"))
    assert stored(store, "amount_sum_2d") == [None] * 3  # the other drop stands through the reload
    answer = store.get_online_features(features=["user_txn:avg_amount_2d"], entities={"user_id": [1]})
    assert answer["statuses"]["1"]["user_txn:avg_amount_2d"] != "dropped" and "dropped" not in answer["metadata"]
    with pytest.raises(NotFound, match="user_txn:avg_amount_2d were not dropped"):
        store.restore_online_feature("user_txn", "avg_amount_2d")


def test_without_the_policy_nothing_is_dropped(settings, source):
    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    try:
        with pytest.raises(InvalidDefinition, match="UNUSED_ONLINE_DROP_DAYS") as info:
            store.drop_unused_online()
        assert info.value.field == "UNUSED_ONLINE_DROP_DAYS"
        assert store.unused_features(30)["policy"]["action"] == "report only"
    finally:
        store.close()


def test_the_cli_reports_cost_and_unused_and_drops_by_policy(settings, source):
    """``fstore monitor cost`` and ``fstore monitor unused [--drop | --restore]`` over the store a user exported."""
    import json

    from click.testing import CliRunner

    from fstore.cli import main

    store = FeatureStore(settings.with_(compute_engine="duckdb"))
    create_set(store, source)
    run = store.materialize("user_txn", T0, T_END)
    with store.transaction() as s:
        s.execute(update(FeatureRow).values(created_at=utcnow() - timedelta(days=40)))
    store.close()
    env = {"STORAGE_PATH": settings.storage_path, "SOURCE_ROOTS": ",".join(settings.allowed_source_roots),
           "COMPUTE_ENGINE": "duckdb", "COST_PRICES": '{"cpu_hour": 1}'}
    runner = CliRunner()

    def fstore(*args: str, code: int = 0, **extra: str):
        result = runner.invoke(main, list(args), env={**env, **extra}, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    cost = json.loads(fstore("monitor", "cost", "--days", "3", "--json"))
    assert cost["total"]["cpu_seconds"] == run["cost"]["cpu_seconds"] > 0 and cost["prices"] == {"cpu_hour": 1.0}
    assert "(total)" in fstore("monitor", "cost")
    assert "error: COST_PRICES" in fstore("monitor", "cost", code=2, COST_PRICES="{oops")
    assert "4 of 4 features unused for 30 days (policy: report only)" in fstore("monitor", "unused")
    assert "UNUSED_ONLINE_DROP_DAYS" in fstore("monitor", "unused", "--drop", code=2)
    out = fstore("monitor", "unused", "--drop", UNUSED_ONLINE_DROP_DAYS="30")
    assert "dropped user_txn: amount_sum_2d, amount_x2, avg_amount_2d, txn_count_2d (3 keys)" in out
    out = fstore("monitor", "unused", "--restore", "user_txn:amount_x2")
    assert "user_txn:amount_x2 restored: 3 keys reloaded" in out
