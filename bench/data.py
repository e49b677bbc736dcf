"""The benchmark's data: a deterministic ``user_events`` table and two entity frames.

Everything is drawn from one fixed seed, so two runs (and the two systems in one
run) see exactly the same rows. Sizes at ``scale=1``: 1,000,000 event rows for
100,000 users, 10 float features ``f0..f9``, event timestamps (whole seconds,
UTC) over 60 days; entity frames of 100,000 and 10,000 ``(user_id,
event_timestamp)`` rows over the same span. ``scale`` multiplies every size.

Event timestamps are unique per user, so "the latest row at or before t" has one
answer and both systems can be compared row by row. About 5% of entity rows copy
an event's exact ``(user_id, event_timestamp)``: they test the ``<=`` tie rule.
Entity rows dated before the user's first event have no feature row (about 9%).

The files are written as Parquet outside the repository, in
``$FSTORE_BENCH_DIR`` or ``~/.cache/fstore-bench``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261128
START = datetime(2026, 7, 1, tzinfo=timezone.utc)
SPAN_DAYS = 60
FEATURES = tuple(f"f{i}" for i in range(10))
TIE_FRACTION = 0.05


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Row counts of one data set."""

    events: int
    users: int
    entities_large: int
    entities_small: int

    @classmethod
    def for_scale(cls, scale: float) -> "Sizes":
        """Sizes at ``scale`` (1 = 1M events, 100k users, 100k and 10k entity rows)."""
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        return cls(events=int(1_000_000 * scale), users=max(1, int(100_000 * scale)),
                   entities_large=int(100_000 * scale), entities_small=int(10_000 * scale))


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """Where one generated data set lives, and its shape."""

    root: str
    scale: float
    sizes: Sizes
    start: datetime
    end: datetime

    @property
    def events_path(self) -> str:
        return str(Path(self.root) / "user_events.parquet")

    def entities_path(self, rows: int) -> str:
        return str(Path(self.root) / f"entities_{rows}.parquet")


def bench_dir() -> Path:
    """The folder for generated data and scratch stores (never inside the repository)."""
    return Path(os.environ.get("FSTORE_BENCH_DIR") or Path.home() / ".cache" / "fstore-bench")


def _unique_offsets(rng: np.random.Generator, users: np.ndarray, span: int) -> np.ndarray:
    """Second offsets in ``[0, span)`` such that no user has two events at the same second."""
    offsets = rng.integers(0, span, size=len(users), dtype=np.int64)
    while True:
        key = users.astype(np.int64) * span + offsets
        order = np.argsort(key, kind="stable")
        dup = np.zeros(len(key), dtype=bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        count = int(dup.sum())
        if count == 0:
            return offsets
        offsets[dup] = rng.integers(0, span, size=count, dtype=np.int64)


def make_events(sizes: Sizes, *, seed: int = SEED) -> pd.DataFrame:
    """The ``user_events`` rows: ``user_id`` (int64), ``event_timestamp`` (UTC), ``f0..f9`` (float64)."""
    rng = np.random.default_rng(seed)
    span = SPAN_DAYS * 86400
    users = rng.integers(0, sizes.users, size=sizes.events, dtype=np.int64)
    offsets = _unique_offsets(rng, users, span)
    frame = pd.DataFrame({"user_id": users,
                          "event_timestamp": _timestamps(offsets)})
    values = rng.standard_normal((sizes.events, len(FEATURES)))
    for i, name in enumerate(FEATURES):
        frame[name] = values[:, i]
    return frame.sort_values(["event_timestamp", "user_id"], kind="stable", ignore_index=True)


def make_entities(events: pd.DataFrame, sizes: Sizes, rows: int, *, seed: int = SEED) -> pd.DataFrame:
    """``rows`` entity rows ``(user_id, event_timestamp)``; ~5% copy an event's exact key and time."""
    rng = np.random.default_rng(seed + rows)
    span = SPAN_DAYS * 86400
    users = rng.integers(0, sizes.users, size=rows, dtype=np.int64)
    offsets = rng.integers(0, span, size=rows, dtype=np.int64)
    ties = rng.random(rows) < TIE_FRACTION
    picked = rng.integers(0, len(events), size=int(ties.sum()))
    users[ties] = events["user_id"].to_numpy()[picked]
    base = np.datetime64(START.replace(tzinfo=None), "s")
    event_seconds = (events["event_timestamp"].dt.tz_localize(None).to_numpy().astype("datetime64[s]") - base).astype(np.int64)
    offsets[ties] = event_seconds[picked]
    return pd.DataFrame({"user_id": users, "event_timestamp": _timestamps(offsets)})


def _timestamps(offsets: np.ndarray) -> pd.Series:
    base = np.datetime64(START.replace(tzinfo=None), "s")
    return pd.Series(base + offsets.astype("timedelta64[s]")).astype("datetime64[us]").dt.tz_localize("UTC")


def generate(scale: float = 1.0, root: Path | None = None, *, force: bool = False) -> Dataset:
    """Write (or reuse) the data set for ``scale``; returns where it is."""
    sizes = Sizes.for_scale(scale)
    folder = (root or bench_dir()) / f"data-scale-{scale:g}"
    end = START + pd.Timedelta(days=SPAN_DAYS).to_pytimedelta()
    dataset = Dataset(root=str(folder), scale=scale, sizes=sizes, start=START, end=end)
    marker = folder / "DONE.json"
    if marker.exists() and not force:
        return dataset
    folder.mkdir(parents=True, exist_ok=True)
    events = make_events(sizes)
    events.to_parquet(dataset.events_path, index=False, row_group_size=250_000)
    for rows in (sizes.entities_large, sizes.entities_small):
        make_entities(events, sizes, rows).to_parquet(dataset.entities_path(rows), index=False)
    marker.write_text(json.dumps({"seed": SEED, **asdict(sizes)}))
    return dataset
