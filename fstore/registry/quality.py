"""Feature quality records: profiles (per run, per training set), anomaly alerts, feature importances."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fstore.registry.models import AlertRow, FeatureSetRow, ImportanceRow, MaterializationRunRow, ProfileRow
from fstore.registry.runs import iso


def save_profile(s: Session, feature_set: str, profile: dict[str, Any], *, run_id: str | None = None,
                 training_set: str | None = None) -> None:
    """Record one profile of ``feature_set``, computed by run ``run_id`` or of ``training_set``'s rows."""
    s.add(ProfileRow(feature_set=feature_set, run_id=run_id, training_set=training_set,
                     rows=int(profile.get("rows") or 0), profile=profile))


def run_profiles(s: Session, feature_set: str, *, limit: int = 50, before: datetime | None = None,
                 start: datetime | None = None, end: datetime | None = None) -> list[dict[str, Any]]:
    """Profiles of ``feature_set``'s succeeded runs, newest first, each with its run's figures:
    ``{"run_id", "finished_at", "end", "rows_written", "profile"}``; within ``[start, end)`` of finish time."""
    query = (select(ProfileRow, MaterializationRunRow)
             .join(MaterializationRunRow, MaterializationRunRow.id == ProfileRow.run_id)
             .where(ProfileRow.feature_set == feature_set, MaterializationRunRow.status == "succeeded")
             .order_by(MaterializationRunRow.finished_at.desc(), ProfileRow.id.desc()).limit(limit))
    if before is not None:
        query = query.where(MaterializationRunRow.finished_at < before)
    if start is not None:
        query = query.where(MaterializationRunRow.finished_at >= start)
    if end is not None:
        query = query.where(MaterializationRunRow.finished_at < end)
    return [{"run_id": p.run_id, "finished_at": iso(r.finished_at), "end": iso(r.end), "rows_written": r.rows_written,
             "profile": p.profile} for p, r in s.execute(query)]


def training_set_profiles(s: Session, training_set: str) -> dict[str, dict[str, Any]]:
    """``{feature set: profile}`` of a saved training set's rows."""
    rows = s.scalars(select(ProfileRow).where(ProfileRow.training_set == training_set))
    return {r.feature_set: r.profile for r in rows}


def feature_set_names(s: Session) -> list[str]:
    return list(s.scalars(select(FeatureSetRow.name).order_by(FeatureSetRow.name)))


def add_alert(s: Session, **fields: Any) -> dict[str, Any]:
    row = AlertRow(**fields)
    s.add(row)
    s.flush()
    return alert_dict(row)


def alert_dict(row: AlertRow) -> dict[str, Any]:
    return {"id": row.id, "feature_set": row.feature_set, "feature": row.feature or None, "run_id": row.run_id,
            "metric": row.metric, "value": row.value, "median": row.median, "score": row.score,
            "severity": row.severity, "created_at": iso(row.created_at)}


def list_alerts(s: Session, *, feature_set: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(AlertRow).order_by(AlertRow.created_at.desc(), AlertRow.id.desc()).limit(limit)
    if feature_set:
        query = query.where(AlertRow.feature_set == feature_set)
    return [alert_dict(r) for r in s.scalars(query)]


def save_importances(s: Session, training_set: str, label: str, method: str, scores: dict[str, float], *,
                     actor: str = "") -> None:
    """Replace the importances of ``(training_set, label, method)`` with ``scores``."""
    s.execute(delete(ImportanceRow).where(ImportanceRow.training_set == training_set, ImportanceRow.label == label,
                                          ImportanceRow.method == method))
    for feature, score in scores.items():
        s.add(ImportanceRow(training_set=training_set, label=label, method=method, feature=feature,
                            score=float(score), created_by=actor))


def importances(s: Session, training_set: str) -> list[dict[str, Any]]:
    """Every importance recorded for a training set, by label and method, highest score first."""
    rows = s.scalars(select(ImportanceRow).where(ImportanceRow.training_set == training_set)
                     .order_by(ImportanceRow.label, ImportanceRow.method, ImportanceRow.score.desc()))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault((r.label, r.method), {"label": r.label, "method": r.method, "created_at": iso(r.created_at),
                                                     "created_by": r.created_by, "scores": []})
        entry["scores"].append({"feature": r.feature, "score": r.score})
    return list(out.values())
