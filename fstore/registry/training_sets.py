"""Saved training sets: what a retrieval used, so it can be re-created exactly.

A training set records the feature references as asked, each feature set's
version and feature versions, each set's offline Delta version at retrieval
time, the entity count, where the entity rows came from and where the entity
frame and the result were written (``<data_root>/training_sets/<name>/``).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fstore.definitions.model import check_name
from fstore.core.errors import AlreadyExists, NotFound
from fstore.registry.models import TrainingSetRow, utcnow
from fstore.registry.runs import iso
from fstore.registry.search import _check_page


def training_set_dict(row: TrainingSetRow) -> dict[str, Any]:
    """The JSON shape of a training set."""
    return {
        "id": row.id,
        "name": row.name,
        "entity_count": row.entity_count,
        "output_path": row.output_path,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        **{k: v for k, v in row.spec.items() if k not in ("entity_count", "output_path")},
    }


def _row(s: Session, ref: str | int) -> TrainingSetRow:
    row = None
    if isinstance(ref, int) and not isinstance(ref, bool):
        row = s.get(TrainingSetRow, ref)
    elif isinstance(ref, str) and ref.strip():
        text = ref.strip()
        row = s.scalars(select(TrainingSetRow).where(TrainingSetRow.name == text)).first()
        if row is None and text.isascii() and text.isdigit():
            row = s.get(TrainingSetRow, int(text))
    if row is None:
        raise NotFound(f"training set {ref} not found", field="name")
    return row


def check_new_name(s: Session, name: str) -> str:
    """A valid name not yet taken (checked before any Spark work is spent)."""
    check_name(name, field_name="save_as")
    if s.scalars(select(TrainingSetRow.id).where(TrainingSetRow.name == name)).first() is not None:
        raise AlreadyExists(f"training set {name} already exists", field="save_as")
    return name


def create_training_set(s: Session, name: str, spec: dict[str, Any], *, entity_count: int, output_path: str,
                        actor: str = "") -> dict[str, Any]:
    """Record a training set; a taken name is ``AlreadyExists``."""
    check_new_name(s, name)
    row = TrainingSetRow(name=name, spec=spec, entity_count=entity_count, output_path=output_path,
                         created_at=utcnow(), created_by=actor or "")
    s.add(row)
    try:
        s.flush()
    except IntegrityError:  # another process took the name between the check and the insert
        raise AlreadyExists(f"training set {name} already exists", field="save_as") from None
    return training_set_dict(row)


def get_training_set(s: Session, ref: str | int) -> dict[str, Any]:
    """A training set by name or id, with the feature importances recorded for it."""
    from fstore.registry.quality import importances

    row = _row(s, ref)
    return {**training_set_dict(row), "importances": importances(s, row.name)}


def list_training_sets(s: Session, *, limit: int = 50, offset: int = 0, grant=None) -> dict[str, Any]:
    """Training sets, newest first: ``{"items", "total", "limit", "offset"}``.

    With ``grant`` (an ``auth.Grant``), only those whose every feature it allows, counted before paging (the
    features live in each row's JSON, so the filter runs here, over the few rows a registry holds).
    """
    _check_page(limit, offset)
    query = select(TrainingSetRow).order_by(TrainingSetRow.created_at.desc(), TrainingSetRow.id.desc())
    if grant is not None and not grant.unrestricted:
        items = [d for d in map(training_set_dict, s.scalars(query)) if readable_with(d, grant)]
        return {"items": items[offset:offset + limit], "total": len(items), "limit": limit, "offset": offset}
    rows = s.scalars(query.limit(limit).offset(offset)).all()
    total = s.scalar(select(func.count()).select_from(TrainingSetRow))
    return {"items": [training_set_dict(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def readable_with(saved: dict[str, Any], grant) -> bool:
    """True when ``grant`` allows every feature the training set ``saved`` read."""
    return all(grant.allows_feature(g.get("feature_set"), f)
               for g in saved.get("groups") or () for f in g.get("features") or ())


def pinned_versions(s: Session, feature_set: str) -> list[int]:
    """The offline versions of ``feature_set`` that saved training sets read (a vacuum keeps their files)."""
    return sorted(set(pinning(s, feature_set).values()))


def pinning(s: Session, feature_set: str) -> dict[str, int]:
    """Saved training set name -> the offline version of ``feature_set`` it pinned (those that read it)."""
    pins = {}
    for name, spec in s.execute(select(TrainingSetRow.name, TrainingSetRow.spec)):
        version = (spec or {}).get("offline_versions", {}).get(feature_set)
        if isinstance(version, int) and not isinstance(version, bool):
            pins[name] = version
    return pins


def finish_training_set(s: Session, name: str, spec: dict[str, Any], *, entity_count: int,
                        output_path: str) -> dict[str, Any]:
    """Fill in a reserved training set once its files are written."""
    row = _row(s, name)
    row.spec, row.entity_count, row.output_path = spec, entity_count, output_path
    s.flush()
    return training_set_dict(row)


def drop_reservation(s: Session, name: str) -> None:
    """Forget a training set whose files could not be written (only a reservation, never a finished one)."""
    row = s.scalars(select(TrainingSetRow).where(TrainingSetRow.name == name)).first()
    if row is not None and row.spec.get("status") == "writing":
        s.delete(row)
