"""The online store on a real 3-master Redis Cluster: key layout, one write per node per read, a node down.

The contract itself (typed values, newer wins, concurrent writers, loads from Spark and Arrow, the
load marker, the fast path) runs on the cluster through the parametrized fixtures of
test_online_store.py, test_online_load.py, test_online_load_arrow.py and test_online_fast_path.py.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import redis

from fstore.core.errors import Unavailable
from fstore.core.settings import Settings
from fstore.storage.online import open_online_store
from fstore.storage.online.base import Codec
from fstore.storage.online.redis_cluster import RedisClusterOnlineStore
from fstore.store import FeatureStore
from redis_cluster_support import RedisClusterServers, everything

pytestmark = pytest.mark.redis

T0 = datetime(2026, 1, 1)
USERS = Codec(name="user_stats", version=1, key_columns=("user_id",), key_types=("int",), features=(("clicks", "int"),))
PROFILE = Codec(name="user_profile", version=1, key_columns=("user_id",), key_types=("int",),
                features=(("age", "int"),))
PAIRS = Codec(name="user_merchant", version=1, key_columns=("user_id", "merchant_id"), key_types=("int", "string"),
              features=(("n", "int"),))


def _open(url: str, tmp_path) -> RedisClusterOnlineStore:
    store = open_online_store(Settings.from_env({"STORAGE_PATH": str(tmp_path), "REDIS_URL": url}))
    assert isinstance(store, RedisClusterOnlineStore)
    return store


def test_every_feature_set_of_one_entity_is_stored_in_its_slot(redis_cluster_url, redis_cluster_servers, tmp_path):
    """Keys are tagged by the entity key: all sets of user 7 share a slot (one node), compound keys tag all parts,
    and the values keep the single-Redis bytes."""
    store = _open(redis_cluster_url, tmp_path)
    for user in range(50):
        store.write_rows(USERS, [{"user_id": user, "event_timestamp": T0, "clicks": user}])
        store.write_rows(PROFILE, [{"user_id": user, "event_timestamp": T0, "age": 20 + user}])
    store.write_rows(PAIRS, [{"user_id": 7, "merchant_id": "m{1}", "event_timestamp": T0, "n": 3}])
    stored = everything(redis_cluster_url)
    assert stored[b"fs:user_stats:{1:7}"] == {b"@ts": b"1767225600000000", b"clicks": b"7"}
    assert stored[b"fs:user_profile:{1:7}"][b"age"] == b"27"
    assert stored[b"fs:user_merchant:{1:74:m{1}}"][b"n"] == b"3"  # the tag ends at the first "}": still one slot
    assert b"fsmeta:user_stats" in stored and not any(k.startswith(b"fs:user_stats:1:") for k in stored)
    owners = {user: redis_cluster_servers.owner(f"fs:user_stats:{{1:{user}}}") for user in range(50)}
    assert all(redis_cluster_servers.owner(f"fs:user_profile:{{1:{u}}}") == port for u, port in owners.items())
    assert len(set(owners.values())) == 3  # 50 entities spread over the three masters
    assert store.read(PAIRS, [PAIRS.key_of({"user_id": 7, "merchant_id": "m{1}"})])[0][1] == [b"3"]
    store.close()


def _count_sends(monkeypatch) -> list[int]:
    ports: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        ports.append(self.port)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return ports


def test_a_read_is_one_write_per_node_whatever_the_keys_and_sets(redis_cluster_url, redis_cluster_servers,
                                                                 tmp_path, monkeypatch):
    store = _open(redis_cluster_url, tmp_path)
    store.write_rows(USERS, [{"user_id": u, "event_timestamp": T0, "clicks": u} for u in range(300)])
    store.write_rows(PROFILE, [{"user_id": u, "event_timestamp": T0, "age": u} for u in range(300)])
    store.read_checked([("user_stats", [USERS.key_of({"user_id": 1})], ("clicks",))], ["user_stats"])  # warm
    sent = _count_sends(monkeypatch)
    results, states = store.read_checked(
        [("user_stats", [USERS.key_of({"user_id": u}) for u in range(300)], ("clicks",)),
         ("user_profile", [PROFILE.key_of({"user_id": u}) for u in range(300)], ("age",))],
        ["user_stats", "user_profile"])
    assert sorted(sent) == sorted(redis_cluster_servers.ports)  # 600 keys and 4 marker checks: one write per node
    assert [int(r[1][0]) for r in results[0]] == list(range(300)) == [int(r[1][0]) for r in results[1]]
    assert all(s.has_values and s.complete is None for s in states)
    owner = redis_cluster_servers.owner("fs:user_stats:{2:42}")
    sent.clear()
    # one entity over two sets: its node only
    one = store.read_many([("user_stats", [USERS.key_of({"user_id": 42})], ("clicks",)),
                           ("user_profile", [PROFILE.key_of({"user_id": 42})], ("age",))])
    assert sent == [owner]
    assert (one[0][0][1], one[1][0][1]) == ([b"42"], [b"42"])
    store.close()


def test_a_bulk_load_groups_its_script_calls_by_slot_and_keeps_newer_wins(redis_cluster_url, tmp_path):
    """Through the bulk path (``write_packed``, as the loaders call it): keys of many slots in one batch,
    one of them older than what is stored; each key is written or kept by its own event time."""
    from fstore.storage.online.base import encode_rows
    from fstore.storage.online.redis_store import bulk, encoded_payload

    store = _open(redis_cluster_url, tmp_path)
    store.write_rows(USERS, [{"user_id": 5, "event_timestamp": T0.replace(day=9), "clicks": 999}])
    rows = encode_rows(USERS, [{"user_id": u, "event_timestamp": T0, "clicks": u} for u in range(2000)])
    batches = [([bulk(r.key.encode()) for r in rows[i:i + 500]], [encoded_payload(r) for r in rows[i:i + 500]])
               for i in range(0, 2000, 500)]
    assert store.write_packed(USERS, iter(batches)) == 1999  # key 5 holds a newer value
    got = store.read(USERS, [USERS.key_of({"user_id": u}) for u in (0, 5, 1999)])
    assert [int(r[1][0]) for r in got] == [0, 999, 1999]
    assert store.newest_timestamp("user_stats") == T0.replace(day=9)  # fsmeta raised, never lowered
    store.close()


@pytest.fixture()
def own_cluster(tmp_path):
    """A cluster of this test's own: it stops one master."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    servers = RedisClusterServers(tmp_path / "cluster").start()
    yield servers
    servers.stop()


def test_one_node_down_fails_its_keys_fast_and_the_other_nodes_keep_answering(own_cluster, tmp_path):
    store = FeatureStore(Settings.from_env({"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": own_cluster.url,
                                            "REDIS_TIMEOUT": "0.2"}))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "user_stats", "entities": ["user"], "features": [
        {"name": "clicks", "data_type": "int", "transformation": "clicks"}]})
    now = datetime.now(timezone.utc)
    store.online.write_rows(store.feature_set_version("user_stats"),
                            [{"user_id": u, "event_timestamp": now, "clicks": u * 10} for u in range(60)])
    owner = {u: own_cluster.owner(f"fs:user_stats:{{{len(str(u))}:{u}}}") for u in range(60)}
    # The node to stop holds the set's load marker too: serving's marker check (part of a request's read
    # now and then) must not fail requests whose keys live on the other nodes.
    down = own_cluster.owner("fstore:loaded:user_stats")
    on_down = [u for u in owner if owner[u] == down]
    elsewhere = [u for u in owner if owner[u] != down]
    assert on_down and elsewhere

    def ask(users):
        return store.get_online_features(features=["clicks"], entities={"user_id": users})["features"]

    assert ask(elsewhere[:5] + on_down[:5])[str(on_down[0])] == {"clicks": on_down[0] * 10}
    own_cluster.stop_node(down)  # by its PID

    # Its keys: Unavailable naming the node, and after a few failures its breaker is open: no socket touched.
    for _ in range(3):
        with pytest.raises(Unavailable, match=f"127.0.0.1:{down}"):
            ask([on_down[0], elsewhere[0]])
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(Unavailable, match=f"node 127.0.0.1:{down} is failing"):
            ask([elsewhere[0], on_down[1]])
    assert (time.perf_counter() - started) / 20 < 0.02
    # The other nodes answer, also once the cluster has marked the node failed (cluster-node-timeout 2 s).
    assert ask(elsewhere[:10]) == {str(u): {"clicks": u * 10} for u in elsewhere[:10]}
    time.sleep(3)
    assert ask(elsewhere) == {str(u): {"clicks": u * 10} for u in elsewhere}
    with pytest.raises(Unavailable):
        store.online.ping()

    # Back (empty: no persistence): its breaker closes by its probe, with no restart of ours.
    own_cluster.start_node(down)
    own_cluster.wait_ok()
    deadline = time.monotonic() + 15
    while True:
        try:
            store.online.ping()
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the node's breaker did not close after it came back"
            time.sleep(0.1)
    out = store.get_online_features(features=["clicks"], entities={"user_id": [on_down[0], elsewhere[0]]})
    assert out["statuses"][str(on_down[0])]["clicks"] == "missing"
    assert out["features"][str(elsewhere[0])] == {"clicks": elsewhere[0] * 10}
    store.close()


def test_a_cluster_whose_seeds_do_not_answer_is_unavailable(tmp_path, free_port):
    store = _open(f"redis+cluster://127.0.0.1:{free_port}", tmp_path)
    with pytest.raises(Unavailable, match=f"no Redis Cluster seed of 127.0.0.1:{free_port} answered"):
        store.read(USERS, [USERS.key_of({"user_id": 1})])
    store.close()


def test_memory_usage_and_dropped_fields_span_every_node(redis_cluster_url, redis_cluster_servers, tmp_path):
    """Cost tracking's key count and MEMORY USAGE add up each master's keys of the set; usage-based retention's
    field drop reaches the keys on every master and keeps the other features."""
    both = Codec(name="user_both", version=1, key_columns=("user_id",), key_types=("int",),
                 features=(("clicks", "int"), ("age", "int")))
    store = _open(redis_cluster_url, tmp_path)
    store.write_rows(both, [{"user_id": u, "event_timestamp": T0, "clicks": u, "age": 30} for u in range(50)])
    store.write_rows(USERS, [{"user_id": 1, "event_timestamp": T0, "clicks": 1}])  # another set: not counted
    keys = [k for k in everything(redis_cluster_url) if k.startswith(b"fs:user_both:")]
    truth = sum(redis_cluster_servers.client(redis_cluster_servers.owner(k)).memory_usage(k) for k in keys)
    usage = store.memory_usage("user_both")
    assert usage["keys"] == len(keys) == 50 and usage["bytes"] == truth > 0  # under 100 keys a node: all sampled
    assert store.drop_fields("user_both", ["age"]) == 50
    got = store.read(both, [both.key_of({"user_id": u}) for u in (0, 49)])
    assert [r[1] for r in got] == [[b"0", None], [b"49", None]]
    store.close()
