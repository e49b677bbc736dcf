"""Online serving through the SDK, on the real Redis and the embedded store, with a real registry."""
from __future__ import annotations

from datetime import datetime

import pytest

from fstore.core.errors import InvalidDefinition, NotFound, TooLarge
from fstore.storage.online.base import to_micros
from fstore.serving.online import clear_caches
from fstore.core.settings import Settings
from fstore.store import FeatureStore

# Rows are written at T0 and read at fixed instants after it (``now_micros``). T0 lies ahead of the wall
# clock: writes drop a row already past its TTL (60 s here) and Redis expires keys at event time + TTL, so
# a T0 in the past would leave nothing stored; ahead, the TTL is judged only at the instants the tests give.
T0 = datetime(2099, 1, 1, 12, 0, 0)
NOW = to_micros(T0) + 10 * 1_000_000


def _make_store(settings: Settings) -> FeatureStore:
    store = FeatureStore(settings)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_entity({"name": "merchant", "join_keys": ["merchant_id"], "value_type": "string"})
    store.create_feature_set({"name": "user_stats", "entities": ["user"], "ttl": "60s", "features": [
        {"name": "clicks", "data_type": "int", "transformation": "clicks", "default_value": 0},
        {"name": "score", "data_type": "float", "transformation": "score"},
        {"name": "label", "data_type": "string", "transformation": "label"},
    ]})
    store.create_feature_set({"name": "merchant_stats", "entities": ["merchant"], "features": [
        {"name": "risk", "data_type": "float", "transformation": "risk"},
        {"name": "score", "data_type": "float", "transformation": "score"},
    ]})
    store.create_feature_set({"name": "pair_stats", "entities": ["user", "merchant"], "features": [
        {"name": "pair_count", "data_type": "int", "transformation": "n"},
    ]})
    users = store.feature_set_version("user_stats")
    store.online.write_rows(users, [
        {"user_id": 1, "event_timestamp": T0, "clicks": 5, "score": 0.5, "label": "a"},
        {"user_id": 2, "event_timestamp": T0, "clicks": None, "score": 2.0, "label": ""},
    ])
    store.online.write_rows(store.feature_set_version("merchant_stats"), [
        {"merchant_id": "m:7", "event_timestamp": T0, "risk": 0.9, "score": 9.0}])
    store.online.write_rows(store.feature_set_version("pair_stats"), [
        {"user_id": 1, "merchant_id": "m:7", "event_timestamp": T0, "pair_count": 3}])
    return store


@pytest.fixture(params=["redis", "embedded"])
def store(request, tmp_path):
    env = {"STORAGE_PATH": str(tmp_path / "store")}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    s = _make_store(Settings.from_env(env))
    yield s
    s.close()


def test_columns_request_with_statuses_nulls_and_defaults(store):
    from fstore.serving.online import get_online_features

    out = get_online_features(store, features=["clicks", "user_stats:score", "label"],
                              entities={"user_id": ["1", 2, 3]}, now_micros=NOW)
    assert out["features"] == {
        "1": {"clicks": 5, "user_stats:score": 0.5, "label": "a"},
        "2": {"clicks": None, "user_stats:score": 2.0, "label": ""},  # a stored null stays null
        "3": {"clicks": 0, "user_stats:score": None, "label": None},  # missing: the default or null
    }
    assert out["statuses"]["1"] == {"clicks": "present", "user_stats:score": "present", "label": "present"}
    assert set(out["statuses"]["3"].values()) == {"missing"}
    meta = out["metadata"]
    assert meta["cache_hit"] is False and meta["feature_sets"] == {"user_stats": 1} and meta["latency_ms"] >= 0


def test_the_sdk_method_answers_the_seed_shape(store):
    out = store.get_online_features(features=["clicks"], entities={"user_id": "1"})
    assert set(out) == {"features", "statuses", "metadata"} and "1" in out["features"]


@pytest.mark.parametrize(("age_seconds", "status"), [(0, "present"), (60, "present"), (60.000001, "expired"), (3600, "expired")])
def test_ttl_edge(store, age_seconds, status):
    from fstore.serving.online import get_online_features

    now = to_micros(T0) + round(age_seconds * 1_000_000)
    out = get_online_features(store, features=["clicks", "score"], entities={"user_id": 1}, feature_sets=["user_stats"],
                              now_micros=now)
    assert out["statuses"]["1"] == {"clicks": status, "score": status}
    if status == "expired":  # never the stale value: the default (clicks) or null (score)
        assert out["features"]["1"] == {"clicks": 0, "score": None}
    else:
        assert out["features"]["1"] == {"clicks": 5, "score": 0.5}


def test_rows_with_compound_keys_and_sets_keyed_by_different_entities(store):
    from fstore.serving.online import get_online_features

    out = get_online_features(store, features=["clicks", "risk", "pair_count", "merchant_stats:score"],
                              entities=[{"user_id": 1, "merchant_id": "m:7"}, {"user_id": "2", "merchant_id": "m:8"}],
                              now_micros=NOW)
    assert out["features"] == {
        "user_id=1,merchant_id=m:7": {"clicks": 5, "risk": 0.9, "pair_count": 3, "merchant_stats:score": 9.0},
        "user_id=2,merchant_id=m:8": {"clicks": None, "risk": None, "pair_count": None, "merchant_stats:score": None},
    }
    assert out["statuses"]["user_id=2,merchant_id=m:8"] == {
        "clicks": "present", "risk": "missing", "pair_count": "missing", "merchant_stats:score": "missing"}
    assert out["metadata"]["feature_sets"] == {"user_stats": 1, "merchant_stats": 1, "pair_stats": 1}
    with pytest.raises(InvalidDefinition, match="needs entity key merchant_id"):
        get_online_features(store, features=["clicks", "risk"], entities=[{"user_id": 1}])


def test_ambiguous_and_unknown_names(store):
    with pytest.raises(InvalidDefinition) as err:
        store.get_online_features(features=["score"], entities={"user_id": 1})
    assert err.value.http_status == 422
    assert "merchant_stats:score" in err.value.message and "user_stats:score" in err.value.message
    # a feature_sets scope removes the ambiguity
    out = store.get_online_features(features=["score"], entities={"user_id": 1}, feature_sets=["user_stats"])
    assert "score" in out["features"]["1"]
    twice = store.get_online_features(features=["score"], entities={"user_id": 1},
                                      feature_sets=["user_stats", "user_stats"])  # a set named twice counts once
    assert twice["features"] == out["features"]
    with pytest.raises(NotFound, match="nope"):
        store.get_online_features(features=["nope"], entities={"user_id": 1})
    with pytest.raises(NotFound, match="no_such_set"):
        store.get_online_features(features=["no_such_set:clicks"], entities={"user_id": 1})
    with pytest.raises(NotFound, match="feature risk not found in feature set user_stats"):
        store.get_online_features(features=["user_stats:risk"], entities={"user_id": 1})


@pytest.mark.parametrize(("entities", "message"), [
    ({"user_id": ["1", "2"], "merchant_id": "m"}, "mixes lists"),
    ({"user_id": ["1", "2"], "merchant_id": ["m"]}, "different lengths"),
    ({"usr_id": "1"}, "usr_id"),
    ({"user_id": "abc"}, "not a int"),
    ([{"user_id": 1}, "2"], r"entities\[1\]"),
    ({}, "at least one"),
    ("1", "must be an object"),
    ({"merchant_id": "m:7"}, "merchant_id are not join keys"),
])
def test_bad_entities_name_the_problem(store, entities, message):
    with pytest.raises(InvalidDefinition, match=message) as err:
        store.get_online_features(features=["clicks"], entities=entities)
    assert err.value.field == "entities"


def test_entity_limit(tmp_path, redis_url):
    store = _make_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url,
                                           "MAX_ENTITIES_PER_REQUEST": "3"}))
    store.get_online_features(features=["clicks"], entities={"user_id": [1, 2, 3]})
    with pytest.raises(TooLarge, match="4 entities") as err:
        store.get_online_features(features=["clicks"], entities={"user_id": [1, 2, 3, 4]})
    assert err.value.http_status == 413
    store.close()


def test_cache_hits_skip_the_online_store(tmp_path, redis_url):
    from fstore.serving.online import get_online_features

    store = _make_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url,
                                           "SERVING_CACHE_ENABLED": "true", "SERVING_CACHE_TTL": "30"}))
    online = store.online
    reads = []
    original = online.read_checked  # serving's one read (values, and the load markers: fstore.storage.online.marker)
    online.read_checked = lambda requests, names: reads.append(requests) or original(requests, names)
    first = get_online_features(store, features=["clicks"], entities={"user_id": [1, 3]}, now_micros=NOW)
    assert first["metadata"]["cache_hit"] is False and first["metadata"]["cache_misses"] == 2
    # a request for other features of the same set is answered by the same cache entries
    second = get_online_features(store, features=["user_stats:score", "clicks"], entities={"user_id": ["3", 1]},
                                 now_micros=NOW)
    assert second["metadata"]["cache_hit"] is True and second["metadata"]["cache_hits"] == 2
    assert second["features"] == {"3": {"user_stats:score": None, "clicks": 0},
                                  "1": {"user_stats:score": 0.5, "clicks": 5}}
    assert len(reads) == 1
    # a cached value still expires by the set's TTL at read time
    later = get_online_features(store, features=["clicks"], entities={"user_id": 1}, now_micros=NOW + 3600 * 10**6)
    assert later["statuses"]["1"]["clicks"] == "expired" and later["metadata"]["cache_hit"] is True
    mixed = get_online_features(store, features=["clicks"], entities={"user_id": [1, 2]}, now_micros=NOW)
    assert mixed["metadata"]["cache_hit"] is False and mixed["metadata"]["cache_hits"] == 1
    assert len(reads) == 2
    store.close()


def test_name_resolution_is_cached_then_refreshed(store):
    """Serving resolves from its registry snapshot; a change made elsewhere shows after a refresh."""
    from contextlib import contextmanager

    from fstore.serving import online as serving
    from fstore.store import FeatureStore

    calls = []
    original = store.transaction

    @contextmanager
    def counted():
        calls.append(1)
        with original() as s:
            yield s

    store.transaction = counted
    store.get_online_features(features=["user_stats:clicks"], entities={"user_id": 1})
    first = len(calls)
    store.get_online_features(features=["user_stats:clicks"], entities={"user_id": 1})
    assert first >= 1 and len(calls) == first  # the second request did not touch the registry
    other = FeatureStore(store.settings)  # another process's change: this store's caches are not told
    other.create_feature({"feature_set": "user_stats", "name": "added", "data_type": "int", "transformation": "1"})
    other.close()
    assert serving._state(store).snapshot.refresh()  # what the background refresh does every RESOLVE_TTL_SECONDS
    out = store.get_online_features(features=["user_stats:added"], entities={"user_id": 1})
    assert out["metadata"]["feature_sets"] == {"user_stats": 2} and out["statuses"]["1"]["user_stats:added"] == "missing"
    assert out["metadata"]["degraded"] is False
    assert serving.RESOLVE_TTL_SECONDS <= 2.0


def test_a_set_not_online_enabled_is_refused(store):
    store.create_feature_set({"name": "offline_only", "entities": ["user"], "online_enabled": False,
                              "features": [{"name": "x", "data_type": "int", "transformation": "x"}]})
    with pytest.raises(InvalidDefinition, match="not online-enabled"):
        store.get_online_features(features=["offline_only:x"], entities={"user_id": 1})


def test_serving_records_prometheus_figures(store):
    from prometheus_client import REGISTRY

    def value(name, labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    misses = value("fstore_online_cache_total", {"feature_set": "user_stats", "result": "miss"})
    trips = value("fstore_online_store_roundtrip_seconds_count", {"operation": "read"})
    store.get_online_features(features=["clicks"], entities={"user_id": [1, 2]})
    assert value("fstore_online_cache_total", {"feature_set": "user_stats", "result": "miss"}) == misses + 1
    assert value("fstore_online_store_roundtrip_seconds_count", {"operation": "read"}) == trips + 1


def test_the_value_cache_stays_bounded(tmp_path, redis_url, monkeypatch):
    from fstore.serving import online as serving

    monkeypatch.setattr(serving, "CACHE_MAX_ENTRIES", 4)
    store = _make_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": redis_url,
                                           "SERVING_CACHE_ENABLED": "true", "SERVING_CACHE_TTL": "60"}))
    for user in range(20):
        store.get_online_features(features=["clicks"], entities={"user_id": user})
        assert len(serving._state(store).values) <= 4
    # the newest keys survived eviction and still answer from the cache
    assert store.get_online_features(features=["clicks"], entities={"user_id": 19})["metadata"]["cache_hit"] is True
    store.close()


def test_float_sets_decode_in_one_parse_with_missing_expired_and_null_rows_in_place(store):
    """An all-float group's values are parsed at once; skipped rows must not shift the values of later rows."""
    from datetime import timedelta

    from fstore.serving.online import get_online_features

    store.create_feature_set({"name": "float_stats", "entities": ["user"], "ttl": "60s", "features": [
        {"name": "a", "data_type": "float", "transformation": "a"},
        {"name": "b", "data_type": "float", "transformation": "b", "default_value": 7.5},
    ]})
    store.online.write_rows(store.feature_set_version("float_stats"), [
        {"user_id": 1, "event_timestamp": T0, "a": 0.1, "b": -0.0},
        {"user_id": 2, "event_timestamp": T0 - timedelta(seconds=120), "a": 2.0, "b": 2.0},  # expired at NOW
        {"user_id": 4, "event_timestamp": T0, "a": None, "b": 4.0},  # a stored null
        {"user_id": 5, "event_timestamp": T0, "a": 1e-5, "b": 1e300},
    ])
    out = get_online_features(store, features=["a", "b"], feature_sets=["float_stats"],
                              entities={"user_id": [1, 2, 3, 5, 1]}, now_micros=NOW)
    assert out["features"] == {"1": {"a": 0.1, "b": -0.0}, "2": {"a": None, "b": 7.5}, "3": {"a": None, "b": 7.5},
                               "5": {"a": 1e-5, "b": 1e300}}
    assert str(out["features"]["1"]["b"]) == "-0.0"
    assert out["statuses"]["2"] == {"a": "expired", "b": "expired"}
    assert out["statuses"]["3"] == {"a": "missing", "b": "missing"}
    assert out["statuses"]["5"] == {"a": "present", "b": "present"}
    with_null = get_online_features(store, features=["b", "a"], feature_sets=["float_stats"],
                                    entities={"user_id": [5, 4, 1]}, now_micros=NOW)
    assert with_null["features"] == {"5": {"b": 1e300, "a": 1e-5}, "4": {"b": 4.0, "a": None},
                                     "1": {"b": -0.0, "a": 0.1}}
    assert with_null["statuses"]["4"] == {"b": "present", "a": "present"}  # a stored null is present, as null


@pytest.mark.parametrize(("features", "entities", "now", "counts"), [
    (["clicks", "user_stats:score", "label"], {"user_id": ["1", 2, 3]}, NOW, [1, 2, 2]),  # stored null, missing
    (["clicks", "user_stats:score", "label"], {"user_id": [1, 2]}, NOW + 3600 * 1_000_000, [0, 0, 0]),  # expired
    (["user_stats:score", "merchant_stats:score"], {"user_id": [1, 2, 5]}, NOW, [2, 3]),  # all-float sets
    (["clicks", "risk", "pair_count"], [{"user_id": 1, "merchant_id": "m:7"}, {"user_id": 2, "merchant_id": "m:8"}],
     NOW, [1, 1, 1]),  # sets keyed by different entities, a compound key
])
def test_the_coverage_serving_counts_is_what_usage_reads_from_the_answer(store, features, entities, now, counts):
    """Usage takes the fast path's coverage in place of parsing the answer: both count the same."""
    from fstore.ops import usage
    from fstore.serving.online import answer_online

    if "merchant_stats:score" in features:
        entities = [{"user_id": u, "merchant_id": "m:7"} for u in entities["user_id"]]
    answer, coverage = answer_online(store, features=features, entities=entities, now_micros=now)
    pairs = usage._asked(usage.asks({"features": features}), lambda name: "")
    entity_count, found = usage._found(pairs, answer)
    assert coverage.entities == entity_count == len(answer["features"])
    assert [coverage.found[w] for _, _, w in pairs] == list(found.values()) == counts
    assert coverage.cache_hit is answer["metadata"]["cache_hit"]


def test_a_repeated_entity_row_leaves_the_counting_to_the_answer(store):
    from fstore.serving.online import answer_online

    answer, coverage = answer_online(store, features=["clicks"], entities={"user_id": [1, 1]}, now_micros=NOW)
    assert coverage is None and list(answer["features"]) == ["1"]
