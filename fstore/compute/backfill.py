"""Backfills: materialize a long range chunk by chunk, resumable after a failure or a kill.

A backfill is recorded (table ``backfills``) with its range and chunk size;
each chunk is an ordinary run (kind ``backfill``, ``backfill_id`` set), so it
takes the feature set's lock, writes one Delta commit and never moves online
values backwards. Running the same backfill again (same set, start, end and
chunk size) skips the chunks that already succeeded and starts at the first
one that did not.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from fstore.core.errors import FStoreError, InvalidDefinition
from fstore.registry import runs

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)


def chunks(start: datetime, end: datetime, chunk_seconds: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into consecutive ranges of ``chunk_seconds`` (the last may be shorter)."""
    step = timedelta(seconds=chunk_seconds)
    out, at = [], start
    while at < end:
        out.append((at, min(at + step, end)))
        at += step
    return out


def backfill(store: "StoreContext", ref: str | int, start: datetime, end: datetime, *, chunk_seconds: int = 86400,
             actor: str = "", progress: Callable[[dict], None] | None = None) -> dict:
    """Materialize ``[start, end)`` in chunks, in order, resuming an unfinished backfill of the same range.

    ``progress`` is called after each chunk with ``{backfill_id, chunk, chunks, start, end, status,
    run_id, rows_written}``. A failing chunk stops the backfill (recorded ``failed``) and its error
    is raised; the next call with the same arguments resumes at that chunk.
    """
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, int) or chunk_seconds <= 0:
        raise InvalidDefinition("chunk must be a positive number of seconds", field="chunk_seconds")
    start, end = runs.check_range(start, end)
    parts = chunks(start, end, chunk_seconds)
    if len(parts) > 100_000:
        raise InvalidDefinition(f"{len(parts)} chunks is too many; use a larger chunk", field="chunk_seconds")
    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name = row.id, row.name
        existing = runs.find_backfill(s, fs_id, start, end, chunk_seconds)
        record = existing or runs.create_backfill(s, fs_id, start, end, chunk_seconds)
        backfill_id = record.id
        runs.set_backfill_status(s, backfill_id, "running")
        done = runs.succeeded_chunks(s, backfill_id)
    if existing is not None:
        log.info("resuming backfill %s of %s: %d of %d chunks already done", backfill_id, name, len(done), len(parts))

    results: list[dict] = []
    rows_written = 0
    for index, (chunk_start, chunk_end) in enumerate(parts, start=1):
        event = {"backfill_id": backfill_id, "feature_set": name, "chunk": index, "chunks": len(parts),
                 "start": runs.iso(chunk_start), "end": runs.iso(chunk_end)}
        if (chunk_start, chunk_end) in done:
            results.append({"chunk": index, "status": "skipped", "run_id": done[(chunk_start, chunk_end)]})
            _report(progress, {**event, "status": "skipped", "run_id": done[(chunk_start, chunk_end)],
                               "rows_written": None})
            continue
        try:
            from fstore.compute.materialize import materialize

            run = materialize(store, fs_id, chunk_start, chunk_end, actor=actor, kind="backfill",
                              backfill_id=backfill_id)
        except FStoreError as exc:
            with store.transaction() as s:
                runs.set_backfill_status(s, backfill_id, "failed")
            _report(progress, {**event, "status": "failed", "run_id": None, "rows_written": None,
                               "error": exc.message})
            log.warning("backfill %s of %s stopped at chunk %d/%d: %s", backfill_id, name, index, len(parts),
                        exc.message)
            raise
        except BaseException:
            with store.transaction() as s:
                runs.set_backfill_status(s, backfill_id, "failed")
            raise
        rows_written += run.get("rows_written") or 0
        results.append({"chunk": index, "status": run["status"], "run_id": run["id"]})
        _report(progress, {**event, "status": run["status"], "run_id": run["id"],
                           "rows_written": run.get("rows_written")})
    with store.transaction() as s:
        runs.set_backfill_status(s, backfill_id, "succeeded")
    log.info("backfill %s of %s done: %d chunks, %d rows written", backfill_id, name, len(parts), rows_written)
    return {"id": backfill_id, "feature_set": name, "start": runs.iso(start), "end": runs.iso(end),
            "chunk_seconds": chunk_seconds, "status": "succeeded", "resumed": existing is not None,
            "chunks": len(parts), "chunks_run": sum(1 for r in results if r["status"] != "skipped"),
            "chunks_skipped": sum(1 for r in results if r["status"] == "skipped"),
            "rows_written": rows_written, "runs": results}


def _report(progress: Callable[[dict], None] | None, event: dict) -> None:
    if progress is not None:
        progress(event)
