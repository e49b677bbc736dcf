"""The scheduler: run each feature set's incremental materialization when its cron schedule is due.

Due means: the latest cron tick at or before now has not been claimed yet. A
scheduler claims a tick with an atomic compare-and-set on a registry marker
(``schedule:<set id>``, holding the ISO time of the last tick claimed), so:

- a missed stretch (the scheduler was down for ten ticks) is caught up ONCE —
  only the latest tick is claimed, and one incremental run from the watermark
  covers everything missed;
- two schedulers on one PostgreSQL registry never both run a tick: only one
  compare-and-set succeeds; and the run itself takes the set's lock, so a
  manual run in progress is never doubled either;
- a failing run is recorded (by the run) and logged, and the loop carries on.

``once=True`` runs what is due and returns, for users who drive it from cron
or Airflow.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING

from croniter import croniter
from sqlalchemy import select

from fstore.errors import Conflict, FStoreError, InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import FeatureSetRow, utcnow

if TYPE_CHECKING:
    from fstore.store import FeatureStore

log = logging.getLogger(__name__)


def claim_name(feature_set_id: int) -> str:
    return f"schedule:{feature_set_id}"


def scheduled_sets(store: "FeatureStore") -> list[tuple[int, str, str]]:
    """``(id, name, cron)`` of every feature set with a materialization schedule."""
    with store.transaction() as s:
        rows = s.execute(select(FeatureSetRow.id, FeatureSetRow.name, FeatureSetRow.spec)
                         .order_by(FeatureSetRow.name)).all()
    return [(fs_id, name, spec.get("materialization_schedule")) for fs_id, name, spec in rows
            if isinstance(spec, dict) and spec.get("materialization_schedule")]


def latest_tick(cron: str, now: datetime) -> datetime:
    """The latest time at or before ``now`` that ``cron`` fires (naive UTC)."""
    itr = croniter(cron, now)
    if croniter.match(cron, now):
        return now.replace(second=0, microsecond=0)
    return itr.get_prev(datetime)


def claim_tick(store: "FeatureStore", feature_set_id: int, tick: datetime) -> bool:
    """Claim ``tick`` of a set if no scheduler has claimed it (or a later one) yet; atomic across schedulers."""
    name, value = claim_name(feature_set_id), runs.iso(tick)
    holder = runs.lock_holder(store.engine, name)
    if holder is not None and holder["owner"] >= value:
        return False
    return runs.compare_and_set(store.engine, name, holder["owner"] if holder else None, value)


def run_due(store: "FeatureStore", *, now: datetime | None = None) -> list[dict]:
    """Run every set whose schedule is due at ``now``; one outcome dict per set that was due."""
    now = runs.to_utc(now, field_name="now") if now is not None else utcnow().replace(microsecond=0)
    outcomes: list[dict] = []
    for fs_id, name, cron in scheduled_sets(store):
        try:
            tick = latest_tick(cron, now)
        except (ValueError, KeyError) as exc:
            log.error("feature set %s has an unreadable schedule %r: %s", name, cron, exc)
            continue
        if not claim_tick(store, fs_id, tick):
            continue
        log.info("feature set %s is due (tick %s): running incrementally to %s", name, runs.iso(tick), runs.iso(now))
        outcome = {"feature_set": name, "tick": runs.iso(tick)}
        try:
            run = store_materialize_incremental(store, fs_id, now)
            outcome.update(status=run["status"], run_id=run.get("id"), reason=run.get("reason"))
            log.info("feature set %s: run %s %s", name, run.get("id"), run["status"])
        except Conflict as exc:
            outcome.update(status="refused", error=exc.message)
            log.info("feature set %s not run: %s", name, exc.message)
        except FStoreError as exc:
            outcome.update(status="failed", error=exc.message)
            log.warning("feature set %s: scheduled run failed: %s", name, exc.message)
        except Exception as exc:  # noqa: BLE001 - one broken set must not stop the others
            outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            log.exception("feature set %s: scheduled run crashed", name)
        outcomes.append(outcome)
    return outcomes


def store_materialize_incremental(store: "FeatureStore", fs_id: int, end: datetime) -> dict:
    from fstore.materialize import materialize_incremental

    return materialize_incremental(store, fs_id, end=end, actor="scheduler", kind="scheduled")


def run_scheduler(store: "FeatureStore", *, once: bool = False, poll_seconds: float = 30,
                  stop: threading.Event | None = None) -> list[dict]:
    """Run due sets every ``poll_seconds`` until ``stop`` is set (or once, with ``once=True``).

    Returns the outcomes of the passes made (all of them; with ``once`` just the one).
    """
    if poll_seconds <= 0:
        raise InvalidDefinition("poll_seconds must be positive", field="poll_seconds")
    stop = stop or threading.Event()
    outcomes: list[dict] = []
    log.info("scheduler started (%s)", "once" if once else f"every {poll_seconds}s")
    while not stop.is_set():
        try:
            outcomes.extend(run_due(store))
        except Exception:  # noqa: BLE001 - e.g. the registry is unreachable: wait and try again
            if once:
                raise
            log.exception("scheduler pass failed; trying again in %ss", poll_seconds)
        if once or stop.wait(poll_seconds):
            break
    log.info("scheduler stopped")
    return outcomes
