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
