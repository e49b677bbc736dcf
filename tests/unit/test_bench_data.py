"""The benchmark's data generator is deterministic and keeps the properties the comparison relies on."""
from __future__ import annotations

import pandas as pd
import pytest

from bench.data import FEATURES, SPAN_DAYS, START, Sizes, generate, make_entities, make_events

SCALE = 0.002  # 2,000 events, 200 users: bounded and fast


def test_same_seed_gives_identical_frames():
    sizes = Sizes.for_scale(SCALE)
    first, second = make_events(sizes), make_events(sizes)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(make_entities(first, sizes, 150), make_entities(second, sizes, 150))


def test_shape_types_and_span():
    sizes = Sizes.for_scale(SCALE)
    events = make_events(sizes)
    assert len(events) == 2_000 and list(events.columns) == ["user_id", "event_timestamp", *FEATURES]
    assert events["user_id"].between(0, sizes.users - 1).all()
    assert str(events["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert events["event_timestamp"].min() >= pd.Timestamp(START)
    assert events["event_timestamp"].max() < pd.Timestamp(START) + pd.Timedelta(days=SPAN_DAYS)
    assert all(str(events[f].dtype) == "float64" for f in FEATURES)


def test_event_times_are_unique_per_user_and_some_entity_rows_tie_exactly():
    sizes = Sizes.for_scale(SCALE)
    events = make_events(sizes)
    assert not events.duplicated(["user_id", "event_timestamp"]).any()
    entities = make_entities(events, sizes, 1_000)
    ties = entities.merge(events[["user_id", "event_timestamp"]], on=["user_id", "event_timestamp"])
    assert 10 <= len(ties) <= 100  # ~5% of 1,000 rows copy an event's key and time


def test_generate_writes_parquet_once_and_reuses_it(tmp_path):
    dataset = generate(SCALE, tmp_path)
    events = pd.read_parquet(dataset.events_path)
    assert len(events) == dataset.sizes.events
    assert len(pd.read_parquet(dataset.entities_path(dataset.sizes.entities_small))) == 20
    stamp = (tmp_path / f"data-scale-{SCALE:g}" / "user_events.parquet").stat().st_mtime_ns
    generate(SCALE, tmp_path)
    assert (tmp_path / f"data-scale-{SCALE:g}" / "user_events.parquet").stat().st_mtime_ns == stamp


def test_scale_must_be_positive():
    with pytest.raises(ValueError, match="scale must be positive"):
        Sizes.for_scale(0)


def _tiny_events() -> pd.DataFrame:
    ts = pd.to_datetime(["2026-07-01T10:00:00Z", "2026-07-02T10:00:00Z", "2026-07-03T10:00:00Z"])
    frame = pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": ts.astype("datetime64[us, UTC]")})
    for i, name in enumerate(FEATURES):
        frame[name] = [float(i), float(i) + 0.5, float(i) + 0.25]
    return frame


def _tiny_entities() -> pd.DataFrame:
    ts = pd.to_datetime(["2026-07-02T10:00:00Z",   # tie with user 1's second event: visible
                         "2026-07-01T09:00:00Z",   # before user 1's first event: no feature row
                         "2026-07-05T00:00:00Z",   # user 2, after its only event
                         "2026-07-05T00:00:00Z"])  # the same entity row again
    return pd.DataFrame({"user_id": [1, 1, 2, 2], "event_timestamp": ts.astype("datetime64[us, UTC]")})


def test_oracle_applies_the_le_rule_and_leaves_rows_without_a_feature_row_null():
    from bench.compare import oracle

    expected = oracle(_tiny_events(), _tiny_entities())
    assert list(expected["row_id"]) == [0, 1, 2, 3]
    assert expected.loc[0, "f0"] == 0.5 and pd.isna(expected.loc[1, "f0"]) and expected.loc[2, "f3"] == 3.25


def test_compare_explains_feast_drops_and_flags_a_wrong_value():
    from bench.compare import compare_system, oracle

    expected = oracle(_tiny_events(), _tiny_entities())
    feast_like = expected.drop(index=[1, 3]).drop(columns="_feature_ts")  # drops the empty row, collapses the copy
    report = compare_system("Feast", feast_like, expected)
    assert [d["explained"] for d in report["differences"]] == [True, True]
    assert report["rows_equal"] == 2

    wrong = expected.drop(columns="_feature_ts").copy()
    wrong.loc[2, "f9"] += 1e-12  # "exactly equal" means exactly
    report = compare_system("fstore", wrong, expected)
    assert [(d["explained"], d["count"]) for d in report["differences"]] == [(False, 1)]
    assert report["differences"][0]["examples"][0]["row_id"] == 2
