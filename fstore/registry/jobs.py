"""Background jobs (batch retrieval): a row per job with status, progress and result.

A job moves ``pending`` → ``running`` → ``succeeded``/``failed``. The process
that runs it (``jobs/retrieve.py``, detached from the caller) updates progress
as it goes and, at the end, records the output location and row count in
``result`` or the error message in ``error``. Functions take a SQLAlchemy
``Session``; the caller frames the transaction.
"""
from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.models import JobRow, LockRow, utcnow
from fstore.registry.runs import iso

JOB_STATUSES = ("pending", "running", "succeeded", "failed")
JOB_KINDS = ("batch_retrieval",)
JOB_LEASE_SECONDS = 120.0


def job_dict(row: JobRow) -> dict[str, Any]:
    """The JSON shape of a job."""
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": row.progress,
        "params": row.params,
        "result": row.result,
        "error": row.error,
        "created_by": row.created_by,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
    }


def create_job(s: Session, kind: str, params: dict[str, Any], *, actor: str = "") -> dict[str, Any]:
    """Record a new pending job and return it (its ``id`` is a UUID)."""
    if kind not in JOB_KINDS:
        raise InvalidDefinition(f"job kind {kind!r} is not one of: {', '.join(JOB_KINDS)}", field="kind")
    row = JobRow(id=str(uuid.uuid4()), kind=kind, status="pending", params=params, progress=0.0,
                 created_by=actor or "", created_at=utcnow())
    s.add(row)
    s.flush()
    return job_dict(row)


def _row(s: Session, job_id: str) -> JobRow:
    row = s.get(JobRow, job_id) if isinstance(job_id, str) and job_id else None
    if row is None:
        raise NotFound(f"job {job_id} not found", field="job_id")
    return row


def lease_name(job_id: str) -> str:
    """The registry lease a job's process holds (and renews) while it works."""
    return f"job:{job_id}"


def _close_if_abandoned(s: Session, row: JobRow) -> None:
    """Mark failed a job whose process is gone: running without a live lease, or pending for longer than one.

    The job process takes its lease before it moves the job to ``running`` and renews it every
    ``JOB_LEASE_SECONDS / 3``; a killed process stops renewing, so its lease expires.
    """
    if row.status not in ("pending", "running"):
        return
    now = utcnow()
    if row.status == "pending":
        if row.created_at is not None and row.created_at < now - timedelta(seconds=JOB_LEASE_SECONDS):
            row.status, row.finished_at = "failed", now
            row.error = f"never started: no job process took it up within {JOB_LEASE_SECONDS:.0f}s"
            s.flush()
        return
    lease = s.get(LockRow, lease_name(row.id))
    if lease is None or lease.expires_at < now:
        since = iso(lease.expires_at) if lease is not None else "an unknown time"
        row.status, row.finished_at = "failed", now
        row.error = (f"abandoned: its process stopped renewing its lease (lease ended {since}); "
                     "the output may be incomplete, start the job again")
        s.flush()


def get_job(s: Session, job_id: str) -> dict[str, Any]:
    """A job by id (a job whose process died is reported, and recorded, as failed); ``NotFound`` names an unknown id."""
    row = _row(s, job_id)
    _close_if_abandoned(s, row)
    return job_dict(row)


def update_job(s: Session, job_id: str, *, status: str | None = None, progress: float | None = None,
               result: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """Move a job on: status, progress in ``[0, 1]``, the result, or the error. Finishing stamps the time."""
    row = _row(s, job_id)
    if status is not None:
        if status not in JOB_STATUSES:
            raise InvalidDefinition(f"job status {status!r} is not one of: {', '.join(JOB_STATUSES)}", field="status")
        row.status = status
        if status in ("succeeded", "failed"):
            row.finished_at = utcnow()
    if progress is not None:
        row.progress = min(1.0, max(0.0, float(progress)))
    if result is not None:
        row.result = result
    if error is not None:
        row.error = error
    s.flush()
    return job_dict(row)


def list_jobs(s: Session, *, kind: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Jobs, newest first: ``{"items", "total", "limit", "offset"}``."""
    query = select(JobRow)
    count = select(func.count()).select_from(JobRow)
    if kind:
        query, count = query.where(JobRow.kind == kind), count.where(JobRow.kind == kind)
    rows = s.scalars(query.order_by(JobRow.created_at.desc()).limit(limit).offset(offset)).all()
    for row in rows:
        _close_if_abandoned(s, row)
    return {"items": [job_dict(r) for r in rows], "total": s.scalar(count), "limit": limit, "offset": offset}
