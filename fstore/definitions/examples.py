"""Deterministic source data for the example feature sets in ``conf/examples``.

``write_example_sources(root)`` writes two small Parquet folders with pyarrow
(no Spark needed), always the same bytes for the same arguments. They carry the
product spec's names: users ``user_123`` and ``user_456`` (then ``user_1000``,
``user_1001``, …), events from 2023-12-01 to 2024-03-01, so the spec's own
requests (materialize January 2024, labels on 2024-01-01) find values.

- ``users/``: a nightly profile snapshot per user (00:00 UTC each day) —
  ``user_id, date_of_birth, signup_date, account_balance, user_segment,
  purchase_count, last_login, updated_at`` — including a leap-day birthday, a
  negative balance and an unknown segment, so validation rules have work to do;
  ``purchase_count`` is the user's purchases up to the snapshot (an earlier
  history plus the ``purchases/`` events before it), ``last_login`` the latest
  login before it;
- ``purchases/``: purchase events — ``user_id, timestamp, amount, category,
  signup_date`` — spread over ``days`` days ending at ``END``.

Run ``python -m fstore.definitions.examples [ROOT]`` to write them under
``$STORAGE_PATH/example_sources`` (the paths the example YAML names).
"""
from __future__ import annotations

import bisect
import random
import shutil
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

END = datetime(2024, 3, 1, tzinfo=timezone.utc)
SPEC_USERS = ("user_123", "user_456")
SEGMENTS = ("premium", "standard", "basic")
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


def user_ids(users: int) -> list[str]:
    """The spec's two users first, then ``user_1000``, ``user_1001``, …"""
    return list(SPEC_USERS[:users]) + [f"user_{1000 + i}" for i in range(max(users - len(SPEC_USERS), 0))]


def write_example_sources(root: str | Path, *, users: int = 200, purchases: int = 5000, days: int = 91,
                          seed: int = 7) -> ExampleData:
    """Write ``users/`` and ``purchases/`` under ``root`` (replacing earlier copies)."""
    rng = random.Random(seed)
    root = Path(root)
    start = END - timedelta(days=days)
    span = int((END - start).total_seconds())
    ids = user_ids(users)
    births = [date(1950, 1, 1) + timedelta(days=rng.randrange(0, 55 * 365)) for _ in ids]
    births[:2] = [date(1995, 6, 15), date(1988, 9, 3)][:len(ids)]  # the spec's users: 28 and 35 in January 2024
    signups = [(start - timedelta(days=rng.randrange(1, 900))).date() for _ in ids]
    balances = [round(rng.uniform(0, 20000), 2) for _ in ids]
    segments = [rng.choice(SEGMENTS) for _ in ids]
    history = [rng.randrange(0, 150) for _ in ids]  # purchases before the data's first day
    if users > 5:
        births[2] = date(2000, 2, 29)  # a leap-day birthday: age must be right on 28 Feb / 1 Mar
        signups[3] = start.date()  # signed up on the first day: days_since_signup can be 0
        balances[4] = -50.0  # breaks min_value: 0
        segments[5] = "diamond"  # not an allowed value
    signup_of = dict(zip(ids, signups))
    # a few heavy buyers, many light ones: windows see both busy and empty stretches
    weights = [5.0 if i % 20 == 0 else 1.0 for i in range(len(ids))]
    buyers = rng.choices(ids, weights=weights, k=purchases)
    times = sorted(start + timedelta(seconds=rng.randrange(span)) for _ in buyers)
    events = pa.table({
        "user_id": pa.array(buyers, pa.string()),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "amount": pa.array([round(rng.lognormvariate(3.0, 0.8), 2) for _ in buyers], pa.float64()),
        "category": pa.array([rng.choice(CATEGORIES) for _ in buyers], pa.string()),
        "signup_date": pa.array([signup_of[u] for u in buyers], pa.date32()),
    })
    bought: dict[str, list[datetime]] = {u: [] for u in ids}
    for user, at in zip(buyers, times):
        bought[user].append(at)
    rows: dict[str, list] = {k: [] for k in ("user_id", "date_of_birth", "signup_date", "account_balance",
                                             "user_segment", "purchase_count", "last_login", "updated_at")}
    for i, user in enumerate(ids):
        # logins: one in the week before the data starts, then some on most days
        logins = sorted([start - timedelta(seconds=rng.randrange(1, 7 * 86400))]
                        + [start + timedelta(seconds=rng.randrange(span)) for _ in range(rng.randrange(days // 2, days))])
        balance = balances[i]
        for day in range(days):
            snapshot = start + timedelta(days=day)
            if balance >= 0:
                balance = round(max(balance + rng.uniform(-200, 250), 0.0), 2)
            rows["user_id"].append(user)
            rows["date_of_birth"].append(births[i])
            rows["signup_date"].append(signups[i])
            rows["account_balance"].append(balance)
            rows["user_segment"].append(segments[i])
            rows["purchase_count"].append(history[i] + bisect.bisect_right(bought[user], snapshot))
            rows["last_login"].append(logins[bisect.bisect_right(logins, snapshot) - 1])
            rows["updated_at"].append(snapshot)
    users_table = pa.table({
        "user_id": pa.array(rows["user_id"], pa.string()),
        "date_of_birth": pa.array(rows["date_of_birth"], pa.date32()),
        "signup_date": pa.array(rows["signup_date"], pa.date32()),
        "account_balance": pa.array(rows["account_balance"], pa.float64()),
        "user_segment": pa.array(rows["user_segment"], pa.string()),
        "purchase_count": pa.array(rows["purchase_count"], pa.int64()),
        "last_login": pa.array(rows["last_login"], pa.timestamp("us", tz="UTC")),
        "updated_at": pa.array(rows["updated_at"], pa.timestamp("us", tz="UTC")),
    })
    _write(users_table, root / "users")
    _write(events, root / "purchases")
    return ExampleData(users_path=str(root / "users"), purchases_path=str(root / "purchases"),
                       users=users, purchases=purchases, start=start, end=END)


def main(argv: list[str] | None = None) -> int:
    """Write the sources under ROOT (default ``$STORAGE_PATH/example_sources``)."""
    from fstore.core.settings import Settings

    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(Settings.from_env().storage_path) / "example_sources"
    data = write_example_sources(root)
    print(f"wrote {data.users} users to {data.users_path}")
    print(f"wrote {data.purchases} purchases from {data.start:%Y-%m-%d} to {data.end:%Y-%m-%d} to {data.purchases_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
