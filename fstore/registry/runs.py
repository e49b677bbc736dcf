"""Materialization runs, watermarks, backfills and the cross-process lease lock.

A run row is the record of one materialization of ``[start, end)`` of a feature
set: its status (``pending`` → ``running`` → ``succeeded``/``failed``/``cancelled``), its
figures, the Delta version it wrote, per-stage seconds and the quality report.

The lock is a row in ``locks`` whose primary key is the lock's name: inserting
it is atomic in any SQL database, so two processes — or two machines on one
PostgreSQL registry — cannot both hold it. A holder keeps it alive by
heartbeat; a lease whose holder died expires and is taken over by a single
conditional ``UPDATE`` (only one taker's ``WHERE expires_at < now`` matches).

Functions take a SQLAlchemy ``Session`` (the caller frames the transaction),
except the lock functions, which also accept an ``Engine`` so that a lock is
committed on its own, independently of any longer transaction.
"""
from __future__ import annotations

import logging
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fstore.core.errors import Conflict, InvalidDefinition, NotFound
from fstore.registry.models import BackfillRow, FeatureSetRow, LockRow, MaterializationRunRow, utcnow

log = logging.getLogger(__name__)

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
RUN_KINDS = ("full", "incremental", "backfill", "scheduled")
STAGES = ("read", "compute_validate", "offline", "online")


# -- time ---------------------------------------------------------------------------------------

def to_utc(value: datetime | str, *, field_name: str = "start") -> datetime:
    """Naive UTC (the registry's convention) from an aware datetime, a naive UTC one or ISO text."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise InvalidDefinition(f"{field_name} {text!r} is not an ISO 8601 timestamp", field=field_name) from None
    if not isinstance(value, datetime):
        raise InvalidDefinition(f"{field_name} must be a timestamp", field=field_name)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with ``Z`` for a naive UTC datetime (None stays None)."""
    if value is None:
        return None
    return value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds") + "Z"


def check_range(start: datetime | str, end: datetime | str) -> tuple[datetime, datetime]:
    """``(start, end)`` as naive UTC, refusing an empty or reversed range."""
    start_utc, end_utc = to_utc(start, field_name="start"), to_utc(end, field_name="end")
    if start_utc >= end_utc:
        raise InvalidDefinition(f"start {iso(start_utc)} must be before end {iso(end_utc)}", field="start")
    return start_utc, end_utc


# -- feature sets -------------------------------------------------------------------------------

def feature_set_row(s: Session, ref: str | int) -> FeatureSetRow:
    """The feature set named by ``ref``: an integer id, a numeric string id, or a name."""
    row = None
    if isinstance(ref, int) and not isinstance(ref, bool):
        row = s.get(FeatureSetRow, ref)
    elif isinstance(ref, str) and ref.strip():
        text = ref.strip()
        if text.isdigit():
            row = s.get(FeatureSetRow, int(text))
        if row is None:
            row = s.scalars(select(FeatureSetRow).where(FeatureSetRow.name == text)).first()
    if row is None:
        raise NotFound(f"feature set {ref!r} does not exist", field="feature_set")
    return row


def get_watermark(s: Session, feature_set_id: int) -> datetime | None:
    """The end of the latest successful run's range, at most when that run started (None before the first run)."""
    return s.scalar(select(FeatureSetRow.watermark).where(FeatureSetRow.id == feature_set_id))


def advance_watermark(s: Session, feature_set_id: int, end: datetime) -> bool:
    """Move the watermark to ``end`` if it is later; never backwards (a backfill of an old range)."""
    result = s.execute(
        update(FeatureSetRow)
        .where(FeatureSetRow.id == feature_set_id,
               or_(FeatureSetRow.watermark.is_(None), FeatureSetRow.watermark < end))
        .values(watermark=end)
    )
    return result.rowcount == 1


# -- runs ---------------------------------------------------------------------------------------

def run_to_dict(row: MaterializationRunRow, feature_set_name: str) -> dict[str, Any]:
    """The JSON shape of a run."""
    return {
        "id": row.id,
        "feature_set": feature_set_name,
        "feature_set_id": row.feature_set_id,
        "feature_set_version": row.feature_set_version,
        "kind": row.kind,
        "backfill_id": row.backfill_id,
        "start": iso(row.start),
        "end": iso(row.end),
        "status": row.status,
        "rows_read": row.rows_read,
        "rows_written": row.rows_written,
        "rows_rejected": row.rows_rejected,
        "online_rows": row.online_rows,
        "offline_version": row.offline_version,
        "duration_s": row.duration_s,
        "stages": row.stages,
        "quality": row.quality,
        "late_dropped": row.late_dropped,
        "cost": row.cost,
        "source_files": len((row.source_read or {}).get("files", {})) if row.source_read else None,
        "error": row.error,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
    }


def _run_row(s: Session, run_id: str) -> MaterializationRunRow:
    row = s.get(MaterializationRunRow, run_id) if isinstance(run_id, str) else None
    if row is None:
        raise NotFound(f"materialization run {run_id!r} does not exist", field="run_id")
    return row


def _dict(s: Session, row: MaterializationRunRow) -> dict[str, Any]:
    name = s.scalar(select(FeatureSetRow.name).where(FeatureSetRow.id == row.feature_set_id)) or ""
    return run_to_dict(row, name)


def create_run(s: Session, *, feature_set_id: int, feature_set_version: int, start: datetime, end: datetime,
               kind: str = "full", actor: str = "", backfill_id: str | None = None,
               status: str = "pending", run_id: str | None = None) -> dict[str, Any]:
    """Record a new run (``pending``, or ``running`` when the caller already holds the lock)."""
    if kind not in RUN_KINDS:
        raise InvalidDefinition(f"run kind {kind!r} is not one of: {', '.join(RUN_KINDS)}", field="kind")
    if status not in ("pending", "running"):
        raise InvalidDefinition(f"a new run is pending or running, not {status!r}", field="status")
    start, end = check_range(start, end)
    now = utcnow()
    row = MaterializationRunRow(
        id=run_id or str(uuid.uuid4()), feature_set_id=feature_set_id, feature_set_version=feature_set_version,
        kind=kind, backfill_id=backfill_id, start=start, end=end, status=status, created_by=actor or "",
        created_at=now, started_at=now if status == "running" else None,
    )
    s.add(row)
    s.flush()
    return _dict(s, row)


def start_run(s: Session, run_id: str) -> dict[str, Any]:
    """Mark a pending run running; a run that is not pending cannot start again."""
    result = s.execute(
        update(MaterializationRunRow)
        .where(MaterializationRunRow.id == run_id, MaterializationRunRow.status == "pending")
        .values(status="running", started_at=utcnow())
    )
    row = _run_row(s, run_id)
    if result.rowcount != 1:
        raise Conflict(f"run {run_id} is {row.status}, not pending; it cannot be started again", field="run_id")
    s.refresh(row)
    return _dict(s, row)


def loaded_online(s: Session, names: list[str] | None = None) -> set[str]:
    """Names of the sets (among ``names``, or all) with a succeeded run that wrote rows online.

    What the online store's load marker is checked against (``fstore.storage.online.marker``):
    such a set whose store holds neither marker nor values has lost them.
    """
    query = (select(FeatureSetRow.name).join(MaterializationRunRow, MaterializationRunRow.feature_set_id == FeatureSetRow.id)
             .where(MaterializationRunRow.status == "succeeded", MaterializationRunRow.online_rows > 0).distinct())
    if names is not None:
        if not names:
            return set()
        query = query.where(FeatureSetRow.name.in_(names))
    return set(s.scalars(query).all())


def finish_run(s: Session, run_id: str, *, status: str, error: str | None = None, **figures: Any) -> dict[str, Any]:
    """Record the outcome of a run: its status, figures, stages, quality report and error.

    A run already ``cancelled`` (its process was stopped, ``materialize.cancel_active_runs``) stays cancelled."""
    if status not in ("succeeded", "failed", "cancelled"):
        raise InvalidDefinition(f"a run finishes succeeded, failed or cancelled, not {status!r}", field="status")
    allowed = {"rows_read", "rows_written", "rows_rejected", "online_rows", "offline_version", "stages", "quality",
               "source_read", "late_dropped", "cost"}
    unknown = set(figures) - allowed
    if unknown:
        raise InvalidDefinition(f"unknown run figure(s): {', '.join(sorted(unknown))}")
    row = _run_row(s, run_id)
    if row.status == "cancelled":
        return _dict(s, row)
    now = utcnow()
    row.status = status
    row.error = error
    row.finished_at = now
    row.duration_s = round((now - (row.started_at or row.created_at)).total_seconds(), 3)
    for key, value in figures.items():
        if value is not None:
            setattr(row, key, value)
    s.flush()
    return _dict(s, row)


def get_run(s: Session, run_id: str) -> dict[str, Any]:
    """One run by id (``NotFound`` naming the id otherwise)."""
    return _dict(s, _run_row(s, run_id))


def list_runs(s: Session, ref: str | int | None, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Runs newest first, of one feature set (``ref``) or of all (``None``): ``{items, total, limit, offset}``."""
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidDefinition("limit must be between 1 and 1000", field="limit")
    if not isinstance(offset, int) or offset < 0:
        raise InvalidDefinition("offset must be 0 or more", field="offset")
    query = select(MaterializationRunRow, FeatureSetRow.name).join(
        FeatureSetRow, FeatureSetRow.id == MaterializationRunRow.feature_set_id)
    count = select(func.count()).select_from(MaterializationRunRow)
    if ref is not None:
        fs_id = feature_set_row(s, ref).id
        query = query.where(MaterializationRunRow.feature_set_id == fs_id)
        count = count.where(MaterializationRunRow.feature_set_id == fs_id)
    rows = s.execute(query.order_by(MaterializationRunRow.created_at.desc(), MaterializationRunRow.id)
                     .limit(limit).offset(offset)).all()
    return {"items": [run_to_dict(run, name) for run, name in rows], "total": s.scalar(count) or 0,
            "limit": limit, "offset": offset}


def last_source_read(s: Session, feature_set_id: int) -> dict[str, Any] | None:
    """What of the source the set's latest succeeded run that recorded it read (None before any)."""
    return s.scalars(select(MaterializationRunRow.source_read).where(
        MaterializationRunRow.feature_set_id == feature_set_id, MaterializationRunRow.status == "succeeded",
        MaterializationRunRow.source_read.is_not(None))
        .order_by(MaterializationRunRow.finished_at.desc()).limit(1)).first()


def source_read_at(s: Session, feature_set_id: int, offline_version: int) -> dict[str, Any] | None:
    """What of the source the run that wrote ``offline_version`` (or the latest one before it) read."""
    return s.scalars(select(MaterializationRunRow.source_read).where(
        MaterializationRunRow.feature_set_id == feature_set_id, MaterializationRunRow.status == "succeeded",
        MaterializationRunRow.offline_version <= offline_version, MaterializationRunRow.source_read.is_not(None))
        .order_by(MaterializationRunRow.offline_version.desc()).limit(1)).first()


def fail_abandoned_run(s: Session, run_id: str, reason: str) -> bool:
    """Mark a run still ``running``/``pending`` whose process is gone as failed (its lock expired)."""
    row = s.get(MaterializationRunRow, run_id)
    if row is None or row.status not in ("pending", "running"):
        return False
    finish_run(s, run_id, status="failed", error=reason)
    return True


def fail_stale_pending(s: Session, feature_set_id: int, *, older_than: datetime, reason: str) -> list[str]:
    """Mark ``pending`` runs of a set created before ``older_than`` failed (their job never started them)."""
    rows = s.scalars(select(MaterializationRunRow).where(
        MaterializationRunRow.feature_set_id == feature_set_id, MaterializationRunRow.status == "pending",
        MaterializationRunRow.created_at < older_than)).all()
    for row in rows:
        finish_run(s, row.id, status="failed", error=reason)
    return [row.id for row in rows]


# -- backfills ----------------------------------------------------------------------------------

def backfill_to_dict(row: BackfillRow) -> dict[str, Any]:
    return {"id": row.id, "feature_set_id": row.feature_set_id, "start": iso(row.start), "end": iso(row.end),
            "chunk_seconds": row.chunk_seconds, "status": row.status, "created_at": iso(row.created_at)}


def find_backfill(s: Session, feature_set_id: int, start: datetime, end: datetime, chunk_seconds: int) -> BackfillRow | None:
    """The latest unfinished backfill of exactly this range and chunk size (what a re-run resumes)."""
    return s.scalars(
        select(BackfillRow)
        .where(BackfillRow.feature_set_id == feature_set_id, BackfillRow.start == start, BackfillRow.end == end,
               BackfillRow.chunk_seconds == chunk_seconds, BackfillRow.status != "succeeded")
        .order_by(BackfillRow.created_at.desc())
    ).first()


def create_backfill(s: Session, feature_set_id: int, start: datetime, end: datetime, chunk_seconds: int) -> BackfillRow:
    row = BackfillRow(id=str(uuid.uuid4()), feature_set_id=feature_set_id, start=start, end=end,
                      chunk_seconds=chunk_seconds, status="running", created_at=utcnow())
    s.add(row)
    s.flush()
    return row


def set_backfill_status(s: Session, backfill_id: str, status: str) -> None:
    s.execute(update(BackfillRow).where(BackfillRow.id == backfill_id).values(status=status))


def succeeded_chunks(s: Session, backfill_id: str) -> dict[tuple[datetime, datetime], str]:
    """``(start, end) -> run id`` of the chunks of a backfill that succeeded."""
    rows = s.execute(select(MaterializationRunRow.start, MaterializationRunRow.end, MaterializationRunRow.id)
                     .where(MaterializationRunRow.backfill_id == backfill_id,
                            MaterializationRunRow.status == "succeeded")).all()
    return {(start, end): run_id for start, end, run_id in rows}


# -- the lease lock -----------------------------------------------------------------------------

@contextmanager
def _tx(bind: Engine | Session) -> Iterator[Session]:
    """A transaction of its own on an engine, or a savepoint inside the caller's session."""
    if isinstance(bind, Session):
        with bind.begin_nested():
            yield bind
    else:
        with Session(bind) as s, s.begin():
            yield s


def lock_holder(bind: Engine | Session, name: str) -> dict[str, Any] | None:
    """Who holds lock ``name`` (``owner``, ``acquired_at``, ``expires_at``, ``expired``), or None."""
    with _tx(bind) as s:
        row = s.get(LockRow, name, populate_existing=True)
        if row is None:
            return None
        return {"name": row.name, "owner": row.owner, "acquired_at": row.acquired_at, "expires_at": row.expires_at,
                "expired": row.expires_at <= utcnow()}


def try_acquire_lock(bind: Engine | Session, name: str, owner: str, ttl: float) -> dict[str, Any] | None:
    """Take lock ``name`` for ``ttl`` seconds. Returns None when taken, else the live holder.

    A holder whose lease expired is replaced; the previous holder is returned
    with ``taken_over=True`` in that case so the caller can clean up after it.
    """
    if ttl <= 0:
        raise InvalidDefinition("lock ttl must be positive", field="ttl")
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    try:
        with _tx(bind) as s:
            s.execute(insert(LockRow).values(name=name, owner=owner, acquired_at=now, expires_at=expires))
        return None
    except IntegrityError:
        pass  # someone holds it (or held it and died): look at the lease
    holder = lock_holder(bind, name)
    if holder is None:  # released between our insert and our look: try once more
        return try_acquire_lock(bind, name, owner, ttl)
    if not holder["expired"]:
        return holder
    with _tx(bind) as s:
        taken = s.execute(
            update(LockRow)
            .where(LockRow.name == name, LockRow.owner == holder["owner"], LockRow.expires_at <= now)
            .values(owner=owner, acquired_at=now, expires_at=expires)
        ).rowcount == 1
    if taken:
        return {**holder, "taken_over": True}
    return lock_holder(bind, name) or {**holder, "expired": False}


def acquire_lock(bind: Engine | Session, name: str, owner: str, ttl: float) -> dict[str, Any] | None:
    """Take lock ``name`` or raise ``Conflict`` naming its holder and since when.

    Returns the expired holder it replaced (``taken_over``), else None.
    """
    holder = try_acquire_lock(bind, name, owner, ttl)
    if holder is None or holder.get("taken_over"):
        return holder
    raise Conflict(f"lock {name} is held by {holder['owner']} since {iso(holder['acquired_at'])} "
                   f"(lease until {iso(holder['expires_at'])})")


def heartbeat_lock(bind: Engine | Session, name: str, owner: str, ttl: float) -> bool:
    """Extend the lease by ``ttl`` seconds from now; False when ``owner`` no longer holds it."""
    with _tx(bind) as s:
        return s.execute(
            update(LockRow).where(LockRow.name == name, LockRow.owner == owner)
            .values(expires_at=utcnow() + timedelta(seconds=ttl))
        ).rowcount == 1


@contextmanager
def keep_lease(engine: Engine, name: str, owner: str, ttl: float) -> Iterator[threading.Event]:
    """Renew lock ``name`` every ``ttl/3`` seconds while the block runs; the event is set if the lease was lost.

    A process that dies stops renewing, so its lease expires and others can see it is gone.
    """
    stop, lost = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(ttl / 3):
            try:
                if not heartbeat_lock(engine, name, owner, ttl):
                    lost.set()
                    return
            except Exception:  # noqa: BLE001 - a registry blip: try again next beat, the lease has slack
                log.warning("heartbeat of lock %s failed; retrying", name, exc_info=True)

    thread = threading.Thread(target=beat, name=f"lease-{owner[:8]}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)


def release_lock(bind: Engine | Session, name: str, owner: str) -> bool:
    """Release the lock if ``owner`` holds it (a lock taken over by another is left alone)."""
    with _tx(bind) as s:
        return s.execute(delete(LockRow).where(LockRow.name == name, LockRow.owner == owner)).rowcount == 1


def compare_and_set(bind: Engine | Session, name: str, expected: str | None, value: str) -> bool:
    """Atomically set a never-expiring named marker from ``expected`` (None = absent) to ``value``.

    The scheduler claims a cron tick this way, so two schedulers never both run the same tick.
    """
    far = datetime(9999, 12, 31)
    try:
        with _tx(bind) as s:
            if expected is None:
                s.execute(insert(LockRow).values(name=name, owner=value, acquired_at=utcnow(), expires_at=far))
                return True
            return s.execute(
                update(LockRow).where(and_(LockRow.name == name, LockRow.owner == expected))
                .values(owner=value, acquired_at=utcnow())
            ).rowcount == 1
    except IntegrityError:
        return False
