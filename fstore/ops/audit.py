"""The audit log: who did what, when, from where, and how it ended.

Every registry write, materialization and key change is recorded in table
``audit_log``. A record is written in its *own* short transaction (``record``
takes the engine, not the caller's session) so that an attempt that was
rejected or rolled back is still on file: that is when an audit trail matters.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition
from fstore.registry.models import AuditRow, utcnow

OUTCOMES = ("ok", "rejected", "failed")


def outcome_for_status(status: int) -> str:
    """``ok`` for 2xx/3xx, ``rejected`` for a refused request (4xx), ``failed`` for a server error (5xx)."""
    if status < 400:
        return "ok"
    return "rejected" if status < 500 else "failed"


def record(engine: Engine, *, actor: str, action: str, target: str = "", source_ip: str = "",
           outcome: str = "ok", detail: dict[str, Any] | None = None) -> int:
    """Append one audit row in a transaction of its own; returns its id."""
    if outcome not in OUTCOMES:
        raise InvalidDefinition(f"audit outcome {outcome!r} is not one of {', '.join(OUTCOMES)}", field="outcome")
    row = AuditRow(at=utcnow(), actor=(actor or "anonymous")[:200], action=action[:100], target=(target or "")[:300],
                   source_ip=(source_ip or "")[:64], outcome=outcome, detail=detail)
    with Session(engine) as s, s.begin():
        s.add(row)
        s.flush()
        return row.id


def _to_dict(row: AuditRow) -> dict:
    return {"id": row.id, "at": row.at.isoformat(timespec="milliseconds") + "Z", "actor": row.actor,
            "action": row.action, "target": row.target, "source_ip": row.source_ip, "outcome": row.outcome,
            "detail": row.detail}


def list_audit(s: Session, *, actor: str | None = None, action: str | None = None, outcome: str | None = None,
               target: str | None = None, since: datetime | None = None, until: datetime | None = None,
               limit: int = 50, offset: int = 0) -> dict:
    """Audit rows, newest first, filtered; ``action`` and ``target`` match a substring."""
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidDefinition(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}", field="outcome")
    if not 1 <= limit <= 1000:
        raise InvalidDefinition("limit must be between 1 and 1000", field="limit")
    if offset < 0:
        raise InvalidDefinition("offset must be >= 0", field="offset")
    query = select(AuditRow)
    if actor:
        query = query.where(AuditRow.actor.contains(actor, autoescape=True))
    if action:
        query = query.where(AuditRow.action.contains(action, autoescape=True))
    if target:
        query = query.where(AuditRow.target.contains(target, autoescape=True))
    if outcome:
        query = query.where(AuditRow.outcome == outcome)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if until is not None:
        query = query.where(AuditRow.at < until)
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    rows = s.scalars(query.order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(limit).offset(offset)).all()
    return {"items": [_to_dict(r) for r in rows], "total": total, "limit": limit, "offset": offset}
