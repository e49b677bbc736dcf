"""Windowed features of pushed events are exact (issue #25 item 3; ``fstore.compute.stream_windows``).

Differential, on each online store (the real Redis test database, the embedded SQLite store): events of many
users arrive in several pushes, mostly in time order, some late within the set's ``allowed_lateness`` (30 min),
some later than that. Then

- online answers at many instants after the data (just before and just after each event ages out of each
  window, at random) equal historical retrieval at the same instants over a *batch materialization* of the
  same applied events (a second set with the same features, its source those events);
- every pushed row stored offline (late ones within the lateness included) equals a plain-Python oracle over
  the events known when it arrived (the oracle is checked against the batch materialization's own rows);
- events beyond the lateness are not counted online, are counted in ``fstore_stream_late_events_total``,
  and are still stored offline (row features computed, windowed ones null: unknown).

Abuse: malformed lateness is refused naming the field; two threads pushing the same key lose no event (the
compare-and-set under them refuses a stale write); a push sent twice counts once online. A composite over
windows (``units_per_event``) is computed from the exact window values.
"""
from __future__ import annotations

import math
import random
import threading
from datetime import datetime, timedelta

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.core.errors import InvalidDefinition
from fstore.definitions.model import FeatureSet
from fstore.ops import metrics
from fstore.storage.offline import table_uri
from fstore.store import FeatureStore
from test_materialize_support import write_source

T0 = datetime(2024, 1, 1)
US = timedelta(microseconds=1)
LATENESS = timedelta(minutes=30)
SIZES = {"1h": timedelta(hours=1), "2h": timedelta(hours=2)}
USERS = list(range(1, 19))
NEVER_SEEN = 99
FEATURES = [
    {"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
    {"name": "n_1h", "data_type": "int", "window_size": "1h", "aggregation": "count"},
    {"name": "units_2h", "data_type": "int", "window_size": "2h", "aggregation": "sum", "transformation": "units"},
    {"name": "kinds_2h", "data_type": "int", "window_size": "2h", "aggregation": "count_distinct",
     "transformation": "kind"},
    {"name": "max_a_1h", "data_type": "float", "window_size": "1h", "aggregation": "max", "transformation": "amount",
     "window_filter": "kind = 'a'"},
    {"name": "avg_2h", "data_type": "float", "window_size": "2h", "aggregation": "avg", "transformation": "amount"},
    {"name": "min_1h", "data_type": "float", "window_size": "1h", "aggregation": "min", "transformation": "amount"},
    {"name": "units_per_event", "data_type": "float", "transformation": "units_2h / n_1h",  # a composite over windows
     "source_features": ["units_2h", "n_1h"]},
]
WINDOWED = [f["name"] for f in FEATURES if "window_size" in f]
COMPOSITE = "units_per_event"  # offline only: serving answers a composite from the stored row
NAMES = [f["name"] for f in FEATURES]


def body(name: str, source: str, *, online: bool = True, lateness: str | None = "30m", composite: bool = False) -> dict:
    """The set; ``composite``: with a composite over windows (its rows computed in a second pass over the exact
    window values), else the first pass's rows get the values set."""
    return {"name": name, "entities": ["user"], "online_enabled": online,
            **({"allowed_lateness": lateness} if lateness else {}),
            "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
            "features": FEATURES if composite else [f for f in FEATURES if f["name"] != COMPOSITE]}


@pytest.fixture(params=["redis", "embedded"])
def store(request, settings):
    if request.param == "redis":
        settings = settings.with_(redis_url=request.getfixturevalue("redis_url"))
    s = FeatureStore(settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    s.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    yield s
    s.close()


# -- the events and the oracle ---------------------------------------------------------------------

def make_events(seed: int) -> list[dict]:
    """Events of USERS over 6 hours, each with its arrival time: on time, late within the lateness, or later."""
    rng = random.Random(seed)
    out = []
    for user in USERS:
        times = sorted(T0 + timedelta(seconds=rng.randint(0, 6 * 3600)) for _ in range(rng.randint(6, 14)))
        times += [times[1], times[2] + SIZES["1h"], times[3] + SIZES["2h"] - US]  # a tie; one window apart (and -1 µs)
        for ts in times:
            roll = rng.random()
            delay = (timedelta(0) if roll < 0.75 else timedelta(seconds=rng.randint(1, 25 * 60)) if roll < 0.92
                     else timedelta(minutes=rng.randint(45, 120)))
            out.append({"user_id": user, "event_timestamp": ts, "amount": rng.randint(0, 40) / 4,
                        "units": rng.randint(-5, 50), "kind": rng.choice(["a", "b", "c"]), "arrives": ts + delay})
    out.sort(key=lambda e: (e["arrives"], e["event_timestamp"]))
    for i, e in enumerate(out):
        e["push_id"] = f"e{i}"
    return out


def batches(events: list[dict], count: int) -> list[list[dict]]:
    size = math.ceil(len(events) / count)
    return [events[i:i + size] for i in range(0, len(events), size)]


def classify(parts: list[list[dict]]) -> None:
    """The rule, event by event in arrival order: late when older than the user's newest applied event by more
    than the lateness. Marks ``e["late"]`` and ``e["batch"]``."""
    newest: dict[int, datetime] = {}
    for b, part in enumerate(parts):
        for e in part:
            e["batch"] = b
            n = newest.get(e["user_id"])
            e["late"] = n is not None and e["event_timestamp"] < n - LATENESS
            if not e["late"]:
                newest[e["user_id"]] = max(n or e["event_timestamp"], e["event_timestamp"])


def aggregate(events: list[dict], user: int, t: datetime) -> dict:
    """Every windowed feature at ``t`` over ``events`` of ``user`` (the window ``(t - size, t]``)."""
    def within(size: str, only_a: bool = False) -> list[dict]:
        return [e for e in events if e["user_id"] == user and t - SIZES[size] < e["event_timestamp"] <= t
                and (not only_a or e["kind"] == "a")]

    two, one, one_a = within("2h"), within("1h"), within("1h", True)
    return {"n_1h": len(one), "units_2h": sum(e["units"] for e in two) if two else None,
            "kinds_2h": len({e["kind"] for e in two}), "max_a_1h": max((e["amount"] for e in one_a), default=None),
            "avg_2h": sum(e["amount"] for e in two) / len(two) if two else None,
            "min_1h": min((e["amount"] for e in one), default=None)}


def same(got, want) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None or (isinstance(got, float) and math.isnan(got)):
        return False
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)


def offline(store: FeatureStore, name: str) -> list[dict]:
    frame = DeltaTable(table_uri(store.settings, name)).to_pandas()
    rows = []
    for r in frame.to_dict("records"):
        r["event_timestamp"] = pd.Timestamp(r["event_timestamp"]).tz_localize(None).to_pydatetime()
        rows.append({k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()})
    return rows


def late_counter(name: str) -> float:
    text = metrics.render()[0].decode()
    for line in text.splitlines():
        if line.startswith(f'fstore_stream_late_events_total{{feature_set="{name}"}}'):
            return float(line.split()[-1])
    return 0.0


def instants(applied: list[dict], rng: random.Random) -> list[datetime]:
    """After every applied event: each event's aging-out edge per window (± 1 µs), and random instants."""
    end = max(e["event_timestamp"] for e in applied)
    out = {end, end + US}
    for e in applied:
        for size in SIZES.values():
            edge = e["event_timestamp"] + size
            if edge - US >= end:
                out.update({edge - US, edge})
    picked = rng.sample(sorted(out), min(24, len(out)))
    return sorted(set(picked) | {end + timedelta(seconds=rng.randint(0, 3 * 3600)) for _ in range(4)})


# -- the differential test ---------------------------------------------------------------------------

@pytest.mark.parametrize("composite", [True, False], ids=["composite", "windows-only"])
def test_pushed_windows_equal_batch_materialization_and_historical_retrieval(store, tmp_path, composite):
    events = make_events(7)
    parts = batches(events, 6)
    classify(parts)
    applied = [e for e in events if not e["late"]]
    beyond = [e for e in events if e["late"]]
    late_within = [e for e in applied if any(o["event_timestamp"] > e["event_timestamp"] and o["arrives"] < e["arrives"]
                                             and o["user_id"] == e["user_id"] for o in applied)]
    assert beyond and len(late_within) > 10, "the data must exercise both kinds of late events"
    columns = ["user_id", "event_timestamp", "amount", "units", "kind"]
    source = write_source(tmp_path / "source", pd.DataFrame([{c: e[c] for c in columns} for e in applied]))
    store.create_feature_set(body("pushed", source, composite=composite))
    store.create_feature_set(body("batch", source, online=False, composite=composite))
    before = late_counter("pushed")

    results = [store.push("pushed", [{c: e[c] for c in [*columns, "push_id"]} for e in part], to="online_and_offline")
               for part in parts]
    assert sum(r["late_events"] for r in results) == len(beyond)
    assert late_counter("pushed") - before == len(beyond)
    assert all(r["rows_computed"] == len(p) for r, p in zip(results, parts))

    # Online at many instants == historical retrieval over the batch materialization of the applied events.
    store.materialize("batch", T0 - timedelta(days=1), T0 + timedelta(days=1))
    rng = random.Random(3)
    ats = instants(applied, rng)
    users = [*USERS, NEVER_SEEN]
    asked = pd.DataFrame([{"user_id": u, "event_timestamp": t} for t in ats for u in users])
    frame = store.get_historical_features(entity_df=asked, features=[f"batch:{f}" for f in WINDOWED]).to_df()
    want = {}
    for r in frame.to_dict("records"):
        t = pd.Timestamp(r["event_timestamp"]).tz_localize(None).to_pydatetime() \
            if pd.Timestamp(r["event_timestamp"]).tzinfo else pd.Timestamp(r["event_timestamp"]).to_pydatetime()
        want[(int(r["user_id"]), t)] = {f: r[f"batch__{f}"] for f in WINDOWED}
    compared = wrong = 0
    for t in ats:
        got = store.get_online_features(features=[f"pushed:{f}" for f in WINDOWED], entities={"user_id": users},
                                        at=t)["features"]
        for u in users:
            for f in WINDOWED:
                value = (got.get(str(u)) or {}).get(f"pushed:{f}")
                expected = want[(u, t)][f]
                expected = None if expected is None or pd.isna(expected) else float(expected)
                if u == NEVER_SEEN and value is None:
                    value = 0 if f in ("n_1h", "kinds_2h") else None  # no row at all: serving answers null
                compared += 1
                wrong += not same(value, expected)
                assert same(value, expected), (u, t, f, value, expected)
        # the oracle agrees with both
        for u in USERS[:4]:
            oracle = aggregate(applied, u, t)
            assert all(same(want[(u, t)][f], oracle[f]) for f in WINDOWED), (u, t)
    assert compared >= len(ats) * len(users) * len(WINDOWED) and wrong == 0

    # The batch materialization's rows == the oracle over all applied events (the oracle is right).
    for row in offline(store, "batch"):
        oracle = aggregate(applied, row["user_id"], row["event_timestamp"])
        assert all(same(row[f], oracle[f]) for f in WINDOWED), row
        assert not composite or same(row[COMPOSITE], oracle["units_2h"] / oracle["n_1h"]), row

    # Every pushed row offline (late ones too) == the oracle over the events known when it arrived.
    pushed = {r["push_id"]: r for r in offline(store, "pushed")}
    assert len(pushed) == len(events)
    for e in events:
        row = pushed[e["push_id"]]
        assert row["amount_x2"] == e["amount"] * 2
        if e["late"]:  # beyond the lateness: its window is unknown, null rather than wrong
            assert all(row.get(f) is None for f in [*WINDOWED, COMPOSITE]), row
            continue
        oracle = aggregate([o for o in applied if o["batch"] <= e["batch"]], e["user_id"], e["event_timestamp"])
        for f in WINDOWED:
            assert same(row[f], oracle[f]), (e, f, row[f], oracle[f])
        assert not composite or same(row[COMPOSITE], oracle["units_2h"] / oracle["n_1h"]), (e, row)


def test_events_beyond_lateness_are_counted_and_kept_offline_only(store, tmp_path):
    source = write_source(tmp_path / "source", pd.DataFrame([{"user_id": 1, "event_timestamp": T0, "amount": 1.0,
                                                               "units": 1, "kind": "a"}]))
    store.create_feature_set(body("pushed", source))
    before = late_counter("pushed")

    def event(minutes: float, amount: float) -> dict:
        return {"user_id": 1, "event_timestamp": T0 + timedelta(minutes=minutes), "amount": amount, "units": 1, "kind": "a"}

    store.push("pushed", [event(60, 1.0)], to="online_and_offline")
    within = store.push("pushed", [event(30, 2.0)], to="online_and_offline")  # exactly the lateness: applied
    later = store.push("pushed", [event(30, 4.0 - 0.5), event(29.99, 8.0)], to="online_and_offline")
    assert (within["late_events"], later["late_events"]) == (0, 1)
    assert late_counter("pushed") - before == 1
    got = store.get_online_features(features=["pushed:n_1h", "pushed:max_a_1h"], entities={"user_id": [1]},
                                    at=T0 + timedelta(minutes=60))["features"]["1"]
    assert got == {"pushed:n_1h": 3, "pushed:max_a_1h": 3.5}  # 1.0, 2.0, 3.5: not the 8.0 beyond the lateness
    rows = {r["amount_x2"]: r for r in offline(store, "pushed")}
    assert set(rows) == {2.0, 4.0, 7.0, 16.0}  # the late one is offline
    assert rows[16.0]["n_1h"] is None and rows[7.0]["n_1h"] == 2  # the late one's window is unknown: null


def test_a_push_sent_twice_counts_once_online(store, tmp_path):
    source = write_source(tmp_path / "source", pd.DataFrame([{"user_id": 1, "event_timestamp": T0, "amount": 1.0,
                                                               "units": 1, "kind": "a"}]))
    store.create_feature_set(body("pushed", source))
    rows = [{"user_id": 1, "event_timestamp": T0 + timedelta(minutes=m), "amount": 1.0, "units": 2, "kind": "b"}
            for m in (1, 2, 3)]
    store.push("pushed", rows, to="online_and_offline")
    again = store.push("pushed", rows[1:], to="online_and_offline")  # a replay: its ids are in the record
    assert (again["duplicate_events"], again["skipped"]) == (2, 2)
    got = store.get_online_features(features=["pushed:n_1h", "pushed:units_2h"], entities={"user_id": [1]},
                                    at=T0 + timedelta(minutes=3))["features"]["1"]
    assert got == {"pushed:n_1h": 3, "pushed:units_2h": 6}


# -- abuse ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "words"), [
    ("soon", "is not a duration"), ("-5m", "is not a duration"), (0, "must be positive"), (True, "must be a duration"),
    ("1 fortnight", "is not a duration"), (float("nan"), "finite"), ([1], "must be a duration"),
])
def test_malformed_lateness_is_refused_naming_the_field(value, words):
    with pytest.raises(InvalidDefinition) as caught:
        FeatureSet.from_dict({"name": "s", "entities": ["user"], "allowed_lateness": value})
    assert caught.value.field == "allowed_lateness" and words in caught.value.message


def test_two_threads_pushing_one_key_lose_no_event(store, tmp_path):
    source = write_source(tmp_path / "source", pd.DataFrame([{"user_id": 1, "event_timestamp": T0, "amount": 1.0,
                                                               "units": 1, "kind": "a"}]))
    store.create_feature_set(body("pushed", source))
    per_thread = 30
    start = threading.Barrier(2)
    errors = []

    def pusher(offset: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):  # interleaved minutes: each thread's events are late for the other's
                store.push("pushed", [{"user_id": 1, "event_timestamp": T0 + timedelta(minutes=2 * i + offset),
                                       "amount": float(2 * i + offset), "units": 1, "kind": "a"}])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pusher, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    end = T0 + timedelta(minutes=2 * per_thread - 1)
    got = store.get_online_features(features=["pushed:n_1h", "pushed:units_2h", "pushed:amount_x2"],
                                    entities={"user_id": [1]}, at=end)["features"]["1"]
    assert got == {"pushed:n_1h": 2 * per_thread, "pushed:units_2h": 2 * per_thread,
                   "pushed:amount_x2": 2.0 * (2 * per_thread - 1)}  # every event, and the newest row won


def test_pushes_extend_the_records_a_materialization_loaded(store, tmp_path):
    """The usual life: a run materializes the past (its online load writes each entity's record), then events
    are pushed, some late within the lateness, some older than the run's newest event of their entity. Online
    answers after the pushes equal historical retrieval over a materialization of all the events."""
    from datetime import timezone

    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)  # a run loads only recent rows online
    cutoff = now - timedelta(minutes=90)
    rng = random.Random(11)
    events = []
    for user in USERS:
        times = [cutoff - timedelta(minutes=rng.randint(1, 80)) for _ in range(rng.randint(2, 6))]  # materialized
        times += [cutoff - timedelta(minutes=5)]
        times += [cutoff + timedelta(seconds=rng.randint(0, 85 * 60)) for _ in range(rng.randint(2, 8))]  # pushed
        for ts in times:
            events.append({"user_id": user, "event_timestamp": ts, "amount": rng.randint(0, 40) / 4,
                           "units": rng.randint(-5, 50), "kind": rng.choice(["a", "b", "c"])})
    # late arrivals: pushed, but older than the run's newest event of their user (within the 30 minute lateness)
    late = [{**e, "event_timestamp": cutoff - timedelta(minutes=rng.randint(6, 20)), "amount": 99.0} for e in events[::9]]
    materialized = [e for e in events if e["event_timestamp"] < cutoff]
    pushed = sorted((e for e in events if e["event_timestamp"] >= cutoff), key=lambda e: e["event_timestamp"])
    assert pushed[2]["event_timestamp"] < cutoff + timedelta(minutes=10)
    pushed[3:3] = late  # after the first pushed events: older than their user's newest by at most 30 minutes
    store.create_feature_set(body("pushed", write_source(tmp_path / "past", pd.DataFrame(materialized))))
    store.materialize("pushed", now - timedelta(days=1), cutoff)
    for part in batches(pushed, 4):
        result = store.push("pushed", part)
        assert result["late_events"] == 0
    everything = write_source(tmp_path / "all", pd.DataFrame(materialized + pushed))
    store.create_feature_set(body("batch", everything, online=False))
    store.materialize("batch", now - timedelta(days=1), now)

    end = max(e["event_timestamp"] for e in pushed)
    ats = sorted({end, end + US, *(e["event_timestamp"] + size + d for e in pushed + materialized
                                   for size in SIZES.values() for d in (-US, timedelta(0))
                                   if e["event_timestamp"] + size - US >= end)})
    ats = random.Random(5).sample(ats, min(20, len(ats)))
    asked = pd.DataFrame([{"user_id": u, "event_timestamp": t} for t in ats for u in USERS])
    frame = store.get_historical_features(entity_df=asked, features=[f"batch:{f}" for f in WINDOWED]).to_df()
    want = {(int(r["user_id"]), pd.Timestamp(r["event_timestamp"]).tz_localize(None).to_pydatetime()
             if pd.Timestamp(r["event_timestamp"]).tzinfo else pd.Timestamp(r["event_timestamp"]).to_pydatetime()):
            r for r in frame.to_dict("records")}
    for t in ats:
        got = store.get_online_features(features=[f"pushed:{f}" for f in WINDOWED], entities={"user_id": USERS},
                                        at=t)["features"]
        for u in USERS:
            oracle = aggregate(materialized + pushed, u, t)
            for f in WINDOWED:
                expected = want[(u, t)][f"batch__{f}"]
                expected = None if expected is None or pd.isna(expected) else float(expected)
                assert same(got[str(u)][f"pushed:{f}"], expected), (u, t, f, got[str(u)], expected)
                assert same(expected, oracle[f])


def test_a_row_without_a_record_takes_no_older_event(store, tmp_path):
    """A row loaded without a window record of this version (before online windows, or by another version of
    the set) has no history: an older pushed event is late (not merged into nothing), a newer one applies."""
    source = write_source(tmp_path / "source", pd.DataFrame([{"user_id": 1, "event_timestamp": T0, "amount": 1.0,
                                                               "units": 1, "kind": "a"}]))
    store.create_feature_set(body("pushed", source))
    from fstore.registry.repo import load_feature_set_version
    from fstore.registry.runs import feature_set_row

    with store.transaction() as s:
        fsv = load_feature_set_version(s, feature_set_row(s, "pushed").id)
    store.online.write_rows(fsv, [{"user_id": 1, "event_timestamp": T0 + timedelta(minutes=30), "amount_x2": 2.0,
                                   "n_1h": 10, "units_2h": 10, "kinds_2h": 1, "max_a_1h": 1.0, "avg_2h": 1.0,
                                   "min_1h": 1.0}])

    def event(minutes: int) -> dict:
        return {"user_id": 1, "event_timestamp": T0 + timedelta(minutes=minutes), "amount": 5.0, "units": 1, "kind": "a"}

    assert store.push("pushed", [event(20)])["late_events"] == 1  # within the lateness, but nothing to merge into
    ask = {"features": ["pushed:n_1h", "pushed:units_2h"], "entities": {"user_id": [1]}}
    assert store.get_online_features(**ask, at=T0 + timedelta(minutes=30))["features"]["1"] == \
        {"pushed:n_1h": 10, "pushed:units_2h": 10}  # the stored row, untouched
    assert store.push("pushed", [event(40)])["late_events"] == 0
    assert store.get_online_features(**ask, at=T0 + timedelta(minutes=40))["features"]["1"] == \
        {"pushed:n_1h": 1, "pushed:units_2h": 1}  # its window knows only what was pushed (module docstring)


def test_a_stream_micro_batch_through_the_library_entry_point(store, tmp_path):
    """``apply_events`` as the stream job calls it: an Arrow micro-batch with partition/offset ids; the batch
    replayed (a restart after a crash) counts once online; an empty batch does nothing."""
    import pyarrow as pa

    from fstore.compute.stream_windows import EVENT_ID, apply_events
    from fstore.registry.repo import load_feature_set_version
    from fstore.registry.runs import feature_set_row

    source = write_source(tmp_path / "source", pd.DataFrame([{"user_id": 1, "event_timestamp": T0, "amount": 1.0,
                                                               "units": 1, "kind": "a"}]))
    store.create_feature_set(body("pushed", source))
    with store.transaction() as s:
        fsv = load_feature_set_version(s, feature_set_row(s, "pushed").id)
    batch = pa.table({"user_id": pa.array([1, 2, 1], pa.int64()),
                      "event_timestamp": pa.array([T0 + timedelta(minutes=m) for m in (1, 2, 3)], pa.timestamp("us")),
                      "amount": [1.0, 2.0, 3.0], "units": pa.array([1, 1, 1], pa.int64()), "kind": ["a", "b", "a"]})
    ids = ["p0:10", "p0:11", "p1:7"]
    first = apply_events(store, fsv, batch, ids=ids)
    assert (first.online_rows, first.applied, first.late, first.duplicates) == (2, 3, 0, 0)
    assert first.rows.column(EVENT_ID).to_pylist() == ids and first.rows.column("n_1h").to_pylist() == [1, 1, 2]
    replay = apply_events(store, fsv, batch, ids=ids)
    assert (replay.online_rows, replay.applied, replay.duplicates) == (0, 0, 3)
    assert replay.rows.column("n_1h").to_pylist() == [1, 1, 2]  # the same rows for the offline table
    got = store.get_online_features(features=["pushed:n_1h", "pushed:max_a_1h"], entities={"user_id": [1, 2]},
                                    at=T0 + timedelta(minutes=3))["features"]
    assert got == {"1": {"pushed:n_1h": 2, "pushed:max_a_1h": 3.0}, "2": {"pushed:n_1h": 1, "pushed:max_a_1h": None}}
    empty = apply_events(store, fsv, batch.slice(0, 0), ids=[])
    assert (empty.rows.num_rows, empty.online_rows) == (0, 0)
    with pytest.raises(InvalidDefinition):
        apply_events(store, fsv, batch, ids=ids[:2])  # one id per event
