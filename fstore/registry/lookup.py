"""Finding registry objects by reference and rendering them as JSON-ready dicts.

A reference is an integer id, a numeric string id, or a name (an entity also by
one of its join keys; a feature also as ``set:name``). Shared by the CRUD
functions (``repo``) and discovery (``search``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry.models import EntityRow, FeatureRow, FeatureSetRow


def iso(value: datetime | None) -> str | None:
    """A naive-UTC registry timestamp as ISO 8601 with ``Z``."""
    return None if value is None else value.isoformat() + "Z"


def as_id(ref: Any) -> int | None:
    if isinstance(ref, bool):
        return None
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and ref.strip().isascii() and ref.strip().isdigit():
        return int(ref.strip())
    return None


def check_ref(ref: Any, what: str) -> None:
    if as_id(ref) is None and not isinstance(ref, str):
        raise InvalidDefinition(f"{what} reference {ref!r} must be an id or a name", field=what)


def find_entity(s: Session, ref: Any, *, by_join_key: bool = True) -> EntityRow:
    check_ref(ref, "entity")
    row_id = as_id(ref)
    row = s.get(EntityRow, row_id) if row_id is not None else s.scalar(select(EntityRow).where(EntityRow.name == ref))
    if row is None and by_join_key and row_id is None:
        matches = [r for r in s.scalars(select(EntityRow).order_by(EntityRow.id)) if ref in r.spec.get("join_keys", [])]
        if len(matches) > 1:
            raise InvalidDefinition(f"join key {ref!r} belongs to several entities: {', '.join(r.name for r in matches)}; name the entity",
                                    field="entities")
        row = matches[0] if matches else None
    if row is None:
        raise NotFound(f"entity {ref!r} not found")
    return row


def entity_dict(row: EntityRow) -> dict:
    return {"id": row.id, "name": row.name, **{k: row.spec[k] for k in ("join_keys", "value_type", "description")},
            "version": row.version, "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


def find_set(s: Session, ref: Any) -> FeatureSetRow:
    check_ref(ref, "feature_set")
    row_id = as_id(ref)
    row = s.get(FeatureSetRow, row_id) if row_id is not None else s.scalar(select(FeatureSetRow).where(FeatureSetRow.name == ref))
    if row is None:
        raise NotFound(f"feature set {ref!r} not found")
    return row


def feature_set_dict(row: FeatureSetRow, features: Iterable[str]) -> dict:
    """A feature set as every answer shows it: its source's secret options redacted (``fstore.definitions.secrets``)."""
    from fstore.definitions.secrets import redact_spec

    return {"id": row.id, "name": row.name, "version": row.version, **redact_spec(row.spec), "features": list(features),
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at), "watermark": iso(row.watermark)}


def feature_dict(row: FeatureRow, set_name: str, lineage: Mapping[str, int]) -> dict:
    return {"id": row.id, "name": row.name, "feature_set": set_name, "feature_set_id": row.feature_set_id,
            "version": row.version, **row.spec, "lineage": dict(lineage),
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at)}


def find_feature(s: Session, ref: Any, feature_set: Any = None) -> tuple[FeatureRow, FeatureSetRow]:
    """A feature by id, by name (unique across sets, or within ``feature_set``), or as ``set:name``."""
    check_ref(ref, "feature")
    row_id = as_id(ref)
    if row_id is not None:
        row = s.get(FeatureRow, row_id)
        if row is None:
            raise NotFound(f"feature {ref!r} not found")
        set_row = s.get(FeatureSetRow, row.feature_set_id)
        if feature_set is not None and find_set(s, feature_set).id != set_row.id:
            raise NotFound(f"feature {ref!r} is not in feature set {feature_set!r}")
        return row, set_row
    if ":" in ref and feature_set is None:
        feature_set, ref = ref.split(":", 1)
    if feature_set is not None:
        set_row = find_set(s, feature_set)
        row = s.scalar(select(FeatureRow).where(FeatureRow.feature_set_id == set_row.id, FeatureRow.name == ref))
        if row is None:
            raise NotFound(f"feature {ref!r} not found in feature set {set_row.name}")
        return row, set_row
    rows = list(s.scalars(select(FeatureRow).where(FeatureRow.name == ref).order_by(FeatureRow.id)))
    if not rows:
        raise NotFound(f"feature {ref!r} not found")
    if len(rows) > 1:
        sets = [s.get(FeatureSetRow, r.feature_set_id).name for r in rows]
        raise InvalidDefinition(f"feature name {ref!r} is in several feature sets ({', '.join(sets)}); name the feature set",
                                field="feature_set")
    return rows[0], s.get(FeatureSetRow, rows[0].feature_set_id)
