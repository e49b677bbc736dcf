"""A stream's freshness figures: p50/p99 over every event of the last minute, each batch weighed by its events."""
from __future__ import annotations

import json

import numpy as np

from fstore.core.settings import Settings
from fstore.ops import stream_freshness
from fstore.ops.stream_freshness import FreshnessRecorder, freshness_path


def recorder(tmp_path) -> FreshnessRecorder:
    return FreshnessRecorder(Settings.from_env({"STORAGE_PATH": str(tmp_path)}), "clicks")


def test_a_minute_of_batches_at_10k_events_a_second_counts_its_first_batches(tmp_path):
    """600,000 events in 60 batches, the first 3 slow: 5 % of the minute's events, so the p99 is theirs. The
    window once kept only the newest 200,000 latencies (20 batches) and answered 1.0."""
    r = recorder(tmp_path)
    for batch in range(60):
        slow = batch < 3
        body = r.record(batch, [3.0 if slow else 1.0] * 10_000, events=10_000, seconds=0.4)
    assert body["window_events"] == 600_000 and body["events"] == 600_000
    assert body["p99_seconds"] == 3.0 and body["p50_seconds"] == 1.0
    assert body["last_batch_p99_seconds"] == 1.0
    assert json.loads(open(freshness_path(r._settings, "clicks")).read())["p99_seconds"] == 3.0


def test_thinned_samples_keep_each_batch_at_its_weight(tmp_path):
    """A batch of 300,000 events and one of 1,000: past 200,000 kept latencies both are thinned, and the small
    batch still stands for 1,000 of 301,000 events (0.33 %: above the p99, inside the p99.9)."""
    r = recorder(tmp_path)
    r.record(1, [2.0] * 300_000, events=300_000, seconds=2.0)
    body = r.record(2, [9.0] * 1_000, events=1_000, seconds=0.1)
    assert body["window_events"] == 301_000
    assert body["p99_seconds"] == 2.0
    values, weights = stream_freshness._weighed(r._batches)
    assert len(values) <= stream_freshness._MAX_SAMPLES
    assert stream_freshness._weighted_quantile(values, weights, 0.999) == 9.0


def test_batches_older_than_the_window_leave_it(tmp_path, monkeypatch):
    r = recorder(tmp_path)
    clock = [1_000.0]
    monkeypatch.setattr(stream_freshness.time, "time", lambda: clock[0])
    r.record(1, [5.0] * 100, events=100, seconds=0.1)
    clock[0] += stream_freshness.WINDOW_SECONDS + 1
    body = r.record(2, [0.5] * 10, events=10, seconds=0.1)
    assert body["window_events"] == 10 and body["p99_seconds"] == 0.5 and body["events"] == 110


def test_nearest_rank_on_equal_weights_matches_the_plain_quantile():
    values = [i / 10 for i in range(1, 101)]
    weights = np.ones(len(values))
    for q in (0.5, 0.9, 0.99, 1.0):
        assert stream_freshness._weighted_quantile(np.array(values), weights, q) == stream_freshness._quantile(values, q)
    assert stream_freshness._weighted_quantile(np.empty(0), np.empty(0), 0.99) is None
