"""The audit log: who did what, when, from where, and how it ended.

Every registry write, materialization and key change is recorded in table
``audit_log``. A record is written in its *own* short transaction (``record``
takes the engine, not the caller's session) so that an attempt that was
rejected or rolled back is still on file: that is when an audit trail matters.

``record_later`` takes the row off a hot path (push, whose target is an online write within 10 ms): the
row, timed at the call, goes to a bounded queue that one background writer per registry empties in batches,
one transaction per batch, within ``WRITE_DELAY_SECONDS``. Nothing is dropped: a full queue (or a writer that
cannot start) makes the call write inline; a batch the registry refuses is tried again, and the rows kept;
``flush`` writes everything queued (``list_audit`` flushes first, so this process reads its own rows), and
the store's ``close`` and the interpreter's exit flush too. What a writer still holds when it finally cannot
write is logged as an error with each row, never lost silently. A process killed outright (``SIGKILL``)
loses at most the rows of its last ``WRITE_DELAY_SECONDS``. A writer idle for ``IDLE_SECONDS`` ends (a store
never closed keeps no thread); rows are queued only while one runs, so none waits for a writer that ended.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition
from fstore.registry.models import AuditRow, utcnow

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "rejected", "failed")
WRITE_DELAY_SECONDS = 0.2  # how long a queued row may wait for its batch
MAX_QUEUED = 10_000  # rows queued per registry; past it, record_later writes inline
BATCH_ROWS = 1_000
IDLE_SECONDS = 60.0  # a writer with nothing to write this long ends (and lets go of its engine); the next row starts one


def outcome_for_status(status: int) -> str:
    """``ok`` for 2xx/3xx, ``rejected`` for a refused request (4xx), ``failed`` for a server error (5xx)."""
    if status < 400:
        return "ok"
    return "rejected" if status < 500 else "failed"


def record(engine: Engine, *, actor: str, action: str, target: str = "", source_ip: str = "",
           outcome: str = "ok", detail: dict[str, Any] | None = None) -> int:
    """Append one audit row in a transaction of its own; returns its id."""
    row = _row(actor=actor, action=action, target=target, source_ip=source_ip, outcome=outcome, detail=detail)
    with Session(engine) as s, s.begin():
        s.add(row)
        s.flush()
        return row.id


def record_later(engine: Engine, *, actor: str, action: str, target: str = "", source_ip: str = "",
                 outcome: str = "ok", detail: dict[str, Any] | None = None) -> None:
    """Queue one audit row (timed now) for the background writer of ``engine``'s registry (see the module
    docstring); written inline when the queue is full."""
    _writer(engine).submit(_row(actor=actor, action=action, target=target, source_ip=source_ip, outcome=outcome,
                                detail=detail))


def flush(engine: Engine, timeout: float = 30.0) -> bool:
    """Write every row ``record_later`` queued for ``engine`` so far; False when some still wait after ``timeout``
    seconds (the registry refuses them: the writer keeps trying)."""
    writer = _WRITERS.get(engine)
    return writer is None or writer.flush(timeout)


def close(engine: Engine) -> None:
    """Flush and stop ``engine``'s writer (the store's ``close``); a later ``record_later`` starts a new one."""
    writer = _WRITERS.pop(engine, None)
    if writer is not None:
        writer.close()


def _row(*, actor: str, action: str, target: str, source_ip: str, outcome: str, detail: dict[str, Any] | None) -> AuditRow:
    if outcome not in OUTCOMES:
        raise InvalidDefinition(f"audit outcome {outcome!r} is not one of {', '.join(OUTCOMES)}", field="outcome")
    return AuditRow(at=utcnow(), actor=(actor or "anonymous")[:200], action=action[:100], target=(target or "")[:300],
                    source_ip=(source_ip or "")[:64], outcome=outcome, detail=detail)


def _write(engine: Engine, rows: list[AuditRow]) -> None:
    with Session(engine) as s, s.begin():
        s.add_all(rows)


class _Writer:
    """One registry's queue of audit rows and the daemon thread writing them in batches."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, row: AuditRow) -> None:
        with self._lock:  # queued only while a writer runs (it ends idle under this lock: no row is stranded)
            if os.getpid() != self._pid:  # a forked worker: the parent's queue and thread are the parent's
                self._queue, self._thread, self._pid = queue.Queue(MAX_QUEUED), None, os.getpid()
            queued = not self._closed and self._started_locked() and _put(self._queue, row)
        if not queued:
            _write(self._engine, [row])  # closed, no thread, or the writer is behind: written now, never dropped

    def _started_locked(self) -> bool:
        if self._thread is None:
            try:
                thread = threading.Thread(target=self._run, name="fstore-audit-writer", daemon=True)
                thread.start()
            except RuntimeError:  # no new thread now (interpreter shutting down): inline
                return False
            self._thread = thread
        return True

    def _next(self) -> AuditRow | None | bool:
        """The next queued row (None: the close sentinel); False when idle for ``IDLE_SECONDS`` and so ended."""
        while True:
            try:
                return self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return False

    def _run(self) -> None:
        pending: list[AuditRow] = []
        failures = 0
        stop = False  # the sentinel of close() was taken: write what is pending, then end
        while True:
            if not pending and not stop:
                row = self._next()
                if row is False:
                    return
                if row is None:
                    self._queue.task_done()
                    return
                pending.append(row)
                time.sleep(0 if self._closed else WRITE_DELAY_SECONDS / 4)  # let a burst gather into one batch
            while len(pending) < BATCH_ROWS and not stop:
                try:
                    row = self._queue.get_nowait()
                except queue.Empty:
                    break
                if row is None:
                    stop = True
                    self._queue.task_done()
                    break
                pending.append(row)
            if not pending:
                return
            try:
                _write(self._engine, pending)
            except Exception as exc:  # noqa: BLE001 - the registry may be down: keep the rows, try again
                failures += 1
                if failures == 1:
                    log.warning("could not write %d audit record(s), will try again: %s", len(pending), exc)
                if self._closed and failures >= 3:
                    self._give_up(pending, exc)
                    return
                time.sleep(min(5.0, 0.1 * 2 ** failures))
                continue
            for _ in pending:
                self._queue.task_done()
            pending, failures = [], 0
            if stop:
                return

    def _give_up(self, rows: list[AuditRow], exc: BaseException) -> None:
        while True:  # and whatever is still queued behind them
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            if row is None:
                self._queue.task_done()
            else:
                rows.append(row)
        for row in rows:
            log.error("audit record NOT written (the registry refused it: %s): at=%s actor=%s action=%s target=%s "
                      "outcome=%s detail=%s", exc, row.at, row.actor, row.action, row.target, row.outcome, row.detail)
            self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline or self._thread is None or not self._thread.is_alive():
                return not self._queue.unfinished_tasks
            time.sleep(0.002)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread if os.getpid() == self._pid else None
        if thread is None or not thread.is_alive():
            return
        self._queue.put(None)
        thread.join(timeout=30.0)


def _put(q: queue.Queue, row: AuditRow) -> bool:
    try:
        q.put_nowait(row)
    except queue.Full:
        return False
    return True


_WRITERS: "weakref.WeakKeyDictionary[Engine, _Writer]" = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _writer(engine: Engine) -> _Writer:
    writer = _WRITERS.get(engine)
    if writer is None:
        with _WRITERS_LOCK:
            writer = _WRITERS.get(engine)
            if writer is None:
                writer = _WRITERS[engine] = _Writer(engine)
    return writer


@atexit.register
def _close_all() -> None:
    for writer in list(_WRITERS.values()):
        writer.close()


def _to_dict(row: AuditRow) -> dict:
    return {"id": row.id, "at": row.at.isoformat(timespec="milliseconds") + "Z", "actor": row.actor,
            "action": row.action, "target": row.target, "source_ip": row.source_ip, "outcome": row.outcome,
            "detail": row.detail}


def list_audit(s: Session, *, actor: str | None = None, action: str | None = None, outcome: str | None = None,
               target: str | None = None, since: datetime | None = None, until: datetime | None = None,
               limit: int = 50, offset: int = 0) -> dict:
    """Audit rows, newest first, filtered; ``action`` and ``target`` match a substring. The rows this process
    queued (``record_later``) are written first."""
    bind = s.get_bind()
    if isinstance(bind, Engine):
        flush(bind, timeout=5.0)  # a writer the registry refuses keeps its rows; the list shows what is written
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
