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
- a failing run is recorded (by the run) and logged, and the loop carries on;
  a run that failed or was refused (the set was running) is tried again after
  ``SCHEDULER_RETRY_SECONDS``, doubling each time, up to ``SCHEDULER_RETRIES``
  times (a newer tick of the set replaces a pending retry);
- due sets run concurrently, up to ``SCHEDULER_CONCURRENCY`` at once (each set
  has its own lock, so they are independent);
- every run is reported (``report`` callback and the log): set, range, rows,
  status, seconds.

``once=True`` runs what is due (with its retries) and returns, for users who
drive it from cron or Airflow; the CLI then exits non-zero if a set's last
attempt failed or was refused.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from croniter import croniter
from sqlalchemy import select

from fstore.core.errors import Conflict, FStoreError, InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import FeatureSetRow, utcnow

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)


def claim_name(feature_set_id: int) -> str:
    return f"schedule:{feature_set_id}"


def scheduled_sets(store: "StoreContext") -> list[tuple[int, str, str]]:
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


def next_tick(cron: str, now: datetime) -> datetime | None:
    """The first time after ``now`` that ``cron`` fires (naive UTC); None for a schedule no date matches."""
    try:
        return croniter(cron, now).get_next(datetime)
    except (ValueError, KeyError):
        return None


def claim_tick(store: "StoreContext", feature_set_id: int, tick: datetime) -> bool:
    """Claim ``tick`` of a set if no scheduler has claimed it (or a later one) yet; atomic across schedulers."""
    name, value = claim_name(feature_set_id), runs.iso(tick)
    holder = runs.lock_holder(store.engine, name)
    if holder is not None and holder["owner"] >= value:
        return False
    return runs.compare_and_set(store.engine, name, holder["owner"] if holder else None, value)


@dataclass
class _Due:
    """A set to run: its tick, and which attempt this is (1 = the tick's first run)."""

    fs_id: int
    name: str
    tick: datetime
    attempt: int = 1


def run_due(store: "StoreContext", *, now: datetime | None = None,
            report: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every set whose schedule is due at ``now`` (concurrently, up to ``SCHEDULER_CONCURRENCY``); one
    outcome dict per set that was due, in the sets' name order."""
    now = runs.to_utc(now, field_name="now") if now is not None else utcnow().replace(microsecond=0)
    return run_all(store, claim_due(store, now), now, report=report)


def claim_due(store: "StoreContext", now: datetime) -> list[_Due]:
    """The sets whose latest tick at ``now`` this scheduler claimed (no other scheduler will run them)."""
    due = []
    for fs_id, name, cron in scheduled_sets(store):
        try:
            tick = latest_tick(cron, now)
        except (ValueError, KeyError) as exc:
            log.error("feature set %s has an unreadable schedule %r: %s", name, cron, exc)
            continue
        if claim_tick(store, fs_id, tick):
            due.append(_Due(fs_id, name, tick))
    return due


def run_all(store: "StoreContext", due: list[_Due], now: datetime, *,
            report: Callable[[dict], None] | None = None,
            decide: Callable[[_Due, dict], None] | None = None) -> list[dict]:
    """Run ``due`` to ``now``, up to ``SCHEDULER_CONCURRENCY`` at once; outcomes in ``due``'s order.

    One set runs in the calling thread (an interrupt reaches its run directly); several run in daemon
    threads, and an interrupt of the caller cancels them (``materialize.cancel_active_runs``). ``decide`` sees
    each outcome before it is logged and reported (the scheduler's retry)."""
    workers = min(store.settings.scheduler_concurrency, len(due))
    if workers <= 1:
        return [_run_one(store, item, now, report, decide) for item in due]
    results: list[dict | None] = [None] * len(due)
    pending = iter(enumerate(due))
    take = threading.Lock()

    def work() -> None:
        while True:
            with take:
                nxt = next(pending, None)
            if nxt is None:
                return
            i, item = nxt
            results[i] = _run_one(store, item, now, report, decide)

    threads = [threading.Thread(target=work, name=f"scheduler-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        from fstore.compute.materialize import cancel_active_runs

        cancel_active_runs(store, "cancelled: the scheduler was stopped (Ctrl-C or SIGTERM) during the run")
        raise
    return [r for r in results if r is not None]


def _run_one(store: "StoreContext", item: _Due, now: datetime, report: Callable[[dict], None] | None,
             decide: Callable[[_Due, dict], None] | None = None) -> dict:
    """One scheduled incremental run of a set, never raising (but for an interrupt): its outcome."""
    began = time.perf_counter()
    outcome: dict = {"feature_set": item.name, "tick": runs.iso(item.tick), "attempt": item.attempt,
                     "end": runs.iso(now)}
    try:
        run = store_materialize_incremental(store, item.fs_id, now)
        outcome.update(status=run["status"], run_id=run.get("id"), start=run.get("start"), end=run.get("end") or outcome["end"],
                       rows_written=run.get("rows_written"), reason=run.get("reason"))
    except Conflict as exc:
        outcome.update(status="refused", error=exc.message)
    except FStoreError as exc:
        outcome.update(status="failed", error=exc.message)
    except Exception as exc:  # noqa: BLE001 - one broken set must not stop the others
        outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        log.exception("feature set %s: scheduled run crashed", item.name)
    if outcome.get("status") == "succeeded":
        _retention_after(store, item, outcome)
        _tiers_after(store, item, outcome)
    outcome["seconds"] = round(time.perf_counter() - began, 3)
    if decide is not None:
        decide(item, outcome)
    level = logging.INFO if outcome["status"] in ("succeeded", "skipped") else logging.WARNING
    log.log(level, "scheduled run of %s [%s, %s): %s, %s rows, %.1fs%s", item.name, outcome.get("start") or "-",
            outcome.get("end") or runs.iso(now), outcome["status"], outcome.get("rows_written") or 0,
            outcome["seconds"], f": {outcome.get('error') or outcome.get('reason')}"
            if outcome.get("error") or outcome.get("reason") else "", extra={"reported": report is not None})
    if report is not None:
        try:
            report(outcome)
        except Exception:  # noqa: BLE001 - showing an outcome must not stop the scheduler
            log.debug("scheduler report failed", exc_info=True)
    return outcome


def _retention_after(store: "StoreContext", item: _Due, outcome: dict) -> None:
    """After a set's succeeded run, apply its retention (if it declares one): ``outcome["retention"]`` holds
    the rows deleted or the error; a failure here never fails the run, which has committed."""
    from fstore.compute.retention import apply_one, retention_sets

    if item.name not in retention_sets(store):
        return
    try:
        done = apply_one(store, item.fs_id, actor="scheduler")
        outcome["retention"] = {"cutoff": done["cutoff"], "rows_deleted": done["rows_deleted"], "version": done["version"]}
    except Exception as exc:  # noqa: BLE001 - the run succeeded; retention is retried after the next one
        outcome["retention"] = {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
        log.warning("feature set %s: retention after the scheduled run failed: %s", item.name,
                    outcome["retention"]["error"])


def _tiers_after(store: "StoreContext", item: _Due, outcome: dict) -> None:
    """After a set's succeeded run, move its days older than ``cold_after`` to cold (with COLD_STORAGE_PATH set):
    ``outcome["tiers"]`` holds the rows moved or the error; a failure never fails the committed run."""
    from fstore.compute.tiers import apply_one, tier_sets

    if not store.settings.cold_storage_path or item.name not in tier_sets(store):
        return
    try:
        done = apply_one(store, item.fs_id, actor="scheduler")
        outcome["tiers"] = {"boundary": done["boundary"], "rows_moved": done["rows_moved"],
                            "cold_version": done["cold_version"]}
    except Exception as exc:  # noqa: BLE001 - the run succeeded; the move is tried again after the next one
        outcome["tiers"] = {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
        log.warning("feature set %s: moving old days to cold storage failed: %s", item.name, outcome["tiers"]["error"])


def store_materialize_incremental(store: "StoreContext", fs_id: int, end: datetime) -> dict:
    from fstore.compute.materialize import materialize_incremental

    return materialize_incremental(store, fs_id, end=end, actor="scheduler", kind="scheduled")


def retry_delay(settings, attempt: int) -> float:
    """Seconds before try ``attempt + 1`` of a run that failed or was refused: doubling from the setting."""
    return settings.scheduler_retry_seconds * 2 ** (attempt - 1)


def run_scheduler(store: "StoreContext", *, once: bool = False, poll_seconds: float = 30,
                  stop: threading.Event | None = None, report: Callable[[dict], None] | None = None) -> list[dict]:
    """Run due sets every ``poll_seconds`` until ``stop`` is set (or once, with ``once=True``).

    A run that failed or was refused is tried again with backoff (``SCHEDULER_RETRIES``,
    ``SCHEDULER_RETRY_SECONDS``); with ``once`` the call waits for those retries before returning.
    Returns the outcomes of the passes made (every attempt, in order; ``retry_in`` on one to be retried).
    """
    if poll_seconds <= 0:
        raise InvalidDefinition("poll_seconds must be positive", field="poll_seconds")
    stop = stop or threading.Event()
    settings = store.settings
    outcomes: list[dict] = []
    retries: dict[int, tuple[float, _Due]] = {}  # set id -> (monotonic time due, what to run)
    log.info("scheduler started (%s, up to %d sets at once)", "once" if once else f"every {poll_seconds}s",
             settings.scheduler_concurrency)
    def decide(item: _Due, outcome: dict) -> None:
        if outcome["status"] in ("failed", "refused") and item.attempt <= settings.scheduler_retries:
            delay = retry_delay(settings, item.attempt)
            outcome["retry_in"] = delay
            with retry_lock:
                retries[item.fs_id] = (time.monotonic() + delay, _Due(item.fs_id, item.name, item.tick, item.attempt + 1))

    retry_lock = threading.Lock()
    first = True
    while not stop.is_set():
        try:
            now = utcnow().replace(microsecond=0)
            due = claim_due(store, now) if first or not once else []
            first = False
            for item in due:
                retries.pop(item.fs_id, None)  # a newer tick replaces a pending retry
            clock = time.monotonic()
            due += [item for at, item in retries.values() if at <= clock]
            for item in due:
                retries.pop(item.fs_id, None)
            outcomes.extend(run_all(store, due, now, report=report, decide=decide))
        except Exception:  # noqa: BLE001 - e.g. the registry is unreachable: wait and try again
            if once:
                raise
            log.exception("scheduler pass failed; trying again in %ss", poll_seconds)
        if once and not retries:
            break
        wait = poll_seconds
        if retries:
            wait = max(0.0, min(wait, min(at for at, _ in retries.values()) - time.monotonic()))
        if stop.wait(wait):
            break
    log.info("scheduler stopped")
    return outcomes
