"""A stream batch's offline append (``append_batch``): Delta's idempotent write, without Spark or a broker."""
from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
from deltalake import DeltaTable

from fstore.registry.repo import load_feature_set_version
from fstore.registry.runs import feature_set_row
from fstore.storage.offline import table_uri
from fstore.storage.offline_arrow import append_batch
from test_stream_kafka import kafka_body, new_store

T0 = datetime(2024, 3, 1)


def rows(n: int, start: int = 0, *, null_time: bool = False) -> tuple[pa.Table, list[str]]:
    times = [None if null_time and i == 0 else T0 + timedelta(minutes=start + i) for i in range(n)]
    table = pa.table({"user_id": list(range(n)), "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
                      "created_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
                      "clicks_x2": list(range(n)), "page_upper": ["P"] * n})
    return table, [f"kafka:t:0:{start + i}" for i in range(n)]


def test_a_batch_version_is_appended_once_and_a_new_app_id_is_a_new_stream(tmp_path):
    store = new_store(tmp_path)
    store.create_feature_set(kafka_body("127.0.0.1:9", "clicks"))
    with store.transaction() as s:
        fsv = load_feature_set_version(s, feature_set_row(s, "clicks_stream").id, secrets=store.secrets)
    first = append_batch(store.settings, fsv, *rows(3), app_id="a", version=0)
    assert (first["appended"], first["replayed"]) == (3, False)
    again = append_batch(store.settings, fsv, *rows(3), app_id="a", version=0)  # the replay after a crash
    assert (again["appended"], again["replayed"], again["offline_version"]) == (0, True, first["offline_version"])
    older = append_batch(store.settings, fsv, *rows(2, 10), app_id="a", version=0)
    assert older["replayed"] is True
    nxt = append_batch(store.settings, fsv, *rows(2, 10, null_time=True), app_id="a", version=1)
    assert (nxt["appended"], nxt["dropped"]) == (1, 1)  # a row without an event time is counted, not written
    other = append_batch(store.settings, fsv, *rows(1, 20), app_id="b", version=0)  # a new checkpoint's batch 0
    assert other["appended"] == 1
    table = DeltaTable(table_uri(store.settings, "clicks_stream"))
    stored = table.to_pandas()
    assert len(stored) == 5 and stored["push_id"].is_unique
    assert sorted(stored["push_id"]) == ["kafka:t:0:0", "kafka:t:0:1", "kafka:t:0:11", "kafka:t:0:2", "kafka:t:0:20"]
    assert table.transaction_version("a") == 1 and table.transaction_version("b") == 0
    store.close()
