"""Registry CRUD: entities, feature sets, features, their immutable versions and lineage.

Every function takes the caller's SQLAlchemy ``Session`` (the caller frames the
transaction, so a failed call leaves the registry as it was) and returns
JSON-ready dicts. Bodies are parsed by ``fstore.definitions.model`` (unknown fields
refused); every change to a feature set or feature writes a new immutable
version row recording what changed, when and by whom. A feature set version
row also keeps a snapshot of its features' specs, so an old version can be
rebuilt exactly even after a feature was changed, deleted or re-created.

Finding objects by reference lives in ``lookup``, listing and search in
``search``; both are re-exported here so callers import one module.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fstore.definitions.model import (
    Entity,
    Feature,
    FeatureSet,
    FeatureSetVersion,
    check_new,
    composite_order,
)
from fstore.core.errors import AlreadyExists, Conflict, InvalidDefinition, NotFound
from fstore.definitions.secrets import SecretBox, redact_changes, redact_spec
from fstore.registry.lookup import (  # noqa: F401 - re-exported: callers use repo.<name>
    as_id,
    check_ref,
    entity_dict,
    feature_dict,
    feature_set_dict,
    find_entity,
    find_feature,
    find_set,
    iso,
)
from fstore.registry.models import (
    EntityRow,
    EntityVersionRow,
    FeatureRow,
    FeatureSetRow,
    FeatureSetVersionRow,
    FeatureVersionRow,
    utcnow,
)
from fstore.registry.search import (  # noqa: F401 - discovery lives in search; repo stays the one import point
    KINDS,
    MAX_LIMIT,
    list_entities,
    list_feature_sets,
    list_features,
    search,
)

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

_NO_KEY = SecretBox()  # registry-level callers without a store: legacy clear values read, no secret sealed


def _box(store: "StoreContext | None") -> SecretBox:
    return store.secrets if store is not None else _NO_KEY


def public_spec(spec: Mapping[str, Any]) -> dict:
    """A stored feature set spec as answers show it (source secrets redacted)."""
    return redact_spec(dict(spec))


# -- small helpers -------------------------------------------------------------------------

def _body(body: Any, what: str) -> dict:
    if not isinstance(body, Mapping):
        raise InvalidDefinition(f"{what} body must be an object")
    return dict(body)


def _tags_text(tags: Mapping[str, str]) -> str:
    """Tags flattened for LIKE search: `` key=value key2= `` (each token framed by spaces)."""
    return " " + " ".join(f"{k}={v}".lower() for k, v in sorted(tags.items())) + " " if tags else ""


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict]:
    """What changed between two specs: ``[{"field", "old", "new"}]`` per top-level field."""
    return [{"field": k, "old": old.get(k), "new": new.get(k)}
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _flush(s: Session, what: str) -> None:
    try:
        s.flush()
    except IntegrityError:
        raise AlreadyExists(f"{what} already exists") from None


# -- entities ------------------------------------------------------------------------------

def _insert_entity(s: Session, entity: Entity, actor: str) -> EntityRow:
    if s.scalar(select(EntityRow.id).where(EntityRow.name == entity.name)) is not None:
        raise AlreadyExists(f"entity {entity.name!r} already exists", field="name")
    now = utcnow()
    row = EntityRow(name=entity.name, version=1, spec=entity.to_dict(), description=entity.description,
                    created_at=now, updated_at=now, created_by=actor)
    s.add(row)
    _flush(s, f"entity {entity.name!r}")
    s.add(EntityVersionRow(entity_id=row.id, version=1, spec=row.spec, changes=[], created_at=now, created_by=actor))
    return row


def create_entity(s: Session, body: dict, *, actor: str = "") -> dict:
    """Register an entity; its name must be new."""
    return entity_dict(_insert_entity(s, Entity.from_dict(_body(body, "entity")), actor))


def update_entity(s: Session, ref: str | int, changes: dict, *, actor: str = "") -> dict:
    """Merge ``changes`` into an entity; its keys and type cannot change while feature sets use it."""
    row = find_entity(s, ref)
    changes = _body(changes, "entity changes")
    if "name" in changes and changes["name"] != row.name:
        raise InvalidDefinition("an entity cannot be renamed; create a new one", field="name")
    merged = {**row.spec, **changes}
    if "join_key" in changes:
        merged.pop("join_keys", None)
    new = Entity.from_dict(merged).to_dict()
    if new == row.spec:
        return entity_dict(row)
    if (new["join_keys"] != row.spec["join_keys"] or new["value_type"] != row.spec["value_type"]):
        users = _sets_using_entity(s, row.name)
        if users:
            raise Conflict(f"entity {row.name} is used by feature set(s) {', '.join(users)}; its join keys and value type cannot change",
                           field="join_keys")
    changed = diff(row.spec, new)
    row.spec, row.description = new, new["description"]
    row.version += 1
    row.updated_at = utcnow()
    s.add(EntityVersionRow(entity_id=row.id, version=row.version, spec=new, changes=changed,
                           created_at=row.updated_at, created_by=actor))
    s.flush()
    return entity_dict(row)


def entity_versions(s: Session, ref: str | int) -> list[dict]:
    """Every version of an entity, oldest first."""
    row = find_entity(s, ref)
    rows = s.scalars(select(EntityVersionRow).where(EntityVersionRow.entity_id == row.id).order_by(EntityVersionRow.version))
    return [{"version": v.version, "spec": dict(v.spec), "changes": list(v.changes), "created_at": iso(v.created_at),
             "created_by": v.created_by} for v in rows]


def get_entity(s: Session, ref: str | int, *, version: int | None = None) -> dict:
    """One entity by id, name or join key: its current version, or ``version`` from its history."""
    entity = entity_dict(find_entity(s, ref))
    if version is None or version == entity["version"]:
        return entity
    for past in entity_versions(s, entity["id"]):
        if past["version"] == version:
            return {**entity, **past["spec"], "version": past["version"], "updated_at": past["created_at"]}
    raise NotFound(f"entity {entity['name']} has no version {version} (latest is {entity['version']})", field="version")


def _sets_using_entity(s: Session, name: str) -> list[str]:
    return [r.name for r in s.scalars(select(FeatureSetRow).order_by(FeatureSetRow.id)) if name in r.spec.get("entities", [])]


def delete_entity(s: Session, ref: str | int, *, actor: str = "") -> None:
    """Delete an entity no feature set uses."""
    row = find_entity(s, ref)
    users = _sets_using_entity(s, row.name)
    if users:
        raise Conflict(f"entity {row.name} is used by feature set(s): {', '.join(users)}; delete or change them first")
    s.delete(row)
    s.flush()


# -- feature sets --------------------------------------------------------------------------

def _feature_rows(s: Session, set_id: int) -> list[FeatureRow]:
    return list(s.scalars(select(FeatureRow).where(FeatureRow.feature_set_id == set_id).order_by(FeatureRow.id)))


def _resolve_entities(s: Session, fs: FeatureSet) -> tuple[FeatureSet, tuple[Entity, ...], list[Entity]]:
    """Entities by name or join key; an unknown one becomes a new entity keyed by itself (string).

    Returns the set naming its entities canonically, the entities, and the new ones to register,
    which the caller inserts only after validation (so no write lock is held while Spark checks SQL).
    """
    names: list[str] = []
    entities: list[Entity] = []
    new: list[Entity] = []
    for ref in fs.entities:
        try:
            entity = Entity.from_dict(find_entity(s, ref).spec)
        except NotFound:
            entity = Entity(name=ref, join_keys=(ref,))
            new.append(entity)
        if entity.name not in names:
            names.append(entity.name)
            entities.append(entity)
    return FeatureSet.from_dict({**fs.to_dict(), "entities": names}), tuple(entities), new


def _register(s: Session, new: list[Entity], actor: str) -> None:
    for entity in new:
        _insert_entity(s, entity, actor)


def _entities_of(s: Session, fs: FeatureSet) -> tuple[Entity, ...]:
    return tuple(Entity.from_dict(find_entity(s, name, by_join_key=False).spec) for name in fs.entities)


def _validate(store: "StoreContext | None", fsv: FeatureSetVersion, pending: Mapping[str, Feature] | None = None, *,
              allow_missing_sources: bool = False) -> None:
    """The would-be version must compile (the compiler checks the SQL against the source).

    ``store`` is None only for registry-level callers with no store (no compile check possible).
    ``allow_missing_sources``: a local source path that does not exist yet is accepted unchecked.
    ``pending``: features the same change writes next (an apply of one file), checked in place of the
    stored ones (new ones added), so one apply can repair several features that only work together.
    """
    if pending:
        names = {f.name for f in fsv.features}
        features = [pending.get(f.name, f) for f in fsv.features] + [f for n, f in pending.items() if n not in names]
        fsv = dataclasses.replace(fsv, features=tuple(features),
                                  feature_versions={f.name: fsv.feature_versions.get(f.name, 1) for f in features})
    composite_order(list(fsv.features))
    if store is not None:
        from fstore.engine.check import validate_version

        validate_version(store, _for_checking(store, fsv), allow_missing_source=allow_missing_sources)


def _for_checking(store: "StoreContext", fsv: FeatureSetVersion) -> FeatureSetVersion:
    """The version with its source as the engine reads it, when this process can resolve it (a ``${NAME}`` set only
    where jobs run cannot be: the check then sees the reference as written, as it saw any unreadable source)."""
    fs = fsv.feature_set
    try:
        source = store.secrets.resolve_source(fs.source, feature_set=fs.name)
    except InvalidDefinition:
        return fsv
    return fsv if source is fs.source else dataclasses.replace(fsv, feature_set=dataclasses.replace(fs, source=source))


def _refuse_leftover_offline_table(store: "StoreContext", name: str) -> None:
    """A deleted set's offline table stays (training sets read it); a new set must not read it as its own."""
    from fstore.storage.offline import delta_table, table_uri

    settings = store.settings
    if settings.storage_format == "delta":
        leftover = delta_table(settings, name) is not None
    else:
        leftover = settings.storage_backend == "local" and os.path.isdir(table_uri(settings, name))
    if leftover:
        raise AlreadyExists(f"feature set {name!r} was deleted, and its offline table remains at "
                            f"{table_uri(settings, name)} for the training sets that read it; remove that table to "
                            "reuse the name, or choose another name", field="name")


def _refuse_stored_type_change(store: "StoreContext", set_name: str, name: str, old: str, new: str) -> None:
    """A materialized feature keeps its type: the offline table's column (and the online values) hold the old one."""
    if store.settings.storage_format != "delta":
        return
    from fstore.engine.sources import delta_arrow_schema
    from fstore.storage.offline import delta_table

    table = delta_table(store.settings, set_name)
    if table is not None and name in delta_arrow_schema(table).names:
        raise InvalidDefinition(f"feature {name} is materialized as {old} in the offline table of {set_name}; its type "
                                f"cannot become {new}: add the feature under a new name instead", field="data_type")


def _others(pending: Mapping[str, Feature] | None, name: str) -> dict[str, Feature] | None:
    return {n: f for n, f in pending.items() if n != name} if pending else None


def _new_set_version(s: Session, row: FeatureSetRow, fs: FeatureSet, features: list[tuple[Feature, int]],
                     changes: list[dict], actor: str, *, stored: dict, bump: bool = True) -> None:
    """Record a new immutable feature set version (spec, feature versions, feature specs snapshot).

    ``stored`` is ``fs``'s spec in its stored form (source secrets sealed); ``changes`` are already redacted.
    """
    if bump:
        row.version += 1
    row.spec = stored
    row.owner, row.description, row.tags_text = fs.owner, fs.description, _tags_text(fs.tags)
    row.updated_at = utcnow()
    snapshot = {**stored, "feature_specs": {f.name: f.to_dict() for f, _ in features}}
    s.add(FeatureSetVersionRow(feature_set_id=row.id, version=row.version, spec=snapshot,
                               features={f.name: v for f, v in features}, changes=changes,
                               created_at=row.updated_at, created_by=actor))
    s.flush()


def _current_features(s: Session, set_id: int) -> list[tuple[Feature, int, FeatureRow]]:
    return [(Feature.from_dict(r.spec), r.version, r) for r in _feature_rows(s, set_id)]


def create_feature_set(s: Session, body: dict, *, actor: str = "", store: "StoreContext | None" = None,
                       allow_missing_sources: bool = False) -> dict:
    """Register a feature set (version 1), with optional inline ``features``, after the compiler accepts it."""
    body = _body(body, "feature set")
    inline = body.pop("features", None) or []
    if not isinstance(inline, list):
        raise InvalidDefinition("features must be a list of feature objects", field="features")
    fs = FeatureSet.from_dict(body)
    check_new(fs)
    box = _box(store)
    box.check_plain(fs.to_dict())
    if s.scalar(select(FeatureSetRow.id).where(FeatureSetRow.name == fs.name)) is not None:
        raise AlreadyExists(f"feature set {fs.name!r} already exists", field="name")
    if store is not None:
        _refuse_leftover_offline_table(store, fs.name)
    fs, entities, new_entities = _resolve_entities(s, fs)
    features = []
    for item in inline:
        item = _body(item, "feature")
        given = item.pop("feature_set", None) or item.pop("feature_set_id", None)
        if given is not None and given != fs.name:
            raise InvalidDefinition(f"feature {item.get('name')!r} inside feature set {fs.name} names another set {given!r}",
                                    field="feature_set")
        features.append(Feature.from_dict(item, feature_set=fs.name))
        check_new(features[-1])
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AlreadyExists(f"feature(s) {', '.join(dupes)} listed twice in feature set {fs.name}", field="features")
    _validate(store, FeatureSetVersion(feature_set=fs, version=1, entities=entities, features=tuple(features),
                                       feature_versions={f.name: 1 for f in features}),
              allow_missing_sources=allow_missing_sources)
    stored = box.seal_spec(fs.to_dict())
    _register(s, new_entities, actor)
    now = utcnow()
    row = FeatureSetRow(name=fs.name, version=1, spec=stored, created_at=now, updated_at=now)
    s.add(row)
    _flush(s, f"feature set {fs.name!r}")
    for f in features:
        _insert_feature(s, row, f, {x.name: 1 for x in features}, actor)
    _new_set_version(s, row, fs, [(f, 1) for f in features], [{"field": "created", "old": None, "new": fs.name}], actor,
                     stored=stored, bump=False)
    return feature_set_dict(row, names)


def update_feature_set(s: Session, ref: str | int, changes: dict, *, actor: str = "", store: "StoreContext | None" = None,
                       pending: Mapping[str, Feature] | None = None, allow_missing_sources: bool = False) -> dict:
    """Merge ``changes`` into the current spec; a real change makes a new version, no change makes none."""
    row = find_set(s, ref)
    changes = _body(changes, "feature set changes")
    if "name" in changes and changes["name"] != row.name:
        raise InvalidDefinition("a feature set cannot be renamed; create a new one", field="name")
    if "features" in changes:
        raise InvalidDefinition("change a set's features through the features themselves", field="features")
    box = _box(store)
    plain = box.reveal_spec(row.spec)
    merged = {**plain, **box.keep_redacted(changes, plain)}
    if "ttl" in changes:
        merged.pop("ttl_seconds", None)
    if "allowed_lateness" in changes:
        merged.pop("allowed_lateness_seconds", None)
    if "retention" in changes:
        merged.pop("retention_seconds", None)
    if "cold_after" in changes:
        merged.pop("cold_after_seconds", None)
    fs, entities, new_entities = _resolve_entities(s, FeatureSet.from_dict(merged))
    changed = diff(plain, fs.to_dict())
    current = _current_features(s, row.id)
    if not changed:
        return feature_set_dict(row, [f.name for f, _, _ in current])
    check_new(fs)
    box.check_plain(fs.to_dict())
    stored = box.seal_spec(fs.to_dict())
    _validate(store, FeatureSetVersion(feature_set=fs, version=row.version + 1, entities=entities,
                                       features=tuple(f for f, _, _ in current),
                                       feature_versions={f.name: v for f, v, _ in current}), pending,
              allow_missing_sources=allow_missing_sources)
    _register(s, new_entities, actor)
    _new_set_version(s, row, fs, [(f, v) for f, v, _ in current], redact_changes(changed), actor, stored=stored)
    return feature_set_dict(row, [f.name for f, _, _ in current])


def get_feature_set(s: Session, ref: str | int, *, version: int | None = None) -> dict:
    """The current feature set, or one of its old versions (its spec and feature names then)."""
    row = find_set(s, ref)
    if version is None:
        return feature_set_dict(row, [r.name for r in _feature_rows(s, row.id)])
    vrow = _set_version_row(s, row, version)
    spec = public_spec({k: v for k, v in vrow.spec.items() if k != "feature_specs"})
    return {**feature_set_dict(row, list(vrow.features)), **spec, "version": vrow.version,
            "updated_at": iso(vrow.created_at)}


def _set_version_row(s: Session, row: FeatureSetRow, version: Any) -> FeatureSetVersionRow:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidDefinition(f"version {version!r} must be an integer", field="version")
    vrow = s.scalar(select(FeatureSetVersionRow).where(FeatureSetVersionRow.feature_set_id == row.id,
                                                       FeatureSetVersionRow.version == version))
    if vrow is None:
        raise NotFound(f"feature set {row.name} has no version {version} (latest is {row.version})")
    return vrow


def delete_feature_set(s: Session, ref: str | int, *, actor: str = "") -> str:
    """Delete a feature set with its features and versions (its offline data is left in place); its name."""
    row = find_set(s, ref)
    name = row.name
    for feature in _feature_rows(s, row.id):
        s.delete(feature)
    s.delete(row)
    s.flush()
    return name


def feature_set_versions(s: Session, ref: str | int) -> list[dict]:
    """Every version of a feature set, oldest first."""
    row = find_set(s, ref)
    rows = s.scalars(select(FeatureSetVersionRow).where(FeatureSetVersionRow.feature_set_id == row.id)
                     .order_by(FeatureSetVersionRow.version))
    return [{"version": v.version, "spec": public_spec({k: x for k, x in v.spec.items() if k != "feature_specs"}),
             "features": dict(v.features), "changes": redact_changes(v.changes), "created_at": iso(v.created_at),
             "created_by": v.created_by} for v in rows]


def load_feature_set_version(s: Session, ref: str | int, *, version: int | None = None,
                             secrets: SecretBox | None = None) -> FeatureSetVersion:
    """The resolved domain object of a feature set version (current by default), the compiler's input.

    With ``secrets`` its source is as the engine reads it (secrets decrypted, ``${NAME}`` references replaced);
    without, its source options are in their stored form.
    """
    return resolve_secrets(_load_version(s, ref, version), secrets)


def resolve_secrets(fsv: FeatureSetVersion, secrets: SecretBox | None) -> FeatureSetVersion:
    """``fsv`` with its source as the engine reads it (``secrets`` None: unchanged): ``load_feature_set_version``'s
    last step, for a version loaded without ``secrets`` and kept (``fstore.registry.current``)."""
    if secrets is None or fsv.feature_set.source is None or not fsv.feature_set.source.options:
        return fsv
    fs = fsv.feature_set
    source = secrets.resolve_source(fs.source, feature_set=fs.name)
    return dataclasses.replace(fsv, feature_set=dataclasses.replace(fs, source=source))


def _load_version(s: Session, ref: str | int, version: int | None) -> FeatureSetVersion:
    row = find_set(s, ref)
    if version is None:
        fs = FeatureSet.from_dict(row.spec)
        current = _current_features(s, row.id)
        return FeatureSetVersion(feature_set=fs, version=row.version, entities=_entities_of(s, fs),
                                 features=tuple(f for f, _, _ in current),
                                 feature_versions={f.name: v for f, v, _ in current})
    vrow = _set_version_row(s, row, version)
    spec = dict(vrow.spec)
    specs = spec.pop("feature_specs", {})
    fs = FeatureSet.from_dict(spec)
    return FeatureSetVersion(feature_set=fs, version=vrow.version, entities=_entities_of(s, fs),
                             features=tuple(Feature.from_dict(specs[name]) for name in vrow.features),
                             feature_versions=dict(vrow.features))


def feature_set_names_with_feature(s: Session, name: str) -> list[str]:
    """Names of the feature sets holding a feature called ``name``, sorted."""
    return sorted(s.scalars(select(FeatureSetRow.name).join(FeatureRow, FeatureRow.feature_set_id == FeatureSetRow.id)
                            .where(FeatureRow.name == name)))


# -- features ------------------------------------------------------------------------------

def _lineage(feature: Feature, versions: Mapping[str, int]) -> dict[str, int]:
    return {name: versions[name] for name in feature.source_features if name in versions}


def _insert_feature(s: Session, set_row: FeatureSetRow, f: Feature, versions: Mapping[str, int], actor: str) -> FeatureRow:
    now = utcnow()
    row = FeatureRow(feature_set_id=set_row.id, name=f.name, version=1, spec=f.to_dict(), data_type=f.data_type,
                     owner=f.owner, description=f.description, tags_text=_tags_text(f.tags), created_at=now, updated_at=now)
    s.add(row)
    _flush(s, f"feature {f.name!r} in feature set {set_row.name}")
    s.add(FeatureVersionRow(feature_id=row.id, version=1, spec=f.to_dict(), lineage=_lineage(f, versions),
                            changes=[{"field": "created", "old": None, "new": f.name}], created_at=now, created_by=actor))
    return row


def _latest_lineage(s: Session, row: FeatureRow) -> dict:
    return s.scalar(select(FeatureVersionRow.lineage).where(FeatureVersionRow.feature_id == row.id,
                                                            FeatureVersionRow.version == row.version)) or {}


def create_feature(s: Session, body: dict, *, actor: str = "", store: "StoreContext | None" = None,
                   pending: Mapping[str, Feature] | None = None, allow_missing_sources: bool = False) -> dict:
    """Add a feature to a set (named by ``feature_set`` or ``feature_set_id``, id or name); the set gets a new version."""
    body = _body(body, "feature")
    by_name, by_id = body.get("feature_set"), body.get("feature_set_id")
    if by_name is None and by_id is None:
        raise InvalidDefinition("feature_set (or feature_set_id) is required", field="feature_set")
    set_row = find_set(s, by_name if by_name is not None else by_id)
    if by_name is not None and by_id is not None and find_set(s, by_id).id != set_row.id:
        raise InvalidDefinition(f"feature_set {by_name!r} and feature_set_id {by_id!r} name different feature sets",
                                field="feature_set_id")
    feature = Feature.from_dict(body, feature_set=set_row.name)
    check_new(feature)
    current = _current_features(s, set_row.id)
    if any(f.name == feature.name for f, _, _ in current):
        raise AlreadyExists(f"feature {feature.name!r} already exists in feature set {set_row.name}", field="name")
    fs = FeatureSet.from_dict(set_row.spec)
    all_features = [f for f, _, _ in current] + [feature]
    versions = {f.name: v for f, v, _ in current} | {feature.name: 1}
    _validate(store, FeatureSetVersion(feature_set=fs, version=set_row.version + 1, entities=_entities_of(s, fs),
                                       features=tuple(all_features), feature_versions=versions),
              _others(pending, feature.name), allow_missing_sources=allow_missing_sources)
    row = _insert_feature(s, set_row, feature, versions, actor)
    _new_set_version(s, set_row, fs, [(f, versions[f.name]) for f in all_features],
                     [{"field": f"features.{feature.name}", "old": None, "new": 1}], actor, stored=set_row.spec)
    return feature_dict(row, set_row.name, _lineage(feature, versions))


def update_feature(s: Session, ref: str | int, changes: dict, *, feature_set: str | None = None, actor: str = "",
                   store: "StoreContext | None" = None, pending: Mapping[str, Feature] | None = None,
                   allow_missing_sources: bool = False) -> dict:
    """Merge ``changes`` into a feature; a real change makes new feature and feature set versions."""
    row, set_row = find_feature(s, ref, feature_set)
    changes = _body(changes, "feature changes")
    if "name" in changes and changes["name"] != row.name:
        raise InvalidDefinition("a feature cannot be renamed; create a new one", field="name")
    for key in ("feature_set", "feature_set_id"):
        if key in changes and changes[key] not in (set_row.name, set_row.id, str(set_row.id)):
            raise InvalidDefinition("a feature cannot move to another feature set", field=key)
    merged = {**row.spec, **{k: v for k, v in changes.items() if k not in ("feature_set", "feature_set_id")}}
    if "type" in changes:
        merged.pop("data_type", None)
    if "window_size" in changes and changes["window_size"] is None:
        for key in ("aggregation", "window_filter"):
            if key not in changes:
                merged.pop(key, None)
    feature = Feature.from_dict(merged, feature_set=set_row.name)
    changed = diff(row.spec, feature.to_dict())
    current = _current_features(s, set_row.id)
    if not changed:
        return feature_dict(row, set_row.name, _latest_lineage(s, row))
    check_new(feature)
    if store is not None and row.spec.get("data_type") != feature.data_type:
        _refuse_stored_type_change(store, set_row.name, row.name, row.spec.get("data_type"), feature.data_type)
    versions = {f.name: v for f, v, _ in current} | {row.name: row.version + 1}
    all_features = [feature if f.name == row.name else f for f, _, _ in current]
    fs = FeatureSet.from_dict(set_row.spec)
    _validate(store, FeatureSetVersion(feature_set=fs, version=set_row.version + 1, entities=_entities_of(s, fs),
                                       features=tuple(all_features), feature_versions=versions),
              _others(pending, feature.name), allow_missing_sources=allow_missing_sources)
    row.version += 1
    row.spec, row.data_type, row.owner = feature.to_dict(), feature.data_type, feature.owner
    row.description, row.tags_text, row.updated_at = feature.description, _tags_text(feature.tags), utcnow()
    lineage = _lineage(feature, versions)
    s.add(FeatureVersionRow(feature_id=row.id, version=row.version, spec=feature.to_dict(), lineage=lineage,
                            changes=changed, created_at=row.updated_at, created_by=actor))
    _new_set_version(s, set_row, fs, [(f, versions[f.name]) for f in all_features],
                     [{"field": f"features.{row.name}", "old": row.version - 1, "new": row.version}], actor, stored=set_row.spec)
    return feature_dict(row, set_row.name, lineage)


def get_feature(s: Session, ref: str | int, *, feature_set: str | None = None, version: int | None = None) -> dict:
    """The current feature, or one of its old versions."""
    row, set_row = find_feature(s, ref, feature_set)
    if version is None:
        return feature_dict(row, set_row.name, _latest_lineage(s, row))
    vrow = _feature_version_row(s, row, version)
    return {**feature_dict(row, set_row.name, vrow.lineage), **vrow.spec, "version": vrow.version,
            "updated_at": iso(vrow.created_at)}


def _feature_version_row(s: Session, row: FeatureRow, version: Any) -> FeatureVersionRow:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidDefinition(f"version {version!r} must be an integer", field="version")
    vrow = s.scalar(select(FeatureVersionRow).where(FeatureVersionRow.feature_id == row.id, FeatureVersionRow.version == version))
    if vrow is None:
        raise NotFound(f"feature {row.name} has no version {version} (latest is {row.version})")
    return vrow


def delete_feature(s: Session, ref: str | int, *, feature_set: str | None = None, actor: str = "") -> None:
    """Delete a feature no other feature depends on; the set gets a new version without it."""
    row, set_row = find_feature(s, ref, feature_set)
    from fstore.compiler import feature_dependencies

    current = _current_features(s, set_row.id)
    names = {f.name for f, _, _ in current}  # declared or not: a transformation naming the feature reads it
    dependants = [f.name for f, _, _ in current if row.name in feature_dependencies(f, names)]
    if dependants:
        raise Conflict(f"feature {row.name} is used by feature(s) {', '.join(dependants)} in feature set {set_row.name}; "
                       "delete or change them first")
    remaining = [(f, v) for f, v, r in current if r.id != row.id]
    old_version = row.version
    s.delete(row)
    s.flush()
    _new_set_version(s, set_row, FeatureSet.from_dict(set_row.spec), remaining,
                     [{"field": f"features.{row.name}", "old": old_version, "new": None}], actor, stored=set_row.spec)


def feature_versions(s: Session, ref: str | int, *, feature_set: str | None = None) -> list[dict]:
    """Every version of a feature, oldest first, with its lineage."""
    row, _ = find_feature(s, ref, feature_set)
    rows = s.scalars(select(FeatureVersionRow).where(FeatureVersionRow.feature_id == row.id).order_by(FeatureVersionRow.version))
    return [{"version": v.version, "spec": dict(v.spec), "lineage": dict(v.lineage), "changes": list(v.changes),
             "created_at": iso(v.created_at), "created_by": v.created_by} for v in rows]
