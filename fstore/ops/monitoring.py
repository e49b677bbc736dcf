"""Monitoring read models: feature statistics from run quality reports, and data freshness per set.

Both read what the system already records — the quality report each
materialization run stores, the run table, the offline table's Delta log
statistics and the online store's newest timestamp — so monitoring never
recomputes data and costs nothing on the serving path.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from croniter import croniter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.models import FeatureSetRow, MaterializationRunRow, utcnow

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
_STAT_FIELDS = ("count", "nulls", "null_rate", "violations", "min", "max", "mean", "distinct")
_ALIASES = {"null_count": "nulls", "rows": "count", "distinct_estimate": "distinct", "approx_distinct": "distinct"}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _feature_stats(quality: Any) -> dict[str, dict[str, Any]]:
    """``{feature: {count, nulls, null_rate, violations, min, max, mean, distinct}}`` from one quality report."""
    if not isinstance(quality, dict):
        return {}
    features = quality.get("features") if isinstance(quality.get("features"), dict) else quality
    out: dict[str, dict[str, Any]] = {}
    for name, stats in features.items():
        if not isinstance(stats, dict):
            continue
        row: dict[str, Any] = {}
        for key, value in stats.items():
            key = _ALIASES.get(key, key)
            if key == "violations" and isinstance(value, dict):
                value = sum(v for v in value.values() if _number(v) is not None)
            if key in _STAT_FIELDS:
                row[key] = value if key in ("min", "max") else _number(value)
        if row.get("null_rate") is None and row.get("count"):
            row["null_rate"] = round((row.get("nulls") or 0) / row["count"], 6)
        out[str(name)] = row
    return out


def _change(first: Any, last: Any) -> float | None:
    a, b = _number(first), _number(last)
    return None if a is None or b is None else round(b - a, 6)


def statistics(s: Session, *, days: int = 7, feature_set: str | None = None,
               allowed: Callable[[str, str | None], bool] | None = None) -> dict:
    """Per feature set and feature, over the succeeded runs of the last ``days``.

    For each feature: the latest run's figures, totals over the period (rows,
    nulls, violations), the period's min and max, and the change of mean and
    null rate between the first and the latest run of the period.
    ``allowed(set, feature)`` hides what a caller may not see.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
        raise InvalidDefinition("days must be an integer between 1 and 3660", field="days")
    if feature_set and (s.scalar(select(FeatureSetRow.id).where(FeatureSetRow.name == feature_set)) is None
                        or (allowed is not None and not allowed(feature_set, None))):
        raise NotFound(f"feature set {feature_set!r} not found", field="feature_set")
    since = utcnow() - timedelta(days=days)
    query = (select(MaterializationRunRow, FeatureSetRow.name)
             .join(FeatureSetRow, FeatureSetRow.id == MaterializationRunRow.feature_set_id)
             .where(MaterializationRunRow.status == SUCCEEDED, MaterializationRunRow.finished_at >= since)
             .order_by(MaterializationRunRow.finished_at, MaterializationRunRow.id))
    if feature_set:
        query = query.where(FeatureSetRow.name == feature_set)
    sets: dict[str, dict[str, Any]] = {}
    for run, name in s.execute(query):
        if allowed is not None and not allowed(name, None):
            continue
        entry = sets.setdefault(name, {"feature_set": name, "runs": 0, "rows_written": 0, "rows_rejected": 0,
                                       "first_run_at": _iso(run.finished_at), "last_run_at": None, "features": {}})
        entry["runs"] += 1
        entry["rows_written"] += run.rows_written or 0
        entry["rows_rejected"] += run.rows_rejected or 0
        entry["last_run_at"] = _iso(run.finished_at)
        for feature, stats in _feature_stats(run.quality).items():
            if allowed is not None and not allowed(name, feature):
                continue
            f = entry["features"].setdefault(feature, {"feature": feature, "runs": 0, "count": 0, "nulls": 0,
                                                        "violations": 0, "min": None, "max": None,
                                                        "first": stats, "latest": stats})
            f["runs"] += 1
            f["count"] += stats.get("count") or 0
            f["nulls"] += stats.get("nulls") or 0
            f["violations"] += stats.get("violations") or 0
            for key, pick in (("min", min), ("max", max)):
                value = stats.get(key)
                if value is not None:
                    try:
                        f[key] = value if f[key] is None else pick(f[key], value)
                    except TypeError:  # values of mixed types across versions: keep the latest
                        f[key] = value
            f["latest"] = stats
    items = []
    for entry in sets.values():
        features = []
        profile = _latest_profile(s, entry["feature_set"])
        entry["entities"] = profile.get("entities")
        for f in entry["features"].values():
            first, latest = f.pop("first"), f["latest"]
            # The share of the latest run's entities with a value of the feature (offline, from its profile).
            f["coverage"] = profile.get("features", {}).get(f["feature"], {}).get("coverage")
            f["null_rate"] = round(f["nulls"] / f["count"], 6) if f["count"] else None
            f["change"] = {"mean": _change(first.get("mean"), latest.get("mean")),
                           "null_rate": _change(first.get("null_rate"), latest.get("null_rate")),
                           "count": _change(first.get("count"), latest.get("count"))}
            features.append(f)
        entry["features"] = features
        items.append(entry)
    return {"days": days, "since": _iso(since), "items": items}


def _latest_profile(s: Session, feature_set: str) -> dict[str, Any]:
    from fstore.registry.quality import run_profiles

    latest = run_profiles(s, feature_set, limit=1)
    return latest[0]["profile"] if latest else {}


# -- freshness --------------------------------------------------------------------------------

def late_against_schedule(schedule: str | None, last_success: datetime | None, now: datetime,
                          created_at: datetime | None = None) -> bool | None:
    """True when the last scheduled tick passed (plus a grace) without a succeeded run since.

    The grace is a tenth of the schedule's interval (at least a minute), so a run that is
    simply still in progress right after its tick is not reported late. None: no schedule.
    """
    if not schedule:
        return None
    try:
        previous = croniter(schedule, now).get_prev(datetime)
        before = croniter(schedule, previous).get_prev(datetime)
    except (ValueError, KeyError):  # a stored schedule no date matches (30 February) is never late
        return None
    grace = max(timedelta(minutes=1), (previous - before) / 10)
    if now - previous < grace:
        previous = before  # the newest tick is still within its grace: judge against the one before
    if created_at is not None and created_at > previous:
        return False  # the set did not exist at the tick it would have missed
    return last_success is None or last_success < previous


def offline_newest(store: "StoreContext", name: str) -> datetime | None:
    """The newest ``event_timestamp`` in the set's Delta table, from the log's file statistics (no scan)."""
    settings = store.settings
    if settings.storage_format != "delta" or settings.storage_backend != "local":
        return None
    try:
        from deltalake import DeltaTable

        from fstore.storage.offline import table_uri
    except ImportError:
        return None
    try:
        table = DeltaTable(table_uri(settings, name))
        actions = table.get_add_actions(flatten=True)
        column = "max.event_timestamp"
        if column not in actions.schema.names:
            return None
        values = [v for v in actions.column(column).to_pylist() if v is not None]
    except Exception as exc:  # noqa: BLE001 - no table yet, or unreadable: report unknown
        log.debug("offline freshness of %s unknown: %s", name, exc)
        return None
    if not values:
        return None
    newest = max(values)
    if newest.tzinfo is not None:
        newest = newest.astimezone(timezone.utc).replace(tzinfo=None)
    return newest


def online_values_lost(store: "StoreContext", names: list[str] | None = None) -> dict[str, str]:
    """The online-enabled sets (among ``names``, or all) whose online values are lost, with why.

    A set counts when the registry records a run that loaded it online and the online store
    says the values are gone or incomplete (``fstore.storage.online.marker``): one registry query and
    one online-store round trip. Raises the store's ``Unavailable`` when it cannot be reached.
    """
    from fstore.storage.online.marker import lost_reason
    from fstore.registry.runs import loaded_online

    with store.transaction() as s:
        loaded = loaded_online(s, names)
        specs = dict(s.execute(select(FeatureSetRow.name, FeatureSetRow.spec)
                               .where(FeatureSetRow.name.in_(sorted(loaded)))).all()) if loaded else {}
    candidates = sorted(n for n in loaded if (specs.get(n) or {}).get("online_enabled", True))
    states = store.online.load_states(candidates)
    out = {}
    for name in candidates:
        why = lost_reason(name, states[name], loaded_in_registry=True)
        if why is not None:
            out[name] = why
    return out


def _stream(store: "StoreContext", name: str, now: datetime) -> dict | None:
    """A streaming set's event time → online visibility (p50/p99 over the last minute's events, from its stream
    job: ``fstore.ops.stream_freshness``), with the age of that figure; None for a set that never streamed here."""
    from fstore.ops.stream_freshness import read

    measured = read(store.settings, name)
    if measured is None:
        return None
    at = datetime.fromtimestamp(measured["at"], timezone.utc).replace(tzinfo=None)
    return {"p50_seconds": measured.get("p50_seconds"), "p99_seconds": measured.get("p99_seconds"),
            "window_events": measured.get("window_events"), "measured_at": _iso(at),
            "age_seconds": round((now - at).total_seconds(), 3), "batches": measured.get("batches"),
            "events": measured.get("events"), "last_batch_id": measured.get("last_batch_id")}


def data_freshness(store: "StoreContext", *, allowed: Callable[[str], bool] | None = None,
                   now: datetime | None = None) -> dict:
    """Per feature set: newest event time offline and online, last succeeded run, lateness, and
    ``online_values_lost`` (why its online values cannot be trusted, else null: ``online_values_lost()``), and for a
    streaming set ``stream``: event time → online visibility p50/p99 (``_stream``)."""
    now = now or utcnow()
    with store.transaction() as s:
        sets = s.execute(select(FeatureSetRow.id, FeatureSetRow.name, FeatureSetRow.spec, FeatureSetRow.watermark,
                                FeatureSetRow.created_at).order_by(FeatureSetRow.name)).all()
        last = dict(s.execute(select(MaterializationRunRow.feature_set_id, func.max(MaterializationRunRow.finished_at))
                              .where(MaterializationRunRow.status == SUCCEEDED)
                              .group_by(MaterializationRunRow.feature_set_id)).all())
        failed = dict(s.execute(select(MaterializationRunRow.feature_set_id, func.max(MaterializationRunRow.finished_at))
                                .where(MaterializationRunRow.status == "failed")
                                .group_by(MaterializationRunRow.feature_set_id)).all())
    items = []
    online_error = None
    try:
        lost = online_values_lost(store, [row[1] for row in sets if allowed is None or allowed(row[1])])
    except Exception as exc:  # noqa: BLE001 - reported once, as for the newest online event below
        lost = {}
        online_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    for set_id, name, spec, watermark, created_at in sets:
        if allowed is not None and not allowed(name):
            continue
        schedule = (spec or {}).get("materialization_schedule")
        offline = offline_newest(store, name)
        online = None
        if online_error is None:
            try:
                online = store.online.newest_timestamp(name)
            except Exception as exc:  # noqa: BLE001 - one unreachable store must not hide the rest
                online_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        last_success = last.get(set_id)
        items.append({
            "feature_set": name,
            "schedule": schedule,
            "offline_newest_event": _iso(offline),
            "online_newest_event": _iso(online),
            "offline_lag_seconds": None if offline is None else round((now - offline).total_seconds(), 3),
            "watermark": _iso(watermark),
            "last_success_at": _iso(last_success),
            "last_failure_at": _iso(failed.get(set_id)),
            "late": late_against_schedule(schedule, last_success, now, created_at),
            "online_values_lost": lost.get(name),
            "stream": _stream(store, name, now),
        })
    body: dict[str, Any] = {"at": _iso(now), "items": items}
    if online_error is not None:
        body["online_store_error"] = online_error
    return body
