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
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fstore.definitions import FeatureSet
from fstore.errors import ComputeError, Conflict, FStoreError, InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import utcnow

if TYPE_CHECKING:
    from fstore.definitions import FeatureSetVersion
    from fstore.settings import Settings
    from fstore.store import FeatureStore

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 120.0
JOB_SCRIPT = Path(__file__).resolve().parents[1] / "jobs" / "materialize.py"
_MAX_ERROR = 4000


def lock_name(feature_set_id: int) -> str:
    """The registry lock that one feature set's runs share."""
    return f"materialize:{feature_set_id}"


# -- public entry points ------------------------------------------------------------------------

def materialize(store: "FeatureStore", ref: str | int, start: datetime, end: datetime, *, actor: str = "",
                kind: str = "full", backfill_id: str | None = None, lock_ttl: float = LOCK_TTL_SECONDS) -> dict:
    """Compute ``[start, end)`` of the current version of ``ref``; returns the finished run.

    Raises ``Conflict`` (nothing recorded) when another run of the set holds the
    lock, and the run's ``FStoreError`` (recorded on the run as ``failed``) when
    it fails.
    """
    start, end = runs.check_range(start, end)
    with store.transaction() as s:
        fs_id = runs.feature_set_row(s, ref).id
        fsv = _load_version(s, fs_id, None)
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
    return _run_locked(store, run_id, fs_id, fsv, start, end, lock_ttl)


def execute_run(store: "FeatureStore", run_id: str, *, lock_ttl: float = LOCK_TTL_SECONDS) -> dict:
    """Execute a recorded ``pending`` run (what ``jobs/materialize.py --run-id`` does)."""
    with store.transaction() as s:
        run = runs.get_run(s, run_id)
        if run["status"] != "pending":
            raise Conflict(f"run {run_id} is {run['status']}, not pending; start a new run instead", field="run_id")
        fs_id = run["feature_set_id"]
        fsv = _load_version(s, fs_id, run["feature_set_version"])
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


def start_materialization(store: "FeatureStore", ref: str | int, start: datetime, end: datetime, *,
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


def materialize_incremental(store: "FeatureStore", ref: str | int, *, end: datetime | None = None, actor: str = "",
                            kind: str = "incremental") -> dict:
    """Compute from the set's watermark (or its source's earliest event) to ``end`` (default now).

    The engine reads the look-back the longest window needs before the
    watermark, so windows straddling it come out as a full recomputation would
    give them. When there is nothing to compute (the watermark is at or past
    ``end``, or the source is empty) no run is recorded and a dict with
    ``status: "skipped"`` and the reason is returned.
    """
    end = runs.to_utc(end, field_name="end") if end is not None else utcnow().replace(microsecond=0)
    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name, watermark = row.id, row.name, row.watermark
        fsv = _load_version(s, fs_id, None) if watermark is None else None
    start = watermark if watermark is not None else _earliest_event(store, fsv)
    if start is None:
        return _skipped(name, None, end, f"the source of {name} has no rows yet")
    if start >= end:
        return _skipped(name, start, end, f"{name} is materialized up to {runs.iso(start)}, not before {runs.iso(end)}")
    return materialize(store, fs_id, start, end, actor=actor, kind=kind)


# -- the run itself -----------------------------------------------------------------------------

def _run_locked(store: "FeatureStore", run_id: str, fs_id: int, fsv: "FeatureSetVersion", start: datetime,
                end: datetime, lock_ttl: float) -> dict:
    """Do the work of a run whose lock is held; always records the outcome and releases the lock."""
    name = lock_name(fs_id)
    began = time.perf_counter()
    # The watermark goes no further than now: a range ending in the future (2099) must not stop incremental
    # runs from reading the events that arrive until then.
    now = utcnow()
    try:
        with runs.keep_lease(store.engine, name, run_id, lock_ttl) as lost:
            figures = _compute_and_write(store, fsv, start, end, lost, run_id)
        with store.transaction() as s:
            run = runs.finish_run(s, run_id, status="succeeded", **figures)
            runs.advance_watermark(s, fs_id, min(end, now))
        log.info("run %s of %s [%s, %s) succeeded: %s rows written in %.2fs", run_id, fsv.name, runs.iso(start),
                 runs.iso(end), figures.get("rows_written"), time.perf_counter() - began)
        _audit_run(store, run_id, fsv.name, "ok")
        return run
    except BaseException as exc:
        error = _as_fstore_error(exc, fsv.name, start, end)
        partial = getattr(exc, "fstore_figures", {}) or {}
        try:
            with store.transaction() as s:
                runs.finish_run(s, run_id, status="failed", error=error.message[:_MAX_ERROR], **partial)
        except Exception:  # noqa: BLE001 - the registry may be what failed; the original error matters more
            log.exception("could not record the failure of run %s", run_id)
        log.warning("run %s of %s failed: %s", run_id, fsv.name, error.message)
        _audit_run(store, run_id, fsv.name, "failed", error.message)
        if error is exc or not isinstance(exc, Exception):
            raise
        raise error from exc
    finally:
        try:
            runs.release_lock(store.engine, name, run_id)
        except Exception:  # noqa: BLE001 - an unreleased lease expires on its own
            log.exception("could not release lock %s of run %s", name, run_id)


def _compute_and_write(store: "FeatureStore", fsv: "FeatureSetVersion", start: datetime, end: datetime,
                       lost: threading.Event, run_id: str) -> dict[str, Any]:
    """Compute, validate, then write offline and online on the configured engine; returns the run's figures."""
    if store.settings.compute_engine == "duckdb":
        return _compute_and_write_duckdb(store, fsv, start, end, lost, run_id)
    from pyspark import StorageLevel

    from fstore.engine.spark import compute
    from fstore.offline import write_range
    from fstore.online import load_dataframe
    from fstore.validation import validate

    spark = store.spark
    stages: dict[str, float] = {}
    _describe_jobs(spark, f"fstore materialize {fsv.name} run {run_id}")

    t = time.perf_counter()
    # compute() resolves the source (listing files, reading the schema) and builds the plan; the rows
    # themselves are read by the first action below, so "compute" includes the scan.
    computed = compute(spark, fsv, start=start, end=end)
    stages["read"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    computed = computed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # One pass computes the rows into the cache and validates them: validation's aggregation is the
        # first action on the cached frame, and its row count is the run's rows read.
        validated = validate(computed, fsv)
        stages["compute_validate"] = round(time.perf_counter() - t, 3)
        return _write_outputs(store, fsv, validated, stages, lost, run_id,
                              offline=lambda rows: write_range(spark, store.settings, fsv, rows, start, end),
                              online=lambda rows: load_dataframe(rows, fsv, store.settings))
    finally:
        computed.unpersist()


def _compute_and_write_duckdb(store: "FeatureStore", fsv: "FeatureSetVersion", start: datetime, end: datetime,
                              lost: threading.Event, run_id: str) -> dict[str, Any]:
    """The same run on the embedded DuckDB engine: rows computed in this process as an Arrow table."""
    from fstore.engine import duckdb as engine
    from fstore.offline_arrow import write_range_arrow
    from fstore.online.load_arrow import PreparedLoad
    from fstore.validation import validate_arrow

    stages: dict[str, float] = {}
    con = engine.connect(store.settings.max_compute_threads)
    online = None
    try:
        t = time.perf_counter()
        computed = engine.compute(con, fsv, start=start, end=end)
        stages["read_compute"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        validated = validate_arrow(con, computed, fsv)
        stages["validate"] = round(time.perf_counter() - t, 3)
        if fsv.feature_set.online_enabled:
            # DuckDB makes the online rows ready while the offline files are written; they are sent after.
            online = PreparedLoad(validated.df, fsv, store.settings)
        return _write_outputs(store, fsv, validated, stages, lost, run_id,
                              offline=lambda rows: write_range_arrow(store.settings, fsv, rows, start, end),
                              online=lambda rows: online.write())
    finally:
        if online is not None:
            online.close()
        con.close()


def _write_outputs(store: "FeatureStore", fsv: "FeatureSetVersion", validated, stages: dict[str, float],
                   lost: threading.Event, run_id: str, *, offline: Callable[[Any], int | None],
                   online: Callable[[Any], int]) -> dict[str, Any]:
    """Write validated rows offline, then online; the run's figures (with ``stages`` timed here too)."""
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
    if fsv.feature_set.offline_enabled:
        t = time.perf_counter()
        figures["offline_version"] = offline(out)
        stages["offline"] = round(time.perf_counter() - t, 3)
    if fsv.feature_set.online_enabled:
        t = time.perf_counter()
        try:
            figures["online_rows"] = int(online(out))
        except BaseException as exc:
            # The offline commit stands (it is whole); re-running the range is safe and idempotent.
            exc.fstore_figures = figures  # type: ignore[attr-defined]
            raise
        stages["online"] = round(time.perf_counter() - t, 3)
    return figures


# -- helpers ------------------------------------------------------------------------------------

def _refuse_storing_nothing(fs: "FeatureSet") -> None:
    if not fs.offline_enabled and not fs.online_enabled:
        raise InvalidDefinition(f"feature set {fs.name} has offline_enabled and online_enabled both false: a run "
                                "would store nothing; enable one of them", field="offline_enabled")


def _audit_run(store: "FeatureStore", run_id: str, set_name: str, outcome: str, error: str | None = None) -> None:
    """Every materialization lands in the audit log, whoever started it (REST, CLI, scheduler, backfill)."""
    from fstore import audit

    try:
        with store.transaction() as s:
            run = runs.get_run(s, run_id)
        audit.record(store.engine, actor=run.get("created_by") or "", action="materialize", target=set_name,
                     source_ip=socket.gethostname(), outcome=outcome,
                     detail={"run_id": run_id, "kind": run.get("kind"), "start": run.get("start"), "end": run.get("end"),
                             "rows_written": run.get("rows_written"), "error": error})
    except Exception:  # noqa: BLE001 - a run's outcome stands even if the audit log cannot be written
        log.exception("could not write the audit record of run %s", run_id)

def _load_version(s, fs_id: int, version: int | None) -> "FeatureSetVersion":
    from fstore.registry.repo import load_feature_set_version

    return load_feature_set_version(s, fs_id, version=version)


def take_set_lock(store: "FeatureStore", fs_id: int, set_name: str, owner: str, ttl: float = LOCK_TTL_SECONDS) -> None:
    """Take a feature set's lock for work other than a run (a vacuum): ``Conflict`` naming the holder
    while a run holds it; a dead holder's run is marked failed, as a new run would do."""
    _clean_up_after(store, _take_lock(store, fs_id, set_name, owner, ttl), fs_id)


def _take_lock(store: "FeatureStore", fs_id: int, set_name: str, run_id: str, ttl: float) -> dict | None:
    """Take the set's lock for ``run_id`` or raise ``Conflict`` naming the running run and since when."""
    holder = runs.try_acquire_lock(store.engine, lock_name(fs_id), run_id, ttl)
    if holder is not None and not holder.get("taken_over"):
        raise Conflict(_conflict_message(store, set_name, holder))
    return holder


def _clean_up_after(store: "FeatureStore", taken: dict | None, fs_id: int) -> None:
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


def _conflict_message(store: "FeatureStore", set_name: str, holder: dict) -> str:
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


def _earliest_event(store: "FeatureStore", fsv: "FeatureSetVersion") -> datetime | None:
    """The earliest event time in the set's source (where a first incremental run starts)."""
    source = fsv.feature_set.source
    if source is None:
        raise ComputeError(f"feature set {fsv.name} has no source to materialize from", field="source")
    if store.settings.compute_engine == "duckdb":
        from fstore.engine import duckdb as engine

        earliest = engine.earliest_event(source)
        return runs.to_utc(earliest) if earliest is not None else None
    from pyspark.sql import functions as F

    from fstore.engine.spark import read_source

    df = read_source(store.spark, source)
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
    if isinstance(exc, KeyboardInterrupt):
        return ComputeError(f"materialization of {name} [{runs.iso(start)}, {runs.iso(end)}) was interrupted")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ComputeError(f"materialization of {name} [{runs.iso(start)}, {runs.iso(end)}) failed: "
                        f"{type(exc).__name__}: {text}"[:_MAX_ERROR])


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


def _describe_jobs(spark, text: str) -> None:
    """Name the Spark jobs of this run in the Spark UI (not available on Spark Connect)."""
    try:
        spark.sparkContext.setJobDescription(text)
    except Exception:  # noqa: BLE001 - purely cosmetic
        pass


# -- the detached job process -------------------------------------------------------------------

def settings_env(settings: "Settings") -> dict[str, str]:
    """Environment variables that make ``Settings.from_env()`` in a child process equal ``settings``."""
    values = {
        "STORAGE_BACKEND": settings.storage_backend, "STORAGE_PATH": settings.storage_path,
        "STORAGE_FORMAT": settings.storage_format, "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url, "S3_ENDPOINT": settings.s3_endpoint, "S3_BUCKET": settings.s3_bucket,
        "S3_ACCESS_KEY": settings.s3_access_key, "S3_SECRET_KEY": settings.s3_secret_key,
        "SPARK_MASTER": settings.spark_master, "SPARK_REMOTE": settings.spark_remote,
        "DELTA_WRITER": settings.delta_writer, "SPARK_JARS_DIR": settings.spark_jars_dir,
        "MAX_COMPUTE_THREADS": str(settings.max_compute_threads), "COMPUTE_ENGINE": settings.compute_engine,
        "REDIS_TIMEOUT": str(settings.redis_timeout),
        "REDIS_POOL_SIZE": str(settings.redis_pool_size), "DB_POOL_SIZE": str(settings.db_pool_size),
    }
    return {k: v for k, v in values.items() if v not in (None, "")}


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
