"""Discovery: listing with filters and pagination, and text search across kinds.

Substring matches are case-insensitive over name, description, owner and tags;
results are in a stable order (by id) with ``{"items", "total", "limit", "offset"}``.
The same SQL runs on SQLite and PostgreSQL.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from sqlalchemy import and_, false, func, or_, select
from sqlalchemy.orm import Session

from fstore.definitions.model import normalize_data_type
from fstore.core.errors import InvalidDefinition
from fstore.registry.lookup import entity_dict, feature_dict, feature_set_dict, find_entity, find_set
from fstore.registry.models import EntityRow, FeatureRow, FeatureSetRow, FeatureVersionRow


if TYPE_CHECKING:
    from fstore.definitions.grants import Grant

KINDS = ("entity", "feature_set", "feature")
MAX_LIMIT = 500


def _check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidDefinition(f"limit must be an integer from 1 to {MAX_LIMIT}", field="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidDefinition("offset must be an integer >= 0", field="offset")


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def check_text(text: str, field: str) -> None:
    """Refuse a control character in search text: SQLite ends a LIKE pattern at NUL (``%\0%`` matched every row)
    and PostgreSQL refuses NUL in a string; no name, description or tag holds one."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidDefinition(f"{field} holds the control character U+{ord(bad):04X}; search text is printable",
                                field=field)


def _text_match(text: str | None, *columns):
    if not text:
        return None
    check_text(text, "q")
    pattern = _like(text)
    return or_(*(func.lower(c).like(pattern, escape="\\") for c in columns))


def _tag_match(tag: str | None, column):
    """``key`` matches any value of that tag; ``key=value`` matches exactly."""
    if not tag:
        return None
    tag = tag.lower()
    token = f"% {tag} %" if "=" in tag else f"% {tag}=%"
    return column.like(token.replace("_", "\\_"), escape="\\")


def _visible_sets(grant: "Grant | None"):
    """The condition on ``FeatureSetRow`` a grant allows (a set granted whole, or one of its features); None: all."""
    if grant is None or grant.unrestricted:
        return None
    names = set(grant.feature_sets) | {f.split(":", 1)[0] for f in grant.features if ":" in f}
    return FeatureSetRow.name.in_(sorted(names)) if names else false()


def _visible_features(grant: "Grant | None"):
    """The condition on ``FeatureRow`` a grant allows (its set granted whole, ``set:name``, or a bare ``name``)."""
    if grant is None or grant.unrestricted:
        return None
    conditions = []
    if grant.feature_sets:
        conditions.append(FeatureRow.feature_set_id.in_(
            select(FeatureSetRow.id).where(FeatureSetRow.name.in_(sorted(grant.feature_sets)))))
    bare = sorted(f for f in grant.features if ":" not in f)
    if bare:
        conditions.append(FeatureRow.name.in_(bare))
    for entry in sorted(f for f in grant.features if ":" in f):
        set_name, name = entry.split(":", 1)
        conditions.append(and_(FeatureRow.name == name, FeatureRow.feature_set_id.in_(
            select(FeatureSetRow.id).where(FeatureSetRow.name == set_name))))
    return or_(*conditions) if conditions else false()


def _where(stmt, condition):
    return stmt if condition is None else stmt.where(condition)


def _page(s: Session, stmt, order_col, limit: int, offset: int) -> tuple[list, int]:
    total = s.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = list(s.scalars(stmt.order_by(order_col).limit(limit).offset(offset)))
    return rows, int(total or 0)


def list_entities(s: Session, *, query: str | None = None, limit: int = 50, offset: int = 0) -> dict:
    """Entities whose name or description contains ``query`` (case-insensitive), by id."""
    _check_page(limit, offset)
    stmt = select(EntityRow)
    cond = _text_match(query, EntityRow.name, EntityRow.description)
    if cond is not None:
        stmt = stmt.where(cond)
    rows, total = _page(s, stmt, EntityRow.id, limit, offset)
    return {"items": [entity_dict(r) for r in rows], "total": total, "limit": limit, "offset": offset}


def list_feature_sets(s: Session, *, query: str | None = None, entity: str | None = None, owner: str | None = None,
                      tag: str | None = None, limit: int = 50, offset: int = 0, grant: "Grant | None" = None) -> dict:
    """Feature sets matching the text and filters, ordered by id; with ``grant``, only those it allows
    (filtered in the query, so ``total`` and paging count only what the caller may see)."""
    _check_page(limit, offset)
    stmt = _where(_set_filter(s, select(FeatureSetRow), query=query, entity=entity, owner=owner, tag=tag),
                  _visible_sets(grant))
    rows, total = _page(s, stmt, FeatureSetRow.id, limit, offset)
    names = _feature_names_by_set(s, [r.id for r in rows])
    return {"items": [feature_set_dict(r, names.get(r.id, [])) for r in rows], "total": total, "limit": limit, "offset": offset}


def _set_filter(s: Session, stmt, *, query=None, entity=None, owner=None, tag=None):
    cond = _text_match(query, FeatureSetRow.name, FeatureSetRow.description, FeatureSetRow.owner, FeatureSetRow.tags_text)
    if cond is not None:
        stmt = stmt.where(cond)
    if owner:
        stmt = stmt.where(func.lower(FeatureSetRow.owner) == owner.lower())
    if tag:
        stmt = stmt.where(_tag_match(tag, FeatureSetRow.tags_text))
    if entity:
        name = find_entity(s, entity).name
        ids = [r.id for r in s.scalars(select(FeatureSetRow)) if name in r.spec.get("entities", [])]
        stmt = stmt.where(FeatureSetRow.id.in_(ids or [-1]))
    return stmt


def _feature_names_by_set(s: Session, set_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if set_ids:
        for set_id, name in s.execute(select(FeatureRow.feature_set_id, FeatureRow.name)
                                      .where(FeatureRow.feature_set_id.in_(set_ids)).order_by(FeatureRow.id)):
            out.setdefault(set_id, []).append(name)
    return out


def list_features(s: Session, *, query: str | None = None, feature_set: str | None = None, entity: str | None = None,
                  owner: str | None = None, data_type: str | None = None, tag: str | None = None,
                  limit: int = 50, offset: int = 0, grant: "Grant | None" = None) -> dict:
    """Features matching the text and filters, ordered by id; with ``grant``, only those it allows (in the query)."""
    _check_page(limit, offset)
    stmt = _where(_feature_filter(s, select(FeatureRow), query=query, feature_set=feature_set, entity=entity,
                                  owner=owner, data_type=data_type, tag=tag), _visible_features(grant))
    rows, total = _page(s, stmt, FeatureRow.id, limit, offset)
    return {"items": _feature_dicts(s, rows), "total": total, "limit": limit, "offset": offset}


def _feature_filter(s: Session, stmt, *, query=None, feature_set=None, entity=None, owner=None, data_type=None, tag=None):
    cond = _text_match(query, FeatureRow.name, FeatureRow.description, FeatureRow.owner, FeatureRow.tags_text)
    if cond is not None:
        stmt = stmt.where(cond)
    if feature_set:
        stmt = stmt.where(FeatureRow.feature_set_id == find_set(s, feature_set).id)
    if entity:
        set_ids = select(FeatureSetRow.id)
        set_ids = _set_filter(s, set_ids, entity=entity)
        stmt = stmt.where(FeatureRow.feature_set_id.in_(set_ids))
    if owner:
        stmt = stmt.where(func.lower(FeatureRow.owner) == owner.lower())
    if data_type:
        stmt = stmt.where(FeatureRow.data_type == normalize_data_type(data_type))
    if tag:
        stmt = stmt.where(_tag_match(tag, FeatureRow.tags_text))
    return stmt


def _feature_dicts(s: Session, rows: list[FeatureRow]) -> list[dict]:
    if not rows:
        return []
    set_names = dict(s.execute(select(FeatureSetRow.id, FeatureSetRow.name)
                               .where(FeatureSetRow.id.in_({r.feature_set_id for r in rows}))).all())
    lineages = {(fid, v): lin for fid, v, lin in s.execute(
        select(FeatureVersionRow.feature_id, FeatureVersionRow.version, FeatureVersionRow.lineage)
        .where(FeatureVersionRow.feature_id.in_([r.id for r in rows])))}
    return [feature_dict(r, set_names[r.feature_set_id], lineages.get((r.id, r.version), {})) for r in rows]


def search(s: Session, text: str, *, kinds: Iterable[str] = KINDS, limit: int = 50, offset: int = 0,
           grant: "Grant | None" = None) -> dict:
    """Entities, feature sets and features whose name, description, owner or tags contain ``text``.

    Items carry a ``kind``; they come entities first, then feature sets, then features, each by id.
    With ``grant``, only the sets and features it allows, filtered in the queries (``total`` included).
    """
    _check_page(limit, offset)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InvalidDefinition(f"kinds must be some of: {', '.join(KINDS)}", field="kinds")
    if not isinstance(text, str) or not text.strip():
        raise InvalidDefinition("search text must be a non-empty string (list everything with the list commands)",
                                field="q")
    check_text(text, "q")
    plans = {
        "entity": (_text_stmt(EntityRow, text, EntityRow.name, EntityRow.description), EntityRow.id,
                   lambda rows: [entity_dict(r) for r in rows]),
        "feature_set": (_where(_set_filter(s, select(FeatureSetRow), query=text), _visible_sets(grant)), FeatureSetRow.id,
                        lambda rows: [feature_set_dict(r, n) for r, n in
                                      zip(rows, [_feature_names_by_set(s, [r.id]).get(r.id, []) for r in rows])]),
        "feature": (_where(_feature_filter(s, select(FeatureRow), query=text), _visible_features(grant)), FeatureRow.id,
                    lambda rows: _feature_dicts(s, rows)),
    }
    items: list[dict] = []
    total = 0
    skip, want = offset, limit
    for kind in KINDS:
        if kind not in kinds:
            continue
        stmt, order, render = plans[kind]
        rows, count = _page(s, stmt, order, want, skip) if want > 0 else ([], _page(s, stmt, order, 1, 0)[1])
        total += count
        skip = max(0, skip - count)
        items.extend({"kind": kind, **item} for item in render(rows))
        want = limit - len(items)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _text_stmt(model, text: str, *columns):
    cond = _text_match(text, *columns)
    stmt = select(model)
    return stmt.where(cond) if cond is not None else stmt


def offline_sets_declaring(s: Session, field: str) -> list[str]:
    """Names of the feature sets whose spec sets ``field`` (e.g. ``retention_seconds``, ``cold_after_seconds``)
    and that keep an offline table, by name."""
    rows = s.execute(select(FeatureSetRow.name, FeatureSetRow.spec).order_by(FeatureSetRow.name)).all()
    return [name for name, spec in rows if isinstance(spec, dict) and spec.get(field) and spec.get("offline_enabled", True)]
