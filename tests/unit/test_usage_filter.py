"""The usage report's feature_set filter: a name must be known (registered, or with usage of its own)."""
from __future__ import annotations

from datetime import datetime

import pytest

from fstore.core.errors import NotFound
from fstore.registry.models import UsageRow
from fstore.core.settings import Settings
from fstore.store import FeatureStore
from fstore.ops.usage import query_usage

MINUTE = datetime(2026, 11, 1, 12, 0)


@pytest.fixture()
def store(tmp_path):
    store = FeatureStore(Settings.from_env({"STORAGE_PATH": str(tmp_path)}))
    with store.transaction() as s:  # usage left by a feature set deleted since
        s.add(UsageRow(minute=MINUTE, api_key="k", endpoint="online", feature_set="gone", requests=3, entities=3,
                       entities_found=3, cache_hits=0, latency_ms=[3]))
    return store


def _usage(store, name, allowed=None):
    with store.transaction() as s:
        return query_usage(s, start=datetime(2026, 11, 1), end=datetime(2026, 11, 2), feature_set=name, allowed_set=allowed)


def test_a_deleted_sets_usage_stays_readable(store):
    assert [(i["feature_set"], i["requests"]) for i in _usage(store, "gone")["items"]] == [("gone", 3)]


def test_a_name_with_no_set_and_no_usage_is_not_found(store):
    with pytest.raises(NotFound, match="'gnoe'") as caught:
        _usage(store, "gnoe")
    assert caught.value.field == "feature_set"


def test_a_set_the_grant_hides_reads_as_unknown(store):
    with pytest.raises(NotFound, match="'gone'"):
        _usage(store, "gone", allowed=lambda name: name != "gone")
