"""Stream freshness: event time → online visibility, per feature set, measured by the stream job per micro-batch.

The stream (``fstore.compute.stream``) runs in its own process; the server and ``/metrics`` read what it measured
from a small JSON file beside the stream's checkpoint (``STORAGE_PATH/_streams/NAME/freshness.json``; on an S3
store, under its prefix in the bucket), replaced atomically after each batch (a local rename; one S3 object put).
It holds p50/p99 over every event made visible in the last ``WINDOW_SECONDS`` (each batch weighed by its events),
the last batch's own figures and totals.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from fstore.core.settings import Settings

WINDOW_SECONDS = 60.0  # p50/p99 are over every event made visible in the last minute
# Latencies kept for them: beyond this many, every batch of the window is thinned to every other kept value,
# each standing for the events it replaces, so the quantiles still weigh every batch by its events.
_MAX_SAMPLES = 200_000


def stream_dir(settings: Settings, name: str) -> str:
    """A set's stream folder under the store (a local folder, or ``s3a://bucket/prefix/…`` on an S3 store): its
    checkpoint and its freshness file. Where the offline tables are (``Settings.data_root``), so a stream job
    moved to another machine finds its checkpoint, and with it its exactly-once writes."""
    return f"{settings.data_root}/_streams/{name}"


def freshness_path(settings: Settings, name: str) -> str:
    return f"{stream_dir(settings, name)}/freshness.json"


def read_text(settings: Settings, path: str) -> str:
    """A small file of the stream folder (local or on S3); OSError when it cannot be read."""
    if settings.storage_backend != "s3":
        return Path(path).read_text()
    from fstore.engine.s3 import filesystem, path_on

    with filesystem(settings).open_input_stream(path_on(path)) as f:
        return f.read().decode()


def write_text(settings: Settings, path: str, text: str) -> None:
    """Replace a small file of the stream folder whole: a local temporary file renamed, or one S3 put."""
    if settings.storage_backend == "s3":
        from fstore.engine.s3 import filesystem, path_on

        with filesystem(settings).open_output_stream(path_on(path)) as f:
            f.write(text.encode())
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, target)


class FreshnessRecorder:
    """Keeps the recent batches' latencies of one stream and writes the file after each batch."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._path = freshness_path(settings, name)
        # per batch: (when recorded, events it had, a sorted uniform sample of their latencies)
        self._batches: deque[tuple[float, int, np.ndarray]] = deque()
        self._totals = {"batches": 0, "events": 0}

    def record(self, batch_id: int, latencies: list[float], *, events: int, seconds: float) -> dict[str, Any]:
        """Add one batch's latencies (seconds from each event's time to its online visibility); write the file.
        In arrays: with Python lists, weighing the window's 200,000 samples took 150–320 ms a batch."""
        now = time.time()
        last = np.sort(np.asarray(latencies, dtype=np.float64))
        self._batches.append((now, len(last), last))
        while self._batches and now - self._batches[0][0] > WINDOW_SECONDS:
            self._batches.popleft()
        while sum(len(sample) for _, _, sample in self._batches) > _MAX_SAMPLES:
            self._batches = deque((at, count, sample[::2] if len(sample) > 1 else sample)
                                  for at, count, sample in self._batches)
        self._totals["batches"] += 1
        self._totals["events"] += events
        values, weights = _weighed(self._batches)
        body = {
            "at": now, "last_batch_id": batch_id, "last_batch_events": events, "last_batch_seconds": round(seconds, 3),
            "window_seconds": WINDOW_SECONDS, "window_events": sum(count for _, count, _ in self._batches),
            "p50_seconds": _weighted_quantile(values, weights, 0.5),
            "p99_seconds": _weighted_quantile(values, weights, 0.99),
            "last_batch_p50_seconds": _quantile(last, 0.5), "last_batch_p99_seconds": _quantile(last, 0.99),
            **self._totals,
        }
        write_text(self._settings, self._path, json.dumps(body))
        return body


def _weighed(batches) -> tuple[np.ndarray, np.ndarray]:
    """Every kept latency of ``batches`` in order, and the events each stands for (its batch's events / kept)."""
    if not batches:
        return np.empty(0), np.empty(0)
    values = np.concatenate([sample for _, _, sample in batches])
    weights = np.concatenate([np.full(len(sample), count / len(sample)) for _, count, sample in batches if len(sample)]
                             or [np.empty(0)])
    order = np.argsort(values, kind="stable")
    return values[order], weights[order]


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    """The nearest-rank quantile of sorted ``values``, each standing for its ``weights`` events."""
    if not len(values):
        return None
    seen = np.cumsum(weights)
    at = int(np.searchsorted(seen, q * seen[-1] - 1e-9, side="left"))
    return round(float(values[min(at, len(values) - 1)]), 4)


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None for none)."""
    if not len(ordered):
        return None
    return round(float(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]), 4)


def read(settings: Settings, name: str) -> dict[str, Any] | None:
    """What the set's stream last wrote, or None (no stream ran here, or the file is unreadable)."""
    try:
        return json.loads(read_text(settings, freshness_path(settings, name)))
    except (OSError, ValueError):
        return None
