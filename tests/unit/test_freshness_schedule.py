"""Freshness judgements that need no store."""
from __future__ import annotations

from datetime import datetime

from fstore.ops.monitoring import late_against_schedule


def test_a_stored_schedule_that_never_fires_is_never_late():
    # Refused for new definitions (30 February); one stored earlier must not break the freshness report.
    assert late_against_schedule("0 0 30 2 *", None, datetime(2026, 3, 1)) is None
