"""API keys, grants, scope rules and the pure helpers of usage and monitoring (SQLite file registry, no services)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from fstore.ops import auth
from fstore.api.security import required_scope
from fstore.core.errors import InvalidDefinition, NotFound, Unauthorized
from fstore.ops.monitoring import _feature_stats, late_against_schedule
from fstore.registry.models import ApiKeyRow, utcnow
from fstore.store import FeatureStore
from fstore.ops.usage import BUCKETS_MS, asks, bucket_index, percentile, summarize_online


@pytest.fixture()
def store(settings):
    store = FeatureStore(settings)
    yield store
    store.close()


def test_a_key_is_shown_once_and_only_its_hash_is_stored(store):
    with store.transaction() as s:
        created = auth.create_key(s, owner="alice", scopes="read_registry, serve_online", feature_sets=["payments"])
    key = created["key"]
    assert key.startswith("fsk_") and len(key) >= 40 and created["prefix"] == key[:12]
    with store.transaction() as s:
        row = s.scalar(select(ApiKeyRow))
        assert row.key_hash == auth.hash_key(key) and len(row.key_hash) == 64
        assert key not in str([getattr(row, c.name) for c in ApiKeyRow.__table__.columns])
        assert "key" not in auth.get_key(s, created["id"]) and "key" not in auth.list_keys(s)["items"][0]
        assert "key_hash" not in auth.get_key(s, created["prefix"])
        verified = auth.verify_key(s, key)
    assert verified.owner == "alice" and verified.scopes == {"read_registry", "serve_online"}
    assert verified.grant.feature_sets == {"payments"}


def test_two_keys_never_collide(store):
    with store.transaction() as s:
        keys = {auth.create_key(s, owner="a", scopes=["admin"])["key"] for _ in range(20)}
    assert len(keys) == 20


def test_expired_and_revoked_keys_fail_like_unknown_ones(store):
    with store.transaction() as s:
        short = auth.create_key(s, owner="a", scopes=["admin"], expires_in="1h")
        gone = auth.create_key(s, owner="b", scopes=["admin"])
    assert short["expires_at"] is not None and short["status"] == "active"
    with store.transaction() as s:
        auth.verify_key(s, short["key"])
        s.execute(update(ApiKeyRow).where(ApiKeyRow.id == short["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
        revoked = auth.revoke_key(s, gone["id"])
        assert revoked["status"] == "revoked" and auth.revoke_key(s, gone["id"])["revoked_at"] == revoked["revoked_at"]
    messages = set()
    for key in (short["key"], gone["key"], "fsk_unknown", "", None, "x" * 1000):
        with store.transaction() as s, pytest.raises(Unauthorized) as info:
            auth.verify_key(s, key)
        messages.add(info.value.message)
    assert messages == {"missing or invalid API key"}
    with store.transaction() as s:
        assert auth.get_key(s, short["id"])["status"] == "expired"
        assert [k["id"] for k in auth.list_keys(s, include_inactive=False)["items"]] == []


def test_the_verifier_cache_forgets_a_revoked_key_and_checks_expiry(store):
    with store.transaction() as s:
        created = auth.create_key(s, owner="a", scopes=["admin"])
    verifier = auth.KeyVerifier(store.transaction, ttl=60)
    assert verifier.verify(created["key"]).id == created["id"]
    with store.transaction() as s:
        auth.revoke_key(s, created["id"])
    assert verifier.verify(created["key"]).id == created["id"]  # cached for up to ttl in other processes
    verifier.forget([created["id"]])
    with pytest.raises(Unauthorized):
        verifier.verify(created["key"])


def test_last_used_is_recorded(store):
    with store.transaction() as s:
        created = auth.create_key(s, owner="a", scopes=["admin"])
    with store.transaction() as s:
        auth.verify_key(s, created["key"])
    with store.transaction() as s:
        assert auth.get_key(s, created["id"])["last_used_at"] is not None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"owner": "a", "scopes": ["root"]}, "scopes"),
    ({"owner": "a", "scopes": []}, "scopes"),
    ({"owner": "a", "scopes": 5}, "scopes"),
    ({"owner": " ", "scopes": ["admin"]}, "owner"),
    ({"owner": None, "scopes": ["admin"]}, "owner"),
    ({"owner": "a", "scopes": ["admin"], "expires_in": "-1d"}, "expires_in"),
    ({"owner": "a", "scopes": ["admin"], "expires_in": "0"}, "expires_in"),
    ({"owner": "a", "scopes": ["admin"], "expires_at": datetime(2000, 1, 1)}, "expires_at"),
    ({"owner": "a", "scopes": ["admin"], "feature_sets": ["a b"]}, "feature_sets"),
    ({"owner": "a", "scopes": ["admin"], "features": ["a:b:c"]}, "features"),
    ({"owner": "a", "scopes": ["admin"], "features": [3]}, "features"),
])
def test_bad_keys_are_refused_naming_the_field_and_nothing_is_stored(store, kwargs, field):
    with pytest.raises(InvalidDefinition) as info, store.transaction() as s:
        auth.create_key(s, **kwargs)
    assert info.value.field == field
    with store.transaction() as s:
        assert auth.list_keys(s)["total"] == 0


def test_unknown_key_reference_is_not_found(store):
    with pytest.raises(NotFound), store.transaction() as s:
        auth.revoke_key(s, "fsk_nothing")


@pytest.mark.parametrize(("grant", "set_visible", "whole", "feature", "allowed"), [
    (auth.Grant(), True, True, ("any", "x"), True),
    (auth.Grant(feature_sets=frozenset({"a"})), True, True, ("a", "x"), True),
    (auth.Grant(feature_sets=frozenset({"b"})), False, False, ("a", "x"), False),
    (auth.Grant(features=frozenset({"a:x"})), True, False, ("a", "x"), True),
    (auth.Grant(features=frozenset({"a:x"})), True, False, ("a", "y"), False),
    (auth.Grant(features=frozenset({"x"})), False, False, ("a", "x"), True),
])
def test_grants(grant, set_visible, whole, feature, allowed):
    assert grant.allows_feature_set("a") is set_visible
    assert grant.allows_whole_set("a") is whole
    assert grant.allows_feature(*feature) is allowed


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/api/v1/feature-sets", "read_registry"),
    ("POST", "/api/v1/feature-sets", "write_registry"),
    ("DELETE", "/api/v1/features/x", "write_registry"),
    ("POST", "/api/v1/feature-sets/x/materialize", "materialize"),
    ("POST", "/api/v1/feature-sets/x/online/reload", "materialize"),
    ("GET", "/api/v1/feature-sets/x/runs", "read_registry"),
    ("POST", "/api/v1/serving/online", "serve_online"),
    ("POST", "/api/v1/push", "push"),
    ("POST", "/api/v1/serving/historical", "serve_historical"),
    ("POST", "/api/v1/serving/batch", "serve_historical"),
    ("GET", "/api/v1/keys", "admin"),
    ("DELETE", "/api/v1/keys/3", "admin"),
    ("GET", "/api/v1/audit", "admin"),
    ("GET", "/monitoring/usage", "admin"),
    ("GET", "/monitoring/metrics", "read_registry"),
    ("GET", "/ready", None),
    ("GET", "/something/new", "admin"),
])
def test_scope_rules(method, path, scope):
    assert required_scope(method, path) == scope


def test_admin_implies_every_scope():
    key = auth.ApiKey(id=1, prefix="fsk_x", owner="o", scopes=frozenset({"admin"}))
    assert all(key.has_scope(s) for s in auth.SCOPES)
    reader = auth.ApiKey(id=2, prefix="fsk_y", owner="o", scopes=frozenset({"read_registry"}))
    assert reader.has_scope("read_registry") and not reader.has_scope("write_registry")


# -- usage and monitoring helpers --------------------------------------------------------------------

def test_latency_histogram_percentiles():
    hist = [0] * (len(BUCKETS_MS) + 1)
    for ms in [0.3] * 90 + [4.0] * 9 + [20000.0]:
        hist[bucket_index(ms)] += 1
    assert percentile(hist, 0.5) == 0.5 and percentile(hist, 0.95) == 5 and percentile(hist, 0.99) == 5
    assert percentile(hist, 1.0) == BUCKETS_MS[-1]
    assert percentile([0] * len(hist), 0.5) is None


def test_summarize_online_counts_coverage_and_names_sets():
    body = {"features": ["payments:amount", "age", "risk"], "entities": {"user_id": [1, 2]}}
    response = {"features": {"1": {"payments:amount": 5.0, "age": None, "risk": {"value": 1, "status": "present"}},
                             "2": {"payments:amount": None, "age": 3, "risk": {"value": 2, "status": "expired"}}},
                "metadata": {"cache_hit": True}}
    summary = summarize_online(body, response, {"age": "profile", "risk": ""}.get)
    assert summary.features == (("payments", "amount"), ("profile", "age"), ("", "risk"))
    assert summary.entities == 2 and summary.cache_hit
    assert summary.found == {("payments", "amount"): 1, ("profile", "age"): 1, ("", "risk"): 1}
    assert summarize_online("junk", None).entities == 0


def test_quality_report_shapes():
    stats = _feature_stats({"x": {"count": 10, "nulls": 2, "violations": {"min": 1, "max": 2}, "mean": 1.5}})
    assert stats == {"x": {"count": 10, "nulls": 2, "violations": 3, "mean": 1.5, "null_rate": 0.2}}
    assert _feature_stats(None) == {} and _feature_stats({"x": 3}) == {}


@pytest.mark.parametrize(("now", "last_success", "late"), [
    (datetime(2024, 1, 1, 10, 30), datetime(2024, 1, 1, 10, 1), False),   # ran after the 10:00 tick
    (datetime(2024, 1, 1, 10, 30), datetime(2024, 1, 1, 9, 1), True),     # missed 10:00
    (datetime(2024, 1, 1, 10, 3), datetime(2024, 1, 1, 9, 1), False),     # 10:00 is still within its grace
    (datetime(2024, 1, 1, 10, 30), None, True),
])
def test_late_against_an_hourly_schedule(now, last_success, late):
    assert late_against_schedule("0 * * * *", last_success, now) is late
    assert late_against_schedule(None, last_success, now) is None


def test_a_set_created_after_the_tick_is_not_late():
    now = datetime(2024, 1, 1, 10, 30)
    assert late_against_schedule("0 * * * *", None, now, created_at=datetime(2024, 1, 1, 10, 20)) is False


def test_summarize_online_does_not_count_a_default_standing_in_for_a_missing_value():
    body = {"features": ["payments:amount", "payments:risk"], "entities": {"user_id": [1, 2, 3]}}
    response = {"features": {"1": {"amount": 5.0, "risk": 0.0}, "2": {"amount": None, "risk": 0.0},
                             "3": {"amount": 7.0, "risk": 0.5}},
                "statuses": {"1": {"amount": "present", "risk": "missing"}, "2": {"amount": "present", "risk": "expired"},
                             "3": {"amount": "present", "risk": "present"}}}
    summary = summarize_online(body, response)
    assert summary.entities == 3
    assert summary.found == {("payments", "amount"): 2, ("payments", "risk"): 1}


@pytest.mark.parametrize("names", [["amount", "risk", "payments:age"], ["amount"]])
def test_usage_counts_a_serving_answer_by_column_as_row_by_row(names):
    """The column count of serving's own answer (a status beside every value) equals the row loop's:
    a stored null is not found, nor a default standing in for a missing or expired value."""
    from fstore.ops import usage

    cases = [({n: 1.0 for n in names}, {n: "present" for n in names}),
             ({n: None for n in names}, {n: "present" for n in names}),      # stored nulls
             ({n: 0.0 for n in names}, {n: "missing" for n in names}),       # defaults
             ({n: 0.0 for n in names}, {n: "expired" for n in names}),
             ({n: i * 1.5 if i % 2 else None for i, n in enumerate(names)},
              {n: "present" if i % 2 else "missing" for i, n in enumerate(names)}),
             ({n: [1.0, None] for n in names}, {n: "present" for n in names})]
    response = {"features": {str(i): row for i, (row, _) in enumerate(cases)},
                "statuses": {str(i): status for i, (_, status) in enumerate(cases)}}
    pairs = usage._asked(usage.asks({"feature_sets": ["payments"], "features": names}), None)
    by_column = usage._found_by_column(pairs, response["features"], response["statuses"])
    assert by_column is not None
    rows = [(row, response["statuses"][eid]) for eid, row in response["features"].items()]
    expected = {(fs, f): sum(row[w] is not None and status[w] == "present" for row, status in rows)
                for fs, f, w in pairs}
    assert by_column == (len(cases), expected)
    # found: the all-present row, the list, and the mixed row's odd-placed names
    assert list(expected.values()) == [3 if i % 2 else 2 for i in range(len(names))]
    assert usage._found(pairs, response) == by_column
    # Any other shape is left to the row loop: a status map missing a row, or a name not written so.
    assert usage._found_by_column(pairs, response["features"], {"0": cases[0][1]}) is None
    assert usage._found_by_column(pairs, {"0": {"x": 1.0}}, {"0": {"x": "present"}}) is None


def test_usage_aggregate_adds_up_per_minute_key_set_and_feature():
    """The two-step aggregation gives the rows that adding every request one by one gives."""
    import orjson

    from fstore.ops.usage import UsageRecorder

    recorder = UsageRecorder(engine=None, resolve_set={"age": "profile"}.get)
    one = {"features": ["payments:amount", "age"], "entities": {"user_id": [1]}}
    two = {"features": ["payments:amount", "payments:amount"], "entities": {"user_id": [1, 2]}}
    answer = {"features": {"1": {"payments:amount": 5.0, "age": None}}, "metadata": {"cache_hit": False}}
    both = {"features": {"1": {"payments:amount": 1.0}, "2": {"payments:amount": {"value": 2, "status": "expired"}}},
            "metadata": {"cache_hit": True}}
    events = [(60.5, "online", "k1", one, answer, 0.3), (61.0, "online", "k1", one, orjson.dumps(answer), 4.0),
              (125.0, "online", "k1", one, answer, 0.3), (62.0, "online", "k2", two, both, 20.0),
              (62.5, "online", "k2", two, both, 0.3),
              (63.0, "online", "k2", "junk", b"not json", 1.0), (64.0, "online", "k2", {"features": [{}]}, None, 1.0)]

    expected: dict = {}
    for at, endpoint, key, body, response, ms in events:  # the oracle: one request at a time
        response = orjson.loads(response) if isinstance(response, bytes) and response.startswith(b"{") else response
        s = summarize_online(body, response, recorder._resolve_set)
        minute = datetime.fromtimestamp(at - at % 60, timezone.utc).replace(tzinfo=None)
        rows = [(("", ""), 0)] + [((fs, ""), 0) for fs in dict.fromkeys(fs for fs, _ in s.features)]
        rows += [((fs, f), s.found[(fs, f)]) for fs, f in s.features]
        for (fs, f), found in rows:
            slot = expected.setdefault((minute, key, endpoint, fs, f), [0, 0, 0, 0, [0] * (len(BUCKETS_MS) + 1)])
            slot[0] += 1
            slot[1] += s.entities
            slot[2] += found
            slot[3] += int(s.cache_hit)
            slot[4][bucket_index(ms)] += 1
    # What the request path keeps of each body (recorder.record): the features it asks
    assert recorder._aggregate([(at, e, k, asks(body), *rest) for at, e, k, body, *rest in events]) == expected
    assert expected[(datetime(1970, 1, 1, 0, 1), "k2", "online", "payments", "amount")][:4] == [4, 8, 8, 4]


def test_a_pending_usage_event_holds_nothing_the_garbage_collector_scans():
    """Pending events live up to the flush interval: holding parsed bodies and answers there set off
    the collector's full passes (74-106 ms at 100 entities); an event of strings and bytes does not."""
    import gc

    from fstore.ops.usage import UsageRecorder

    recorder = UsageRecorder(engine=None)
    body = {"features": ["s:a", "b", 3], "feature_sets": ["s", None], "entities": {"user_id": list(range(100))}}
    recorder.record(endpoint="online", api_key="k", body=body, response_body=b'{"features": {}}', latency_ms=1.0)
    for _ in range(3):  # the collector untracks nested tuples one level per pass
        gc.collect()
    (event,) = recorder._pending
    assert event[3] == (("s:a", "b"), ("s", None))
    assert not gc.is_tracked(event)


@pytest.mark.parametrize("expires_in", [10**30, 315360001, "3651d", "10000000000000000000000d", "1" * 5000],
                         ids=["huge_int", "a_second_over", "days", "huge_days", "5000_digits"])
def test_a_key_lives_at_most_ten_years(store, expires_in):
    with pytest.raises(InvalidDefinition) as info, store.transaction() as s:
        auth.create_key(s, owner="a", scopes=["admin"], expires_in=expires_in)
    assert info.value.field == "expires_in"
    assert "10 years" in info.value.message or "too long to be a duration" in info.value.message
    with store.transaction() as s:
        assert auth.list_keys(s)["total"] == 0
        longest = auth.create_key(s, owner="a", scopes=["admin"], expires_in=auth.MAX_LIFETIME_SECONDS)
    assert longest["expires_at"] is not None


@pytest.mark.parametrize(("grant", "field", "named"), [
    ({"feature_sets": ["payments", "nope"]}, "feature_sets", "'nope'"),
    ({"features": ["nope"]}, "features", "'nope'"),
    ({"features": ["payments:nope"]}, "features", "'nope' not found in feature set 'payments'"),
    ({"features": ["nope:amount"]}, "features", "'amount' not found in feature set 'nope'"),
])
def test_a_grant_names_only_registered_sets_and_features(store, grant, field, named):
    store.create_entity({"name": "user", "join_keys": ["user_id"]})
    store.create_feature_set({"name": "payments", "entities": ["user"],
                              "features": [{"name": "amount", "data_type": "float", "transformation": "amount"}]})
    with pytest.raises(NotFound) as info, store.transaction() as s:
        auth.create_key(s, owner="a", scopes=["admin"], registered_only=True, **grant)
    assert info.value.field == field and named in info.value.message, info.value.message
    with store.transaction() as s:
        assert auth.list_keys(s)["total"] == 0
        granted = auth.create_key(s, owner="a", scopes=["admin"], registered_only=True, feature_sets=["payments"],
                                  features=["amount", "payments:amount"])
    assert granted["grants"] == {"feature_sets": ["payments"], "features": ["amount", "payments:amount"]}
