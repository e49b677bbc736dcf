"""Retention (issue #28, part 1): a set's offline rows older than ``retention`` are deleted, on both engines.

The cutoff is ``now - retention``; a row whose event time is exactly the cutoff is KEPT (only rows strictly
older are deleted). Training sets saved before keep re-creating the same frame (their pinned version's files
survive the vacuum), and the run names them.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.core.errors import InvalidDefinition
from test_retrieval import H, T0, create_sets, events, fill_offline, labels, write_source

NOW = datetime(2026, 12, 7, 12, 0, 0)
CUTOFF = T0 + 49 * H  # user 1 has an event exactly here


@pytest.fixture()
def store(on_engine, settings, tmp_path):
    s = on_engine(settings, auto_upgrade=True)
    create_sets(s, write_source(tmp_path / "source", events()))
    fill_offline(s, "user_txn")
    yield s
    s.close()


def _table(store, version=None) -> pd.DataFrame:
    from fstore.storage import offline

    table = DeltaTable(offline.table_uri(store.settings, "user_txn"), version=version)
    return table.to_pandas().sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


def _ts(frame: pd.DataFrame) -> pd.Series:
    ts = pd.to_datetime(frame["event_timestamp"])
    return ts.dt.tz_convert(None) if ts.dt.tz is not None else ts


def test_retention_deletes_exactly_the_older_rows_and_training_sets_still_recreate(store):
    from fstore.storage import offline

    original = store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"],
                                             save_as="before").to_df()
    pinned = store.get_training_set("before")["offline_versions"]["user_txn"]
    fill_offline(store, "user_txn")  # a version pinned by no one, whose files the delete removes
    store.update_feature_set("user_txn", {"retention": int((NOW - CUTOFF).total_seconds())})
    assert store.get_feature_set("user_txn")["retention_seconds"] == int((NOW - CUTOFF).total_seconds())
    full = _table(store)
    older = _ts(full) < CUTOFF
    assert older.sum() > 0 and (~older).sum() > 0 and (_ts(full) == CUTOFF).sum() == 1
    version = offline.current_version(store.settings, "user_txn")

    [dry] = store.apply_retention("user_txn", dry_run=True, now=NOW)
    assert dry["dry_run"] is True and dry["rows_to_delete"] == older.sum() and dry["rows_deleted"] == 0
    assert dry["training_sets"] == [{"name": "before", "version": pinned, "rows_older": int(older.sum())}]
    assert offline.current_version(store.settings, "user_txn") == version
    pd.testing.assert_frame_equal(_table(store), full)

    [done] = store.apply_retention("user_txn", retain_hours=0, now=NOW, actor="ops")
    assert done["rows_deleted"] == older.sum() and done["version_before"] == version < done["version"]
    # The vacuum deleted the files of the version before the delete; the pinned version's stay.
    assert done["training_sets"] == dry["training_sets"] and done["vacuum"]["files"] > 0
    kept = _table(store)
    pd.testing.assert_frame_equal(kept, full[~older].reset_index(drop=True))
    assert _ts(kept).min() == CUTOFF  # the row exactly at the cutoff is kept

    root = offline.table_uri(store.settings, "user_txn")
    assert not all(Path(f).exists() for f in DeltaTable(root, version=version).file_uris())
    assert all(Path(f).exists() for f in DeltaTable(root, version=pinned).file_uris())
    pd.testing.assert_frame_equal(store.recreate_training_set("before").to_df(), original)
    # Historical retrieval of today's data no longer sees the deleted rows.
    today = store.get_historical_features(entity_df=labels(), features=["user_txn:amount_x2"]).to_df()
    assert today.user_txn__amount_x2.isna().sum() > original.user_txn__amount_x2.isna().sum()

    # Nothing older left: a second run (of every set declaring a retention) deletes nothing.
    [again] = store.apply_retention(None, retain_hours=0, now=NOW)
    assert again["feature_set"] == "user_txn" and again["rows_to_delete"] == again["rows_deleted"] == 0
    pd.testing.assert_frame_equal(_table(store), kept)


def test_a_bad_retention_is_refused_naming_the_field(store):
    with pytest.raises(InvalidDefinition, match="retention") as refused:
        store.update_feature_set("user_txn", {"retention": "forever"})
    assert refused.value.field == "retention"
    with pytest.raises(InvalidDefinition) as refused:
        store.update_feature_set("user_txn", {"retention_seconds": -5})
    assert refused.value.field == "retention_seconds"
    with pytest.raises(InvalidDefinition, match="declares no retention"):
        store.apply_retention("user_txn", now=NOW)
    assert store.apply_retention(now=NOW) == []  # no set declares one
    store.update_feature_set("user_txn", {"retention": "400d"})
    assert store.get_feature_set("user_txn")["retention_seconds"] == 400 * 86400
    store.update_feature_set("user_txn", {"retention": None})
    assert "retention_seconds" not in store.get_feature_set("user_txn")


# -- online: keys expire at their event time + TTL --------------------------------------------------------

def _codec(ttl):
    from fstore.storage.online.base import Codec

    return Codec(name="expiring", version=1, key_columns=("user_id",), key_types=("int",),
                 features=(("clicks", "int"),), ttl_seconds=ttl)


def test_redis_keys_expire_at_event_time_plus_ttl_and_an_older_write_leaves_the_expiry(any_redis_url, tmp_path):
    import redis

    from fstore.core.settings import Settings
    from fstore.storage.online import open_online_store
    from fstore.storage.online.base import to_micros

    from fstore.storage.online.base import key_prefix
    from fstore.storage.online.redis_cluster import tag

    online = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": any_redis_url}))
    cluster = any_redis_url.startswith("redis+cluster://")
    client = redis.RedisCluster.from_url("redis://" + any_redis_url.split("://")[1].split(",")[0]) \
        if cluster else redis.Redis.from_url(any_redis_url)

    def stored(codec, user):  # the Redis key name (a cluster puts the entity part in a hash tag)
        key = codec.key_of({"user_id": user}).encode()
        return tag(key_prefix(codec.name).encode(), key) if cluster else key

    try:
        codec, ttl = _codec(3600), 3600
        seen = datetime.utcnow().replace(microsecond=123456) - timedelta(minutes=10)
        key = stored(codec, 1)
        assert online.write_rows(codec, [{"user_id": 1, "event_timestamp": seen, "clicks": 3}]) == 1
        assert client.pexpiretime(key) == to_micros(seen) // 1000 + ttl * 1000
        # an older write is dropped (newer wins) and leaves the expiry; a newer one moves it
        online.write_rows(codec, [{"user_id": 1, "event_timestamp": seen - timedelta(minutes=5), "clicks": 1}])
        assert client.pexpiretime(key) == to_micros(seen) // 1000 + ttl * 1000
        later = seen + timedelta(minutes=1)
        online.write_rows(codec, [{"user_id": 1, "event_timestamp": later, "clicks": 4}])
        assert client.pexpiretime(key) == to_micros(later) // 1000 + ttl * 1000
        # a row already past its TTL is not written (nor counted); a set without TTL never expires
        assert online.write_rows(codec, [{"user_id": 2, "event_timestamp": seen - timedelta(hours=2), "clicks": 1}]) == 0
        assert client.exists(stored(codec, 2)) == 0
        forever = replace(_codec(None), name="forever")
        online.write_rows(forever, [{"user_id": 1, "event_timestamp": seen, "clicks": 3}])
        assert client.pttl(stored(forever, 1)) == -1
    finally:
        online.close()
        client.close()


def test_the_embedded_store_deletes_expired_rows_on_load(store):
    from fstore.storage.online import open_online_store
    from fstore.storage.online.base import as_codec, encode_rows

    assert not store.settings.redis_url
    codec = store.feature_set_version("user_txn")
    online = open_online_store(store.settings)
    try:
        stale = datetime.utcnow() - timedelta(days=3)  # user_txn keeps 2 days: its TTL is 1d, its window 2d
        fresh = datetime.utcnow() - timedelta(days=1)
        row = {"amount_x2": 1.0, "txn_count_2d": 1, "amount_sum_2d": 1.0, "avg_amount_2d": 1.0}
        # rows stored while they were fresh (write_encoded: below write_rows, which drops a row past its TTL)
        online.write_encoded(as_codec(codec), encode_rows(as_codec(codec), [{"user_id": 8, "event_timestamp": stale, **row},
                                                                         {"user_id": 9, "event_timestamp": fresh, **row}]))
        assert [r is not None for r in online.read(codec, [codec_key(online, codec, 8), codec_key(online, codec, 9)])] \
            == [True, True]
        store.reload_online("user_txn")
        assert [r is not None for r in online.read(codec, [codec_key(online, codec, 8), codec_key(online, codec, 9)])] \
            == [False, True]
    finally:
        online.close()


def codec_key(online, fsv, user):
    from fstore.storage.online.base import as_codec

    return as_codec(fsv).key_of({"user_id": user})


def test_a_bulk_load_into_redis_sets_each_keys_expiry(on_engine, settings, redis_url, tmp_path):
    """The bulk loader's packed writes (Spark executors, or the DuckDB engine's Arrow load) set the expiry too."""
    import redis

    s = on_engine(settings.with_(redis_url=redis_url), auto_upgrade=True)
    try:
        now = datetime.utcnow().replace(minute=0, second=0, microsecond=0)
        shift = now - (T0 + 120 * H)  # the events' last hour is the last one before now
        recent = events().assign(event_timestamp=lambda f: f.event_timestamp + shift)
        create_sets(s, write_source(tmp_path / "source", recent))
        fill_offline(s, "user_txn", T0 + shift, now + H)
        assert s.reload_online("user_txn")["keys_written"] == 2  # user 1 (last event 1 h ago), user 2 (43 h)
        client = redis.Redis.from_url(redis_url)
        keys = sorted(client.scan_iter(match="fs:user_txn:*"))
        keep_ms = 2 * 86400 * 1000  # TTL 1d, longest window 2d
        assert len(keys) == 2 and all(client.pexpiretime(k) == int(client.hget(k, "@ts")) // 1000 + keep_ms
                                      for k in keys)
        client.close()
    finally:
        s.close()


def test_the_cli_dry_run_reports_counts_and_a_set_without_retention_is_refused(store):
    import json

    from click.testing import CliRunner

    from fstore.cli import main

    env = {"STORAGE_PATH": store.settings.storage_path, "DATABASE_URL": store.settings.database_url,
           "SOURCE_ROOTS": ",".join(store.settings.allowed_source_roots), "COMPUTE_ENGINE": "duckdb"}
    refused = CliRunner().invoke(main, ["retention", "apply", "user_txn"], env=env)
    assert refused.exit_code != 0 and "declares no retention" in refused.output
    store.update_feature_set("user_txn", {"retention": "1d"})  # every 2024 row is older than that
    before = _table(store)
    dry = CliRunner().invoke(main, ["retention", "apply", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    [report] = json.loads(dry.output)
    assert report["feature_set"] == "user_txn" and report["rows_to_delete"] == len(before) and report["rows_deleted"] == 0
    pd.testing.assert_frame_equal(_table(store), before)
    text = CliRunner().invoke(main, ["retention", "apply", "user_txn"], env=env)
    assert text.exit_code == 0 and f"user_txn: deleted {len(before)} row(s)" in text.output
    assert len(_table(store)) == 0


def test_a_table_committed_by_delta_rs_is_cut_the_same(on_engine, settings, tmp_path):
    """The suite writes through delta-spark when its jars are cached; DELTA_WRITER=delta-rs commits otherwise."""
    s = on_engine(settings.with_(delta_writer="delta-rs"), auto_upgrade=True)
    try:
        create_sets(s, write_source(tmp_path / "source", events()))
        fill_offline(s, "user_txn")
        full = _table(s)
        s.update_feature_set("user_txn", {"retention": int((NOW - CUTOFF).total_seconds())})
        [done] = s.apply_retention("user_txn", now=NOW)
        assert done["rows_deleted"] == (_ts(full) < CUTOFF).sum() > 0
        pd.testing.assert_frame_equal(_table(s), full[_ts(full) >= CUTOFF].reset_index(drop=True))
    finally:
        s.close()


@pytest.mark.parametrize("backend", ["redis", "embedded"])
def test_a_value_past_its_ttl_is_served_the_same_whether_the_store_dropped_it_or_not(backend, on_engine, settings,
                                                                                       tmp_path, request):
    """Expiry only frees memory: serving judges the TTL on read, so a value past it answers null (or its default)
    whether the store still holds it (``expired``) or dropped it (``missing``: Redis at event time + TTL, the
    embedded store at its next load, and every write path for a row already past it)."""
    from fstore.storage.online.base import as_codec, encode_rows

    if backend == "redis":
        settings = settings.with_(redis_url=request.getfixturevalue("redis_url"))
    s = on_engine(settings, auto_upgrade=True)
    try:
        create_sets(s, write_source(tmp_path / "source", events()))
        codec = as_codec(s.feature_set_version("user_txn"))
        now = datetime.utcnow()
        row = {"amount_x2": 5.0, "txn_count_2d": 1, "amount_sum_2d": 2.5, "avg_amount_2d": 2.5}
        stale, fresh = now - timedelta(days=3), now - timedelta(hours=1)  # user_txn keeps 2 days (window 2d)
        s.online.write_encoded(codec, encode_rows(codec, [{"user_id": 8, "event_timestamp": stale, **row}]))
        assert s.online.write_rows(codec, [{"user_id": 9, "event_timestamp": stale, **row},
                                           {"user_id": 10, "event_timestamp": fresh, **row}]) == 1
        answer = s.get_online_features(features=["user_txn:amount_x2"], entities={"user_id": [8, 9, 10]})
        assert answer["features"] == {"8": {"user_txn:amount_x2": None}, "9": {"user_txn:amount_x2": None},
                                      "10": {"user_txn:amount_x2": 5.0}}
        held = "missing" if backend == "redis" else "expired"  # Redis dropped the stale key at once (PEXPIREAT)
        assert [answer["statuses"][k]["user_txn:amount_x2"] for k in ("8", "9", "10")] == [held, "missing", "present"]
    finally:
        s.close()


def test_a_compare_and_set_write_moves_the_expiry_to_its_new_event_time(any_redis_url, tmp_path):
    """Windowed pushes write by compare-and-set (``swap``): the key's expiry follows its new event time, so a key
    loaded earlier does not vanish at the old event time + TTL while its newer value is still within the TTL."""
    import redis

    from fstore.core.settings import Settings
    from fstore.storage.online import open_online_store
    from fstore.storage.online.base import encode_rows, key_prefix, to_micros
    from fstore.storage.online.redis_cluster import tag

    online = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": any_redis_url}))
    cluster = any_redis_url.startswith("redis+cluster://")
    client = redis.RedisCluster.from_url("redis://" + any_redis_url.split("://")[1].split(",")[0]) \
        if cluster else redis.Redis.from_url(any_redis_url)
    try:
        codec, ttl = replace(_codec(3600), name="swapped"), 3600
        key = codec.key_of({"user_id": 1})
        stored = tag(key_prefix(codec.name).encode(), key.encode()) if cluster else key.encode()
        first = datetime.utcnow().replace(microsecond=0) - timedelta(minutes=50)
        online.write_rows(codec, [{"user_id": 1, "event_timestamp": first, "clicks": 1}])
        assert client.pexpiretime(stored) == to_micros(first) // 1000 + ttl * 1000
        later = first + timedelta(minutes=40)
        [row] = encode_rows(codec, [{"user_id": 1, "event_timestamp": later, "clicks": 2}])
        assert online.swap(codec.name, codec.feature_names, "clicks", [(key, to_micros(first), b"1", row.ts, row.values)],
                           keep_ms=ttl * 1000) == [True]
        assert client.pexpiretime(stored) == to_micros(later) // 1000 + ttl * 1000
    finally:
        online.close()
        client.close()
