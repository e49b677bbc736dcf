"""Materialization: compute a feature set over ``[start, end)`` into the offline and online stores.

One run = take the feature set's lock → record the run → compute on Spark (the
engine reads the look-back the longest window needs) → validate → write the
offline store (one Delta commit replacing exactly ``[start, end)``) → bulk-load
the latest row per key online → record figures, per-stage seconds and the
quality report → advance the watermark → release the lock.

Nothing partial is written by a failing run: computation and validation finish
(on a cached DataFrame) before the first write, and the offline write is one
atomic commit. The lock is a registry lease (``fstore.registry.runs``), kept
alive by a heartbeat thread, so a second run of the same set — from any
process or machine — is refused with ``Conflict`` naming the running run.
"""
from __future__ import annotations

import logging
import os
import subprocess
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fstore.definitions.model import FeatureSet
from fstore.core.errors import ComputeError, Conflict, FStoreError, InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import utcnow

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.storage.online.marker import LoadInfo
    from fstore.core.settings import Settings
    from fstore.core.context import StoreContext
    from fstore.compute.shared_scan import SharedScan

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 120.0
JOB_SCRIPT = Path(__file__).resolve().parents[2] / "jobs" / "materialize.py"
_MAX_ERROR = 4000


def lock_name(feature_set_id: int) -> str:
    """The registry lock that one feature set's runs share."""
    return f"materialize:{feature_set_id}"


# -- public entry points ------------------------------------------------------------------------

def materialize(store: "StoreContext", ref: str | int, start: datetime, end: datetime, *, actor: str = "",
                kind: str = "full", backfill_id: str | None = None, lock_ttl: float = LOCK_TTL_SECONDS,
                source_read: dict | None = None, late_dropped: int | None = None,
                progress: Callable[[dict], None] | None = None, shared: "SharedScan | None" = None) -> dict:
    """Compute ``[start, end)`` of the current version of ``ref``; returns the finished run.

    Raises ``Conflict`` (nothing recorded) when another run of the set holds the
    lock, and the run's ``FStoreError`` (recorded on the run as ``failed``) when
    it fails. Interrupted (Ctrl-C, or SIGTERM turned into ``KeyboardInterrupt``
    by the CLI), the run is recorded ``cancelled`` and its lock released at once.
    ``progress`` receives an event per stage (``Progress``); ``shared`` (``materialize_many``) gives the
    source already read for several sets.
    """
    start, end = runs.check_range(start, end)
    with store.transaction() as s:
        fs_id = runs.feature_set_row(s, ref).id
        fsv = _load_version(store, s, fs_id, None)
    _refuse_storing_nothing(fsv.feature_set)
    run_id = str(uuid.uuid4())
    taken = _take_lock(store, fs_id, fsv.name, run_id, lock_ttl)
    try:
        with store.transaction() as s:
            runs.create_run(s, feature_set_id=fs_id, feature_set_version=fsv.version, start=start, end=end,
                            kind=kind, actor=actor, backfill_id=backfill_id, status="running", run_id=run_id)
    except BaseException:
        runs.release_lock(store.engine, lock_name(fs_id), run_id)
        raise
    _clean_up_after(store, taken, fs_id)
    return _run_locked(store, run_id, fs_id, fsv, start, end, lock_ttl, source_read=source_read,
                       late_dropped=late_dropped, skip_empty=kind in ("incremental", "scheduled"), progress=progress,
                       shared=shared)


def execute_run(store: "StoreContext", run_id: str, *, lock_ttl: float = LOCK_TTL_SECONDS) -> dict:
    """Execute a recorded ``pending`` run (what ``jobs/materialize.py --run-id`` does)."""
    with store.transaction() as s:
        run = runs.get_run(s, run_id)
        if run["status"] != "pending":
            raise Conflict(f"run {run_id} is {run['status']}, not pending; start a new run instead", field="run_id")
        fs_id = run["feature_set_id"]
        fsv = _load_version(store, s, fs_id, run["feature_set_version"])
    start, end = runs.to_utc(run["start"]), runs.to_utc(run["end"])
    try:
        taken = _take_lock(store, fs_id, fsv.name, run_id, lock_ttl)
    except Conflict as exc:
        with store.transaction() as s:
            runs.finish_run(s, run_id, status="failed", error=exc.message)
        raise
    try:
        with store.transaction() as s:
            runs.start_run(s, run_id)
    except BaseException:
        runs.release_lock(store.engine, lock_name(fs_id), run_id)
        raise
    _clean_up_after(store, taken, fs_id)
    return _run_locked(store, run_id, fs_id, fsv, start, end, lock_ttl)


def start_materialization(store: "StoreContext", ref: str | int, start: datetime, end: datetime, *,
                          actor: str = "") -> dict:
    """Record a ``pending`` run and execute it in a detached process; returns the run at once.

    The process (``python jobs/materialize.py --run-id ID``) outlives a web
    worker restart and keeps the JVM out of the server; the run row tracks it.
    A set already running (or with a run just started) is refused with ``Conflict``.
    """
    start, end = runs.check_range(start, end)
    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name, version = row.id, row.name, row.version
        _refuse_storing_nothing(FeatureSet.from_dict(row.spec))
    holder = runs.lock_holder(store.engine, lock_name(fs_id))
    if holder is not None and not holder["expired"]:
        raise Conflict(_conflict_message(store, name, holder))
    with store.transaction() as s:
        _refuse_fresh_pending(s, fs_id, name)
        run = runs.create_run(s, feature_set_id=fs_id, feature_set_version=version, start=start, end=end,
                              kind="full", actor=actor)
    try:
        spawn_run_process(store.settings, run["id"])
    except OSError as exc:
        with store.transaction() as s:
            runs.finish_run(s, run["id"], status="failed", error=f"could not start the job process: {exc}")
        raise ComputeError(f"could not start the materialization job for {name}: {exc}") from None
    return run


def materialize_incremental(store: "StoreContext", ref: str | int, *, end: datetime | None = None, actor: str = "",
                            kind: str = "incremental", progress: Callable[[dict], None] | None = None) -> dict:
    """Compute what is new since the last run: from the set's watermark (or its source's earliest event) to
    ``end`` (default now), and back to the earliest event of any source file the last run did not read.

    New data is found by what was read, not by event time (``fstore.compute.source_read``): an event before the
    watermark arriving in a new file is processed, with every window it falls in. The set's
    ``allowed_lateness`` bounds how far back: events older than ``watermark - allowed_lateness`` are
    counted on the run (``late_dropped``), never silently lost. The engine reads the look-back the longest
    window needs, so windows straddling the start come out as a full recomputation would give them. A run
    that finds no rows writes no Delta version. When there is nothing to compute (the watermark is at or
    past ``end`` and no file is new, or the source is empty) no run is recorded and a dict with
    ``status: "skipped"`` and the reason is returned.
    """
    from fstore.compute import source_read

    end = runs.to_utc(end, field_name="end") if end is not None else utcnow().replace(microsecond=0)
    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name, watermark = row.id, row.name, row.watermark
        fsv = _load_version(store, s, fs_id, None)
        previous = runs.last_source_read(s, fs_id)
    _refuse_stream_source(fsv.feature_set)
    current = source_read.take(fsv.feature_set.source)
    start = watermark if watermark is not None else _earliest_event(store, fsv)
    if start is None:
        return _skipped(name, None, end, f"the source of {name} has no rows yet")
    late_dropped = 0
    fresh = new_files(previous, current) if watermark is not None else None
    if fresh:
        lateness = fsv.feature_set.allowed_lateness_seconds
        cutoff = watermark - timedelta(seconds=lateness) if lateness is not None else None
        earliest, late_dropped = source_read.scan_late(store, fsv.feature_set.source, fresh, cutoff)
        if earliest is not None and earliest < start:
            start = max(earliest, cutoff) if cutoff is not None else earliest
            log.info("%s: new source data holds events from %s, before the watermark %s; recomputing from %s",
                     name, runs.iso(earliest), runs.iso(watermark), runs.iso(start))
        if late_dropped:
            log.warning("%s: %d late event(s) are older than allowed_lateness (before %s) and were not processed",
                        name, late_dropped, runs.iso(cutoff))
    if start >= end:
        return _skipped(name, start, end, f"{name} is materialized up to {runs.iso(start)}, not before {runs.iso(end)}")
    return materialize(store, fs_id, start, end, actor=actor, kind=kind, source_read=current,
                       late_dropped=late_dropped, progress=progress)


def new_files(previous: dict | None, current: dict | None) -> list[str] | None:
    """The source files the last run did not read as they are now (None when either listing is unknown)."""
    from fstore.compute import source_read

    return source_read.new_files(previous, current)


# -- the run itself -----------------------------------------------------------------------------

def _run_locked(store: "StoreContext", run_id: str, fs_id: int, fsv: "FeatureSetVersion", start: datetime,
                end: datetime, lock_ttl: float, *, source_read: dict | None = None, late_dropped: int | None = None,
                skip_empty: bool = False, progress: Callable[[dict], None] | None = None,
                shared: "SharedScan | None" = None) -> dict:
    """Do the work of a run whose lock is held; always records the outcome and releases the lock.

    The run records what of the source it reads (listed before reading, so a file arriving meanwhile is
    new to the next run); ``skip_empty`` (incremental and scheduled runs) writes nothing for no rows."""
    from fstore.compute import source_read as reads

    name = lock_name(fs_id)
    if source_read is None:
        shares = shared is not None and shared.shares(fsv.feature_set.source)
        source_read = shared.listing(fsv.feature_set.source) if shares else reads.take(fsv.feature_set.source)
    began = time.perf_counter()
    # The watermark goes no further than now: a range ending in the future (2099) must not stop incremental
    # runs from reading the events that arrive until then.
    now = utcnow()
    try:
        with runs.keep_lease(store.engine, name, run_id, lock_ttl) as lost, _active(run_id, fs_id, lost):
            clear_dead_staging(store, fs_id)
            figures = _compute_and_write(store, fsv, start, end, lost, run_id, skip_empty, Progress(fsv, progress),
                                         source_read, shared)
        figures.update(source_read=source_read, late_dropped=late_dropped)
        profile = figures.pop("profile", None)
        with store.transaction() as s:
            run = runs.finish_run(s, run_id, status="succeeded", **figures)
            if profile is not None:
                from fstore.registry.quality import save_profile

                save_profile(s, fsv.name, profile, run_id=run_id)
            runs.advance_watermark(s, fs_id, min(end, now))
        log.info("run %s of %s [%s, %s) succeeded: %s rows written in %.2fs", run_id, fsv.name, runs.iso(start),
                 runs.iso(end), figures.get("rows_written"), time.perf_counter() - began)
        _audit_run(store, run_id, fsv.name, "ok")
        return run
    except BaseException as exc:
        error = _explain_failure(store, fsv, exc) or _as_fstore_error(exc, fsv.name, start, end)
        partial = {k: v for k, v in (getattr(exc, "fstore_figures", {}) or {}).items() if k != "profile"}
        status = "failed" if isinstance(exc, Exception) else "cancelled"
        if status == "cancelled":
            stop_server_work(store, run_id)
        try:
            with store.transaction() as s:
                runs.finish_run(s, run_id, status=status, error=error.message[:_MAX_ERROR], **partial)
        except Exception:  # noqa: BLE001 - the registry may be what failed; the original error matters more
            log.exception("could not record the failure of run %s", run_id)
        # The caller reports the error itself (the CLI's one line): logged for log files, marked as reported.
        log.warning("run %s of %s %s: %s", run_id, fsv.name, status, error.message, extra={"reported": True})
        _audit_run(store, run_id, fsv.name, status, error.message)
        error.fstore_run_id = run_id  # type: ignore[attr-defined]  # materialize_many returns the failed run
        if error is exc or not isinstance(exc, Exception):
            raise
        raise error from exc
    finally:
        try:
            runs.release_lock(store.engine, name, run_id)
        except Exception:  # noqa: BLE001 - an unreleased lease expires on its own
            log.exception("could not release lock %s of run %s", name, run_id)


def _compute_and_write(store: "StoreContext", fsv: "FeatureSetVersion", start: datetime, end: datetime,
                       lost: threading.Event, run_id: str, skip_empty: bool, progress: "Progress",
                       source_read: dict | None = None, shared: "SharedScan | None" = None) -> dict[str, Any]:
    """Compute, validate, then write offline and online on the configured engine; returns the run's figures,
    with what the run cost (``fstore.compute.cost``). ``shared``: the source read once for several sets."""
    from fstore.compute.cost import RunMeter

    if store.settings.compute_engine == "duckdb":
        meter = RunMeter("duckdb", run_id).start()
        rows = shared.duckdb_rows(fsv.feature_set.source) if shared is not None else None
        figures = _compute_and_write_duckdb(store, fsv, start, end, lost, run_id, skip_empty, progress, rows)
    else:
        spark = store.spark
        meter = RunMeter("spark", run_id, spark).start()
        with _run_jobs(spark, run_id, f"fstore materialize {fsv.name} run {run_id}"):
            rows = shared.spark_rows(spark, fsv.feature_set.source) if shared is not None else None
            figures = _compute_and_write_spark(store, spark, fsv, start, end, lost, run_id, skip_empty, progress, rows)
    figures["cost"] = meter.finish(store.settings, fsv.name, source_read=source_read,
                                   offline_version=figures.get("offline_version"))
    return figures


def _compute_and_write_spark(store: "StoreContext", spark, fsv: "FeatureSetVersion", start: datetime, end: datetime,
                             lost: threading.Event, run_id: str, skip_empty: bool, progress: "Progress",
                             source_df=None) -> dict[str, Any]:
    """The Spark side of ``_compute_and_write`` (``source_df``: the source already read, shared by several sets)."""
    from pyspark import StorageLevel

    from fstore.engine.spark import compute
    from fstore.storage.offline import write_range
    from fstore.storage.online import load_dataframe
    from fstore.compute.validation import validate

    stages: dict[str, float] = {}
    t = time.perf_counter()
    progress.start("read")
    # compute() resolves the source (listing files, reading the schema) and builds the plan; the rows
    # themselves are read by the first action below, so "compute" includes the scan.
    computed = compute(spark, fsv, settings=store.settings, start=start, end=end, source_df=source_df)
    stages["read"] = round(time.perf_counter() - t, 3)
    progress.done("read")

    t = time.perf_counter()
    computed = computed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # One pass computes the rows into the cache and validates them: validation's aggregation is the
        # first action on the cached frame, and its row count is the run's rows read.
        progress.start("compute")
        validated = validate(computed, fsv, profile=store.settings.profiles)
        stages["compute_validate"] = round(time.perf_counter() - t, 3)
        progress.done("compute", validated.rows_checked)
        progress.done("validate", validated.rows_checked - int(validated.rows_rejected or 0))
        return _write_outputs(store, fsv, validated, stages, lost, run_id, progress,
                              offline=lambda rows: write_range(spark, store.settings, fsv, rows, start, end),
                              online=lambda rows, info: _with_windows(
                                  store, fsv, start, end, load_dataframe(rows, fsv, store.settings, info=info), source_df),
                              skip_empty=skip_empty)
    finally:
        computed.unpersist()


def _compute_and_write_duckdb(store: "StoreContext", fsv: "FeatureSetVersion", start: datetime, end: datetime,
                              lost: threading.Event, run_id: str, skip_empty: bool, progress: "Progress",
                              rows=None) -> dict[str, Any]:
    """The same run on the embedded DuckDB engine: rows computed in this process as an Arrow table
    (``rows``: the source already read into Arrow, shared by several sets; None reads it)."""
    from fstore.engine import duckdb as engine
    from fstore.storage.offline_arrow import write_range_arrow
    from fstore.storage.online.load_arrow import PreparedLoad
    from fstore.compute.validation import validate_arrow

    stages: dict[str, float] = {}
    con = engine.connect(store.settings.max_compute_threads)
    online = None
    try:
        t = time.perf_counter()
        progress.start("read")
        computed = engine.compute(con, fsv, settings=store.settings, start=start, end=end, rows=rows)
        stages["read_compute"] = round(time.perf_counter() - t, 3)
        progress.done("read")
        progress.done("compute", computed.num_rows)
        t = time.perf_counter()
        progress.start("validate")
        validated = validate_arrow(con, computed, fsv, profile=store.settings.profiles)
        stages["validate"] = round(time.perf_counter() - t, 3)
        progress.done("validate", validated.rows_checked - int(validated.rows_rejected or 0))
        if fsv.feature_set.online_enabled:
            # DuckDB makes the online rows ready while the offline files are written; they are sent after.
            online = PreparedLoad(validated.df, fsv, store.settings)
        return _write_outputs(store, fsv, validated, stages, lost, run_id, progress,
                              offline=lambda rows: write_range_arrow(store.settings, fsv, rows, start, end),
                              online=lambda _, info: _with_windows(store, fsv, start, end, online.write(info), rows),
                              skip_empty=skip_empty)
    finally:
        if online is not None:
            online.close()
        con.close()


def _write_outputs(store: "StoreContext", fsv: "FeatureSetVersion", validated, stages: dict[str, float],
                   lost: threading.Event, run_id: str, progress: "Progress", *, offline: Callable[[Any], int | None],
                   online: Callable[[Any, "LoadInfo"], int], skip_empty: bool = False) -> dict[str, Any]:
    """Write validated rows offline, then online; the run's figures (with ``stages`` timed here too).

    The online load's marker records the run and its Delta version, and whether an earlier run loaded the
    set online (so a load into a store that lost those values is marked incomplete: ``fstore.storage.online.marker``).
    ``skip_empty``: no rows → nothing written (an incremental run that found nothing adds no Delta version).
    """
    out = validated.df
    rows_read = validated.rows_checked
    rejected = int(validated.rows_rejected or 0)
    # Validation only removes rows by its drop_row policy (and counts them in its one pass), so no
    # second count over the rows is needed.
    figures: dict[str, Any] = {"rows_read": rows_read, "rows_written": rows_read - rejected,
                               "rows_rejected": rejected,
                               "quality": _json_ready(validated.quality), "stages": stages}
    if lost.is_set():
        raise Conflict(f"run {run_id} lost the lock of {fsv.name} before writing; nothing was written")
    if skip_empty and rows_read == 0:
        progress.finish(0)
        return figures
    if validated.profile is not None:
        from fstore.ops import quality

        profile = _json_ready(validated.profile)
        quality.add_freshness(profile, utcnow())
        # Before any write: a critical anomaly under on_anomaly: fail leaves nothing behind.
        try:
            quality.check_run(store, fsv, run_id, figures["rows_written"], profile)
        except ComputeError as exc:
            exc.fstore_figures = dict(figures)  # type: ignore[attr-defined]
            raise
        figures["profile"] = profile
    if fsv.feature_set.offline_enabled:
        t = time.perf_counter()
        progress.start("offline")
        figures["offline_version"] = offline(out)
        stages["offline"] = round(time.perf_counter() - t, 3)
        progress.done("offline", figures["rows_written"])
    if lost.is_set():
        stopped = Conflict(f"run {run_id} of {fsv.name} was cancelled or lost its lock after its offline write; "
                           "the online store was not loaded")
        stopped.fstore_figures = figures  # type: ignore[attr-defined]
        raise stopped
    if fsv.feature_set.online_enabled:
        from fstore.storage.online.marker import LoadInfo

        t = time.perf_counter()
        with store.transaction() as s:
            expect = bool(runs.loaded_online(s, [fsv.name]))
        info = LoadInfo(run_id=run_id, offline_version=figures.get("offline_version"), expect_loaded=expect, kind="run")
        progress.start("online")
        try:
            figures["online_rows"] = int(online(out, info))
        except BaseException as exc:
            # The offline commit stands (it is whole); re-running the range is safe and idempotent.
            exc.fstore_figures = figures  # type: ignore[attr-defined]
            raise
        drop_again(store, fsv.name)
        stages["online"] = round(time.perf_counter() - t, 3)
        progress.done("online", figures["online_rows"])
    return figures


def drop_again(store: "StoreContext", name: str) -> None:
    """After a load: remove again the values of the set's features whose online values usage-based retention
    dropped (``fstore.ops.unused``), so a run does not bring back what the policy took out."""
    from fstore.registry.drops import dropped_features

    with store.transaction() as s:
        features = dropped_features(s, name)
    if features:
        store.online.drop_fields(name, features)


def _with_windows(store: "StoreContext", fsv: "FeatureSetVersion", start: datetime, end: datetime, written: int,
                  rows=None) -> int:
    """After the online load of ``[start, end)``: its windowed features' contributions, so online windows
    answer exactly at the request's time (``fstore.storage.online.windows``). Returns ``written``, the keys loaded.
    ``rows``: the source as read for the run when shared by several sets (None: read it again)."""
    from fstore.storage.online.load_windows import load_windows

    load_windows(store, fsv, start, end, rows=rows)
    return written


# -- progress and cancellation ------------------------------------------------------------------

STAGES = ("read", "compute", "validate", "offline", "online")


class Progress:
    """Tells ``report`` (if any) where a run is: one event when a stage starts and one when it ends.

    An event is ``{"feature_set", "stage", "state": "running"|"done", "rows", "percent"}``: ``rows`` the rows the
    stage produced (None while unknown), ``percent`` the share of the run's stages done (offline/online count
    only when the set stores there). A report that raises is logged, never fails the run."""

    def __init__(self, fsv: "FeatureSetVersion", report: Callable[[dict], None] | None) -> None:
        fs = fsv.feature_set
        self.name, self.report = fsv.name, report
        self.stages = [s for s in STAGES if (s != "offline" or fs.offline_enabled) and (s != "online" or fs.online_enabled)]
        self.finished = 0

    def _send(self, stage: str, state: str, rows: int | None) -> None:
        if self.report is None:
            return
        try:
            self.report({"feature_set": self.name, "stage": stage, "state": state, "rows": rows,
                         "percent": round(100 * self.finished / len(self.stages))})
        except Exception:  # noqa: BLE001 - showing progress must not fail a run
            log.debug("progress report failed", exc_info=True)

    def start(self, stage: str) -> None:
        self._send(stage, "running", None)

    def done(self, stage: str, rows: int | None = None) -> None:
        self.finished = min(len(self.stages), self.stages.index(stage) + 1)
        self._send(stage, "done", rows)

    def finish(self, rows: int) -> None:
        """Nothing left to do (an incremental run that found no rows)."""
        self.finished = len(self.stages)
        self._send(self.stages[-1], "done", rows)


_ACTIVE: dict[str, tuple[int, threading.Event]] = {}  # run id -> (feature set id, its lease's lost event)
_ACTIVE_LOCK = threading.Lock()


class _active:
    """Registers a run executing in this process, so ``cancel_active_runs`` can close it from another thread."""

    def __init__(self, run_id: str, fs_id: int, lost: threading.Event) -> None:
        self.entry = (run_id, (fs_id, lost))

    def __enter__(self) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE[self.entry[0]] = self.entry[1]

    def __exit__(self, *exc) -> bool:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(self.entry[0], None)
        return False


def cancel_active_runs(store: "StoreContext", reason: str) -> list[str]:
    """Record every run executing in this process (in any thread) ``cancelled`` and release its lock now.

    For a process that is stopping (SIGTERM, Ctrl-C) while runs execute in worker threads the signal cannot
    reach: their sets can run again at once instead of after the lease expires. A cancelled run writes
    nothing more (its lease's ``lost`` event is set) and keeps its status whatever its thread does next."""
    with _ACTIVE_LOCK:
        active = dict(_ACTIVE)
    cancelled = []
    for run_id, (fs_id, lost) in active.items():
        lost.set()
        stop_server_work(store, run_id)
        try:
            with store.transaction() as s:
                runs.finish_run(s, run_id, status="cancelled", error=reason)
            runs.release_lock(store.engine, lock_name(fs_id), run_id)
            cancelled.append(run_id)
        except Exception:  # noqa: BLE001 - stopping anyway: the lease expires on its own
            log.exception("could not cancel run %s", run_id)
    return cancelled


# -- helpers ------------------------------------------------------------------------------------

def _refuse_stream_source(fs: "FeatureSet") -> None:
    """A Kafka topic is read by a stream, never by a batch run."""
    if fs.source is not None and fs.source.is_stream:
        raise InvalidDefinition(f"feature set {fs.name} reads Kafka topic {fs.source.kafka.topic}: batch runs do not read "
                                f"a stream; run `fstore stream {fs.name}` (jobs/stream.py)", field="source.kafka")


def _refuse_storing_nothing(fs: "FeatureSet") -> None:
    """A run that would store nothing, or that has no batch source to read, is refused."""
    _refuse_stream_source(fs)
    if not fs.offline_enabled and not fs.online_enabled:
        raise InvalidDefinition(f"feature set {fs.name} has offline_enabled and online_enabled both false: a run "
                                "would store nothing; enable one of them", field="offline_enabled")


def _audit_run(store: "StoreContext", run_id: str, set_name: str, outcome: str, error: str | None = None) -> None:
    """Every materialization lands in the audit log, whoever started it (REST, CLI, scheduler, backfill)."""
    from fstore.ops import audit

    try:
        with store.transaction() as s:
            run = runs.get_run(s, run_id)
        audit.record(store.engine, actor=run.get("created_by") or "", action="materialize", target=set_name,
                     source_ip=socket.gethostname(), outcome=outcome,
                     detail={"run_id": run_id, "kind": run.get("kind"), "start": run.get("start"), "end": run.get("end"),
                             "rows_written": run.get("rows_written"), "error": error})
    except Exception:  # noqa: BLE001 - a run's outcome stands even if the audit log cannot be written
        log.exception("could not write the audit record of run %s", run_id)

def _load_version(store: "StoreContext", s, fs_id: int, version: int | None) -> "FeatureSetVersion":
    from fstore.registry.repo import load_feature_set_version

    return load_feature_set_version(s, fs_id, version=version, secrets=store.secrets)


def take_set_lock(store: "StoreContext", fs_id: int, set_name: str, owner: str, ttl: float = LOCK_TTL_SECONDS) -> None:
    """Take a feature set's lock for work other than a run (a vacuum): ``Conflict`` naming the holder
    while a run holds it; a dead holder's run is marked failed, as a new run would do."""
    _clean_up_after(store, _take_lock(store, fs_id, set_name, owner, ttl), fs_id)


def _take_lock(store: "StoreContext", fs_id: int, set_name: str, run_id: str, ttl: float) -> dict | None:
    """Take the set's lock for ``run_id`` or raise ``Conflict`` naming the running run and since when."""
    holder = runs.try_acquire_lock(store.engine, lock_name(fs_id), run_id, ttl)
    if holder is not None and not holder.get("taken_over"):
        raise Conflict(_conflict_message(store, set_name, holder))
    return holder


def _clean_up_after(store: "StoreContext", taken: dict | None, fs_id: int) -> None:
    """With the set's lock held, close the books of runs whose process died so they do not look alive forever.

    A lease taken over from a dead run marks that run failed; a run left ``pending`` for longer than
    a lease (its job process never started it) is marked failed too.
    """
    with store.transaction() as s:
        if taken and taken.get("taken_over"):
            reason = (f"abandoned: its process stopped renewing the lock (lease ended "
                      f"{runs.iso(taken['expires_at'])}); nothing after the last offline commit was kept")
            if runs.fail_abandoned_run(s, taken["owner"], reason):
                log.warning("run %s was abandoned; marked failed", taken["owner"])
        stale = runs.fail_stale_pending(
            s, fs_id, older_than=utcnow() - timedelta(seconds=LOCK_TTL_SECONDS),
            reason=f"never started: no job process took it up within {LOCK_TTL_SECONDS:.0f}s")
        if stale:
            log.warning("runs %s never started; marked failed", ", ".join(stale))


def clear_dead_staging(store: "StoreContext", fs_id: int) -> list[str]:
    """Delete the staged files of dead runs, of every feature set, before a run of set ``fs_id`` writes.

    A run that dies before its commit (killed, or its cleanup failed) leaves its staging folder; on a full
    disk those files would make every later run fail too. The set's own folders are all dead runs' (the
    caller holds its lock). Another set's are listed first, then deleted only when no live lease holds
    that set's lock: a run of it starting after the listing writes a folder that was not listed.
    Best effort: a failure here is logged and the run goes on. Returns the files deleted.
    """
    from sqlalchemy import select

    from fstore.storage import offline
    from fstore.registry.models import FeatureSetRow

    deleted: list[str] = []
    try:
        with store.transaction() as s:
            sets = s.execute(select(FeatureSetRow.id, FeatureSetRow.name)).all()
        for set_id, name in sets:
            if set_id == fs_id:
                deleted += offline.clear_staging(store.settings, name)
                continue
            dirs = offline.staging_dirs(store.settings, name)
            if not dirs:
                continue
            holder = runs.lock_holder(store.engine, lock_name(set_id))
            if holder is None or holder["expired"]:
                deleted += offline.clear_staging(store.settings, name, dirs)
    except Exception:  # noqa: BLE001 - the run itself may still fit; it reports its own error if not
        log.warning("could not clear the staging of dead runs", exc_info=True)
    if deleted:
        log.warning("deleted %d staged file(s) of dead runs before run of feature set %s", len(deleted), fs_id)
    return deleted


def _conflict_message(store: "StoreContext", set_name: str, holder: dict) -> str:
    since = holder["acquired_at"]
    try:
        with store.transaction() as s:
            since = runs.to_utc(runs.get_run(s, holder["owner"])["started_at"] or runs.iso(since))
    except FStoreError:
        pass  # the holder is not a run (a backfill or a tool): name it as it is
    return (f"feature set {set_name} is already being materialized by run {holder['owner']} "
            f"(running since {runs.iso(since)}); wait for it to finish")


def _refuse_fresh_pending(s, fs_id: int, set_name: str) -> None:
    """A run recorded moments ago whose process has not taken the lock yet also counts as running."""
    from sqlalchemy import select

    from fstore.registry.models import MaterializationRunRow as Run

    recent = utcnow() - timedelta(seconds=LOCK_TTL_SECONDS)
    row = s.scalars(select(Run).where(Run.feature_set_id == fs_id, Run.status == "pending", Run.created_at > recent)
                    .order_by(Run.created_at.desc())).first()
    if row is not None:
        raise Conflict(f"feature set {set_name} already has run {row.id} starting (pending since "
                       f"{runs.iso(row.created_at)}); wait for it to finish")


def _earliest_event(store: "StoreContext", fsv: "FeatureSetVersion") -> datetime | None:
    """The earliest event time in the set's source (where a first incremental run starts)."""
    source = fsv.feature_set.source
    if source is None:
        raise ComputeError(f"feature set {fsv.name} has no source to materialize from", field="source")
    if store.settings.compute_engine == "duckdb":
        from fstore.engine import duckdb as engine

        earliest = engine.earliest_event(source, settings=store.settings)
        return runs.to_utc(earliest) if earliest is not None else None
    from pyspark.sql import functions as F

    from fstore.engine.spark import read_source

    df = read_source(store.spark, source, settings=store.settings)
    column = source.event_timestamp_column if source.event_timestamp_column in df.columns else "event_timestamp"
    value = df.agg(F.min(F.col(column).cast("timestamp"))).first()[0]
    return runs.to_utc(value) if value is not None else None


def _skipped(name: str, start: datetime | None, end: datetime, reason: str) -> dict:
    log.info("incremental run of %s skipped: %s", name, reason)
    return {"id": None, "feature_set": name, "kind": "incremental", "status": "skipped", "reason": reason,
            "start": runs.iso(start), "end": runs.iso(end)}


def _as_fstore_error(exc: BaseException, name: str, start: datetime, end: datetime) -> FStoreError:
    """The error a failed run reports: ours as raised, Spark's and others' wrapped as ``ComputeError``."""
    if isinstance(exc, FStoreError):
        return exc
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return ComputeError(f"materialization of {name} [{runs.iso(start)}, {runs.iso(end)}) was cancelled: its "
                            "process was interrupted (Ctrl-C or SIGTERM); nothing after its last offline commit was kept")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Spark's first line names only the call ("An error occurred while calling o184.parquet"): say a full disk.
    full_disk = "no space left on device: " if "No space left on device" in str(exc) else ""
    return ComputeError(f"materialization of {name} [{runs.iso(start)}, {runs.iso(end)}) failed: {full_disk}"
                        f"{type(exc).__name__}: {text}"[:_MAX_ERROR])


def _explain_failure(store: "StoreContext", fsv: "FeatureSetVersion", exc: BaseException) -> InvalidDefinition | None:
    """A run that failed computing gets the apply-time check's message naming the feature at fault (a set
    registered with ``allow_missing_sources`` had its SQL checked by no one until its source existed)."""
    if not isinstance(exc, Exception) or isinstance(exc, (Conflict, InvalidDefinition)):
        return None
    from fstore.engine.check import validate_version

    try:
        validate_version(store, fsv, allow_missing_source=True)
    except InvalidDefinition as named:
        return named
    except Exception:  # noqa: BLE001 - the check is only to name the fault; the run's own error stands
        log.debug("could not check %s after its run failed", fsv.name, exc_info=True)
    return None


def _json_ready(value: Any) -> Any:
    """The quality report with numpy/Decimal/datetime values turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, datetime):
        return runs.iso(runs.to_utc(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def run_tag(run_id: str) -> str:
    """The Spark Connect operation tag of a run's work on the server."""
    return f"fstore-run-{run_id}"


def over_connect(spark) -> bool:
    return spark is not None and type(spark).__module__.startswith("pyspark.sql.connect")


@contextmanager
def _run_jobs(spark, run_id: str, text: str):
    """Name the run's Spark jobs: in-process, their description in the Spark UI; over Spark Connect, a tag on
    every operation this thread sends meanwhile, by which ``stop_server_work`` interrupts them."""
    if over_connect(spark):
        spark.addTag(run_tag(run_id))  # thread-local: runs in other threads keep theirs
        try:
            yield
        finally:
            spark.removeTag(run_tag(run_id))
        return
    from fstore.compute.cost import run_group

    try:
        # The job group names the run in the Spark UI and lets its cost be read from the status store.
        spark.sparkContext.setJobGroup(run_group(run_id), text)
    except Exception:  # noqa: BLE001 - a name and a measurement only
        pass
    try:
        yield
    finally:
        try:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        except Exception:  # noqa: BLE001
            pass


def stop_server_work(store: "StoreContext", run_id: str) -> None:
    """Over Spark Connect a run's computation and writes execute in the server, not in this process: when the
    run is cancelled, interrupt them there, so its write cannot commit after its lock is released. In
    process there is nothing to do (the process's own driver stops with it)."""
    spark = store._spark
    if not over_connect(spark):
        return
    try:
        spark.interruptTag(run_tag(run_id))
    except Exception:  # noqa: BLE001 - the server abandons a detached operation by itself (fstore.engine.connect)
        log.warning("could not interrupt the Spark Connect operations of run %s", run_id, exc_info=True)


# -- the detached job process -------------------------------------------------------------------

def settings_env(settings: "Settings") -> dict[str, str]:
    """Environment variables that make ``Settings.from_env()`` in a child process equal ``settings``."""
    values = {
        "STORAGE_BACKEND": settings.storage_backend, "STORAGE_PATH": settings.storage_path,
        "STORAGE_FORMAT": settings.storage_format, "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url, "S3_ENDPOINT": settings.s3_endpoint, "S3_BUCKET": settings.s3_bucket,
        "S3_ACCESS_KEY": settings.s3_access_key, "S3_SECRET_KEY": settings.s3_secret_key,
        "SPARK_MASTER": settings.spark_master, "SPARK_REMOTE": settings.spark_remote,
        "SPARK_CONNECT": settings.spark_connect, "SPARK_CONNECT_DIR": settings.spark_connect_dir,
        "DELTA_WRITER": settings.delta_writer, "SPARK_JARS_DIR": settings.spark_jars_dir,
        "MAX_COMPUTE_THREADS": str(settings.max_compute_threads), "COMPUTE_ENGINE": settings.compute_engine,
        "REDIS_TIMEOUT": str(settings.redis_timeout),
        "REDIS_POOL_SIZE": str(settings.redis_pool_size), "DB_POOL_SIZE": str(settings.db_pool_size),
        "PROFILES": "on" if settings.profiles else "off", "ALERT_WEBHOOK_URL": settings.alert_webhook_url,
    }
    if settings.source_roots is not None:
        values["SOURCE_ROOTS"] = ",".join(settings.source_roots)
    out = {k: v for k, v in values.items() if v not in (None, "")}
    # Always passed, even empty (no python features): an unset variable would mean the default.
    out["PYTHON_FEATURE_MODULES"] = ",".join(settings.python_feature_modules)
    return out


def job_log_path(settings: "Settings", run_id: str) -> Path:
    """Where a detached run's output goes: beside the data when local, else the temp folder."""
    if settings.storage_backend == "local":
        folder = Path(settings.storage_path) / "logs" / "runs"
    else:
        import tempfile

        folder = Path(tempfile.gettempdir()) / "fstore-runs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.log"


def spawn_run_process(settings: "Settings", run_id: str, *, extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``python jobs/materialize.py --run-id ID`` in its own session, not waited on by the caller."""
    env = {**os.environ, **settings_env(settings)}
    root = str(JOB_SCRIPT.parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(job_log_path(settings, run_id), "ab") as out:
        proc = subprocess.Popen([sys.executable, str(JOB_SCRIPT), "--run-id", run_id, *extra_args], env=env,
                                cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # Reap it when it ends so a long-lived server does not collect zombies.
    threading.Thread(target=proc.wait, name=f"reap-run-{run_id[:8]}", daemon=True).start()
    return proc


def materialize_many(store: "StoreContext", refs: list[str | int], start: datetime, end: datetime, *,
                     actor: str = "", progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Materialize each of ``refs`` over ``[start, end)``; returns one record per ref, in order.

    Each set keeps its own run, lock, validation, Delta commit and online load, but sets over the same
    source read it once (``fstore.compute.shared_scan``), and every run records that read's file listing.
    A set that fails does not stop the others: its record is its run, ``failed`` with the error (or, when
    refused before any run was recorded — its lock held, its definition unusable — ``{"id": None,
    "feature_set", "status": "refused", "error"}``); check each record's ``status``. Interrupted
    (Ctrl-C), the current run is recorded ``cancelled`` and the rest are not started.
    """
    from fstore.compute.shared_scan import SharedScan

    start, end = runs.check_range(start, end)
    versions = []
    for ref in refs:
        try:
            with store.transaction() as s:
                versions.append(_load_version(store, s, runs.feature_set_row(s, ref).id, None))
        except FStoreError:
            pass  # its own materialize() below reports it
    shared = SharedScan(store, versions, start, end)
    out = []
    try:
        for ref in refs:
            try:
                out.append(materialize(store, ref, start, end, actor=actor, progress=progress, shared=shared))
            except FStoreError as exc:
                out.append(_failed_record(store, ref, exc))
    finally:
        shared.close()
    return out


def _failed_record(store: "StoreContext", ref: str | int, exc: FStoreError) -> dict:
    """The record of a set of ``materialize_many`` that failed: its failed run, or ``refused`` when none was made."""
    run_id = getattr(exc, "fstore_run_id", None)
    if run_id is not None:
        with store.transaction() as s:
            return runs.get_run(s, run_id)
    return {"id": None, "feature_set": str(ref), "status": "refused", "error": exc.message}
