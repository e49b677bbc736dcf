"""The current version of a feature set for a hot path (push), checked against the registry on every call.

Loading a feature set version reads its row, every feature row and its entities, then builds the domain
objects: ~3 ms, most of a push's registry time. ``CurrentVersions`` keeps the versions it loaded, per
registry, and on each call reads only their *stamp* in one short query: the set's id, version, created and
updated times, and the id, version and times of its entities. Whatever changes what a version holds moves
its stamp — a set update, any feature created, updated or deleted (each makes a new set version), an entity
update, a set deleted and created again under the same name or id (a new ``created_at``) — so a call made
after a change commits loads the new version: never an answer older than the registry at that call.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, literal_column, or_, select, union_all

from fstore.registry.lookup import as_id
from fstore.registry.models import EntityRow, FeatureSetRow

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from fstore.core.context import StoreContext
    from fstore.definitions.model import FeatureSetVersion

MAX_SETS = 1024  # references come from requests: what is remembered stays bounded


@dataclass(frozen=True)
class _Entry:
    set_id: int
    entities: tuple[str, ...]
    stamp: tuple
    fsv: "FeatureSetVersion"


def _columns(table) -> tuple:
    return table.id, table.name, table.version, table.created_at, table.updated_at


# Built once (SQLAlchemy then reuses its compiled form): the set by id or name, and the entities by name.
_STAMP = union_all(
    select(literal_column("'set'"), *_columns(FeatureSetRow)).where(
        or_(FeatureSetRow.id == bindparam("set_id"), FeatureSetRow.name == bindparam("set_name"))),
    select(literal_column("'entity'"), *_columns(EntityRow)).where(
        EntityRow.name.in_(bindparam("entities", expanding=True))))


def stamp(s: "Session", ref: str | int, entities: tuple[str, ...]) -> tuple:
    """What identifies the current content of feature set ``ref`` (as ``runs.feature_set_row`` resolves it:
    an id first, then a name) built on ``entities``: ``(set row, entity rows)``, ``set row`` None when there is
    no such set. One statement."""
    row_id = as_id(ref)
    text = ref.strip() if isinstance(ref, str) else None
    rows = s.connection().execute(_STAMP, {"set_id": row_id, "set_name": text or None, "entities": list(entities)})
    rows = [tuple(r) for r in rows]
    found = [r[1:] for r in rows if r[0] == "set"]
    # An id wins over a name, as runs.feature_set_row resolves a numeric reference.
    chosen = next((r for r in found if r[0] == row_id), None) or next((r for r in found if r[1] == text), None)
    return chosen, tuple(sorted(r[1:] for r in rows if r[0] == "entity"))


class CurrentVersions:
    """Feature set versions loaded once per registry change (see the module docstring); thread safe."""

    def __init__(self) -> None:
        self._entries: dict[Any, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, store: "StoreContext", ref: str | int) -> tuple[int, "FeatureSetVersion"]:
        """``(set id, current version)`` of ``ref``, its source options in their stored form (secrets still
        sealed: ``fstore.registry.repo.resolve_secrets`` opens them). ``NotFound`` as ``runs.feature_set_row``."""
        from fstore.registry import runs
        from fstore.registry.repo import load_feature_set_version

        key = (type(ref), ref)
        with store.transaction() as s:
            entry = self._entries.get(key)
            if entry is not None and stamp(s, ref, entry.entities) == entry.stamp:
                return entry.set_id, entry.fsv
            set_id = runs.feature_set_row(s, ref).id
            fsv = load_feature_set_version(s, set_id)
            entities = tuple(fsv.feature_set.entities)
            now = stamp(s, ref, entities)
        if now[0] is not None and now[0][0] == set_id and now[0][2] == fsv.version:
            with self._lock:
                if len(self._entries) >= MAX_SETS:
                    self._entries.clear()
                self._entries[key] = _Entry(set_id, entities, now, fsv)
        return set_id, fsv


_BY_ENGINE: "weakref.WeakKeyDictionary[Engine, CurrentVersions]" = weakref.WeakKeyDictionary()
_BY_ENGINE_LOCK = threading.Lock()


def current_versions(store: "StoreContext") -> CurrentVersions:
    """The ``CurrentVersions`` of ``store``'s registry (one per SQLAlchemy engine, gone with it)."""
    found = _BY_ENGINE.get(store.engine)
    if found is None:
        with _BY_ENGINE_LOCK:
            found = _BY_ENGINE.setdefault(store.engine, CurrentVersions())
    return found
