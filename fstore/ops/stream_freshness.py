"""Stream freshness: event time → online visibility, per feature set, measured by the stream job per micro-batch.

The stream (``fstore.compute.stream``) runs in its own process; the server and ``/metrics`` read what it measured
from a small JSON file beside the stream's checkpoint (``STORAGE_PATH/_streams/NAME/freshness.json``), replaced
atomically after each batch. It holds p50/p99 over the events of the recent batches (``WINDOW_SECONDS``), the
last batch's own figures and totals. Local storage only (an S3 store's streams report nothing here).
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from fstore.core.settings import Settings

WINDOW_SECONDS = 60.0  # p50/p99 are over the events made visible in the last minute
_MAX_SAMPLES = 200_000  # and of at most this many of them (a uniform subsample of each batch beyond it)


def stream_dir(settings: Settings, name: str) -> Path:
    """A set's stream folder under the store: its checkpoint and its freshness file."""
    return Path(settings.storage_path).resolve() / "_streams" / name


def freshness_path(settings: Settings, name: str) -> Path:
    return stream_dir(settings, name) / "freshness.json"


class FreshnessRecorder:
    """Keeps the recent batches' latencies of one stream and writes the file after each batch."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._path = freshness_path(settings, name)
        self._batches: deque[tuple[float, list[float]]] = deque()
        self._totals = {"batches": 0, "events": 0}

    def record(self, batch_id: int, latencies: list[float], *, events: int, seconds: float) -> dict[str, Any]:
        """Add one batch's latencies (seconds from each event's time to its online visibility); write the file."""
        now = time.time()
        step = max(1, len(latencies) // 20_000)
        self._batches.append((now, sorted(latencies[::step])))
        while self._batches and (now - self._batches[0][0] > WINDOW_SECONDS
                                 or sum(len(b) for _, b in self._batches) > _MAX_SAMPLES):
            self._batches.popleft()
        self._totals["batches"] += 1
        self._totals["events"] += events
        recent = sorted(v for _, b in self._batches for v in b)
        last = sorted(latencies)
        body = {
            "at": now, "last_batch_id": batch_id, "last_batch_events": events, "last_batch_seconds": round(seconds, 3),
            "window_seconds": WINDOW_SECONDS, "window_events": len(recent),
            "p50_seconds": _quantile(recent, 0.5), "p99_seconds": _quantile(recent, 0.99),
            "last_batch_p50_seconds": _quantile(last, 0.5), "last_batch_p99_seconds": _quantile(last, 0.99),
            **self._totals,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(body))
        os.replace(partial, self._path)
        return body


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None for none)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))], 4)


def read(settings: Settings, name: str) -> dict[str, Any] | None:
    """What the set's stream last wrote, or None (no stream ran here, or the file is unreadable)."""
    if settings.storage_backend != "local":
        return None
    try:
        return json.loads(freshness_path(settings, name).read_text())
    except (OSError, ValueError):
        return None
