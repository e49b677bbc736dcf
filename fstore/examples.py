"""Deterministic source data for the example feature sets in ``conf/examples``.

``write_example_sources(root)`` writes two small Parquet folders with pyarrow
(no Spark needed), always the same bytes for the same arguments:

- ``users/``: one row per user — ``user_id, date_of_birth, signup_date,
  account_balance, segment, updated_at`` — including a leap-day birthday, a
  negative balance and an unknown segment, so validation rules have work to do;
- ``purchases/``: purchase events — ``user_id, timestamp, amount, category,
  signup_date`` — spread over ``days`` days ending at ``END``.

Run ``python -m fstore.examples [ROOT]`` to write them under
``$STORAGE_PATH/example_sources`` (the paths the example YAML names).
"""
from __future__ import annotations

import random
import shutil
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

END = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEGMENTS = ("bronze", "silver", "gold", "platinum")
CATEGORIES = ("books", "electronics", "grocery", "toys", "garden")


@dataclass(frozen=True, kw_only=True)
class ExampleData:
    """Where the sources were written and the time range their events cover."""

    users_path: str
    purchases_path: str
    users: int
    purchases: int
    start: datetime
    end: datetime


def _write(table: pa.Table, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-00000.parquet")


def write_example_sources(root: str | Path, *, users: int = 200, purchases: int = 5000, days: int = 60,
                          seed: int = 7) -> ExampleData:
    """Write ``users/`` and ``purchases/`` under ``root`` (replacing earlier copies)."""
    rng = random.Random(seed)
    root = Path(root)
    start = END - timedelta(days=days)
    span = int((END - start).total_seconds())
    ids = list(range(1, users + 1))
    births = [date(1950, 1, 1) + timedelta(days=rng.randrange(0, 55 * 365)) for _ in ids]
    births[0] = date(2000, 2, 29)  # a leap-day birthday: age must be right on 28 Feb / 1 Mar
    signups = [(start - timedelta(days=rng.randrange(1, 900))).date() for _ in ids]
    signups[1] = start.date()  # signed up on the first day: days_since_signup can be 0
    balances = [round(rng.uniform(0, 20000), 2) for _ in ids]
    balances[2] = -50.0  # breaks min_value: 0
    segments = [rng.choice(SEGMENTS) for _ in ids]
    segments[3] = "diamond"  # not an allowed value
    updated = [start + timedelta(seconds=rng.randrange(span)) for _ in ids]
    users_table = pa.table({
        "user_id": pa.array(ids, pa.int64()),
        "date_of_birth": pa.array(births, pa.date32()),
        "signup_date": pa.array(signups, pa.date32()),
        "account_balance": pa.array(balances, pa.float64()),
        "segment": pa.array(segments, pa.string()),
        "updated_at": pa.array(updated, pa.timestamp("us", tz="UTC")),
    })
    signup_of = dict(zip(ids, signups))
    # a few heavy buyers, many light ones: windows see both busy and empty stretches
    weights = [5.0 if i % 20 == 0 else 1.0 for i in ids]
    buyers = rng.choices(ids, weights=weights, k=purchases)
    times = sorted(start + timedelta(seconds=rng.randrange(span)) for _ in buyers)
    events = pa.table({
        "user_id": pa.array(buyers, pa.int64()),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "amount": pa.array([round(rng.lognormvariate(3.0, 0.8), 2) for _ in buyers], pa.float64()),
        "category": pa.array([rng.choice(CATEGORIES) for _ in buyers], pa.string()),
        "signup_date": pa.array([signup_of[u] for u in buyers], pa.date32()),
    })
    _write(users_table, root / "users")
    _write(events, root / "purchases")
    return ExampleData(users_path=str(root / "users"), purchases_path=str(root / "purchases"),
                       users=users, purchases=purchases, start=start, end=END)


def main(argv: list[str] | None = None) -> int:
    """Write the sources under ROOT (default ``$STORAGE_PATH/example_sources``)."""
    from fstore.settings import Settings

    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(Settings.from_env().storage_path) / "example_sources"
    data = write_example_sources(root)
    print(f"wrote {data.users} users to {data.users_path}")
    print(f"wrote {data.purchases} purchases from {data.start:%Y-%m-%d} to {data.end:%Y-%m-%d} to {data.purchases_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
