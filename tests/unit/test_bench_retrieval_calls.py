"""The historical benchmark's call order: the same for both systems, early and long-lived figures apart."""
from __future__ import annotations

from bench.report import _historical_rows
from bench.retrieval_calls import time_retrievals


def test_calls_run_cold_then_timed_per_frame_then_the_long_lived_rest():
    calls: list[str] = []
    figures, results = time_retrievals(lambda frame: calls.append(frame) or f"result of {frame}",
                                       ["small", "large"], repeats=3, long_lived=10)
    # The cold call, 3 timed per frame, then each frame up to 10 timed calls in all.
    assert calls == ["small"] * 4 + ["large"] * 3 + ["small"] * 7 + ["large"] * 7
    assert figures[0]["cold_seconds"] is not None and figures[1]["cold_seconds"] is None
    assert [len(f["seconds"]) for f in figures] == [3, 3]
    assert [len(f["long_lived_seconds"]) for f in figures] == [3, 3]
    assert results == ["result of small", "result of large"]


def test_no_long_lived_calls_when_not_asked():
    calls: list[str] = []
    figures, _ = time_retrievals(calls.append, ["only"], repeats=1, long_lived=0)
    assert calls == ["only", "only"] and figures[0]["long_lived_seconds"] == []


def test_report_shows_the_long_lived_rows_beside_feast():
    system = {"best_seconds": {"10": 1.0}, "long_lived_best_seconds": {"10": 0.5}, "rows_out": {"10": 10},
              "ratio_large_small": 1.0, "cold_seconds": 2.0}
    rows = _historical_rows({"sizes": [10], "repeats": 3, "long_lived_calls": 10,
                             "feast": {**system, "long_lived_best_seconds": {"10": 0.25}}, "fstore": system})
    long_lived = [r for r in rows if "long-lived" in r[0]]
    assert long_lived == [["historical, 10 entity rows, a long-lived process: best of calls 8–10 on this frame, "
                           "fstore on Spark local[2]", "0.25 s", "0.50 s", "time 2.00×"]]
