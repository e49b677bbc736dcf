"""The online window combination (``fstore.storage.online.windows``) against a brute-force oracle.

Random events per aggregation, encoded as of the entity's last event, combined at random instants at or
after it (and at the aging-out edges ± 1 µs): equal to the aggregate of the events in ``(t - size, t]``.
"""
from __future__ import annotations

import math
import random
import statistics

import pytest

from fstore.storage.online.windows import (OnlineWindow, cast, combine, combiners, contribution, decode, encode,
                                          encode_takes, record_events, usable)

SIZE = 10_000_000  # 10 s in micros
AGGS = ("count", "sum", "avg", "min", "max", "stddev", "count_distinct", "last")


def oracle(fn: str, column: bool, events: list[tuple[int, object]], t: int):
    inside = [(ts, v) for ts, v in events if t - SIZE < ts <= t]
    if fn == "count" and not column:
        return len(inside)
    values = [v for _, v in inside if v is not None]
    if fn == "count":
        return len(values)
    if fn == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if fn == "sum":
        return sum(values)
    if fn == "avg":
        return sum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "stddev":
        return statistics.stdev(values) if len(values) > 1 else None
    return max((ts, v) for ts, v in inside if v is not None)[1]  # latest; ties: the greatest value


def one(window: OnlineWindow, at: int, events) -> list:
    """The record of a single window: every event counted (its filter true)."""
    return decode(encode([window], 3, at, [(ts, [(True, v)]) for ts, v in events]))


@pytest.mark.parametrize(("fn", "column"), [(fn, True) for fn in AGGS] + [("count", False)])
@pytest.mark.parametrize("seed", range(5))
def test_combine_equals_the_oracle_at_every_instant(fn, column, seed):
    rng = random.Random(seed)
    window = OnlineWindow(feature="f", function=fn, size_micros=SIZE, data_type="float", column=column)
    events = []
    for _ in range(rng.randint(0, 30)):
        ts = rng.randint(0, 40_000_000)
        events.append((ts, None if rng.random() < 0.2 else rng.randint(-5, 5)))
    events += [(ts, v) for ts, v in events[:3]]  # ties
    last = max((ts for ts, _ in events), default=0)
    stored = one(window, last, events)
    assert stored[:2] == [last, 3]
    instants = {last, last + 1, last + SIZE, last + SIZE - 1, last + 3 * SIZE}
    instants |= {ts + SIZE + d for ts, _ in events for d in (-1, 0, 1) if ts + SIZE + d >= last}
    instants |= {last + rng.randint(0, 2 * SIZE) for _ in range(20)}
    fast = combiners([window])  # serving's prepared form: the same value, cast
    for t in sorted(instants):
        got, want = combine(window, stored, t), oracle(fn, column, events, t)
        assert fast(stored, t) == [cast(window)(got)]
        if isinstance(want, float):
            assert math.isclose(got, want, rel_tol=1e-12), (t, got, want)
        else:
            assert got == want, (t, got, want)


def test_one_record_serves_windows_of_different_sizes_and_filters():
    short = OnlineWindow(feature="n", function="count", size_micros=SIZE, data_type="int", column=False, index=0)
    long = OnlineWindow(feature="s", function="sum", size_micros=3 * SIZE, data_type="int", index=1)
    at = 3 * SIZE
    # (ts, [(counted by short, value), (counted by long, value)])
    events = [(1, [(True, 5), (True, 100)]), (SIZE + 1, [(True, 5), (False, 50)]), (2 * SIZE + 1, [(True, None), (True, 7)]),
              (at, [(False, 1), (True, None)]), (at + 1, [(True, 9), (True, 9)])]
    record = decode(encode([short, long], 2, at, events))
    # at 1: only in the long window; at SIZE + 1: out of the short window, filtered out of the long one, so
    # not stored; at 2 SIZE + 1: a null value still counts for COUNT(*); at `at`: counted by neither
    # (filter false, null value); after `at`: not the record's
    assert record == [at, 2, [1, 2 * SIZE + 1], [None, 1], [100, 7]]
    assert combine(short, record, at) == 1 and combine(long, record, at) == 107
    assert combine(short, record, 3 * SIZE + 1) == 0 and combine(long, record, 5 * SIZE + 1) is None


@pytest.mark.parametrize("seed", range(5))
def test_the_windows_of_a_set_combined_at_once_equal_each_window_alone(seed):
    """``combiners`` finds each distinct size's bounds once for all windows: every value as ``combine`` gives it."""
    rng = random.Random(seed)
    windows = [OnlineWindow(feature=f"w{i}", function=rng.choice(AGGS), size_micros=rng.choice((SIZE, 2 * SIZE, 3 * SIZE)),
                            data_type=rng.choice(("int", "float")), column=rng.random() < 0.8, index=i) for i in range(6)]
    events = [(rng.randint(0, 40_000_000), [(rng.random() < 0.8, None if rng.random() < 0.2 else rng.randint(-5, 5))
                                             for _ in windows]) for _ in range(rng.randint(0, 40))]
    last = max((ts for ts, _ in events), default=0)
    record = decode(encode(windows, 1, last, events))
    values = combiners(windows)
    for t in [last, last + 1, last + SIZE, last + SIZE + 1, last + 3 * SIZE] + [last + rng.randint(0, 3 * SIZE) for _ in range(20)]:
        assert values(record, t) == [cast(w)(combine(w, record, t)) for w in windows], t


def test_only_the_window_before_the_last_event_is_stored():
    window = OnlineWindow(feature="f", function="sum", size_micros=SIZE, data_type="int")
    events = [(0, 100), (1, 10), (SIZE, 1), (SIZE + 5, 2), (SIZE + 6, None)]
    stored = one(window, SIZE + 6, events)
    # (6, SIZE + 6]: the events at 0 and 1 are outside; a null value counts for nothing
    assert stored == [SIZE + 6, 3, [SIZE, SIZE + 5], [1, 2]]
    assert combine(window, stored, SIZE + 6) == 3
    assert combine(window, stored, 2 * SIZE) == 2  # the event at SIZE aged out exactly one window later
    assert combine(window, stored, 2 * SIZE - 1) == 3
    assert combine(window, stored, 3 * SIZE + 5) is None  # empty window: null, as historical retrieval answers


def test_count_star_counts_null_values_and_empty_is_zero():
    window = OnlineWindow(feature="n", function="count", size_micros=SIZE, data_type="int", column=False)
    stored = one(window, 5, [(1, None), (5, 3.0)])
    assert combine(window, stored, 5) == 2 and combiners([window])(stored, 5 + SIZE * 2) == [0]


def test_a_record_of_another_row_or_version_is_not_used():
    window = OnlineWindow(feature="f", function="max", size_micros=SIZE, data_type="float")
    stored = one(window, 100, [(100, 7)])
    assert usable(stored, 100, 3) and combiners([window])(stored, 150) == [7.0]
    assert not usable(stored, 200, 3)  # the hash holds a newer row now
    assert not usable(stored, 100, 4)  # written for another definition of the set


@pytest.mark.parametrize(("data_type", "value", "want"), [("int", 2.9, 2), ("int", -2.9, -2), ("float", 3, 3.0),
                                                        ("timestamp", 0, "1970-01-01T00:00:00Z")])
def test_cast_follows_the_feature_type(data_type, value, want):
    window = OnlineWindow(feature="f", function="max", size_micros=SIZE, data_type=data_type)
    assert cast(window)(value) == want and cast(window)(None) is None


def test_a_pushed_record_keeps_the_lateness_margin_and_event_ids_and_serves_as_before():
    """``encode_takes`` (pushed events, ``fstore.compute.stream_windows``): each window keeps its events of
    ``(at - size - keep, at]``; ids ride in a trailing column serving never reads; ``record_events`` gives
    the events back, so a merge and a re-encode lose nothing."""
    short = OnlineWindow(feature="n", function="count", size_micros=SIZE, data_type="int", column=False, index=0)
    long = OnlineWindow(feature="s", function="sum", size_micros=2 * SIZE, data_type="int", index=1)
    at, keep = 4 * SIZE, SIZE // 2
    events = [(ts, [contribution(short, True, v), contribution(long, True, v)], ident)
              for ts, v, ident in [(SIZE, 1, "a"), (2 * SIZE - 1, 2, "b"), (2 * SIZE + 1, 3, None),
                                   (3 * SIZE, None, "d"), (at, 4, "e"), (at + 1, 9, "f")]]
    record = decode(encode_takes([short, long], 7, at, events, keep_micros=keep))
    # SIZE: out of both (long keeps > at - 2 SIZE - keep = 1.5 SIZE); 2 SIZE - 1: long only; at + 1: after at
    assert record == [at, 7, [2 * SIZE - 1, 2 * SIZE + 1, 3 * SIZE, at], [None, None, 1, 1], [2, 3, None, 4],
                      ["b", None, "d", "e"]]
    assert combine(short, record, at) == 1 and combine(long, record, at) == 7  # (3 SIZE, at] and (2 SIZE, at]
    assert combiners([long])(record, at + SIZE) == [4] and usable(record, at, 7)
    again = decode(encode_takes([short, long], 7, at, record_events(record, 2), keep_micros=keep))
    assert again == record
    plain = decode(encode_takes([short, long], 7, at, [(e[0], e[1], None) for e in events]))
    assert len(plain) == 5 and record_events(plain, 2)[0][2] is None  # no ids: no column
