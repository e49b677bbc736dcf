"""Registry endpoints: entities, feature sets, features, their versions, and search.

Each view validates the request with its schema, calls one ``FeatureStore``
method (one registry transaction) and returns its JSON-ready result. Bodies go
to the store as the user wrote them (``request.get_json()``), so the domain
model sees exactly the fields sent and names any it refuses.
"""
from __future__ import annotations

from flask import request
from flask_openapi3 import APIBlueprint, Tag

from fstore.api.common import actor, created, get_store, grant
from fstore.api import responses as rs
from fstore.api.errors import ErrorBody
from fstore.api.schemas import (
    EntityBody, EntityPatch, EntityQuery, FeatureBody, FeatureGetQuery, FeaturePatch, FeatureQuery,
    DefinitionQuery, FeatureDefinitionQuery, FeatureSetBody, FeatureSetPatch, FeatureSetQuery, FeatureSetRefQuery, NoQuery,
    RefPath,
    SearchQuery, VersionQuery,
)

_ERRORS = {code: ErrorBody for code in (400, 404, 409, 413, 415, 422)}
bp = APIBlueprint("registry", __name__, url_prefix="/api/v1", abp_responses=_ERRORS)

_entities = Tag(name="entities", description="What features describe, and their join keys")
_sets = Tag(name="feature sets", description="Features computed together from one source")
_features = Tag(name="features", description="Named values per entity and event time")

ENTITIES = "/api/v1/entities"
FEATURE_SETS = "/api/v1/feature-sets"
FEATURES = "/api/v1/features"


# -- entities -------------------------------------------------------------------------------

@bp.post("/entities", tags=[_entities], responses={201: rs.Entity})
def create_entity(query: NoQuery, body: EntityBody):
    """Create an entity."""
    return created(get_store().create_entity(request.get_json(), actor=actor()), ENTITIES)


@bp.get("/entities", tags=[_entities], responses={200: rs.EntityPage})
def list_entities(query: EntityQuery):
    """List entities, optionally matching ``q``."""
    return get_store().list_entities(query=query.q, limit=query.limit, offset=query.offset)


@bp.get("/entities/<id_or_name>", tags=[_entities], responses={200: rs.Entity})
def get_entity(path: RefPath, query: VersionQuery):
    """One entity by id or name (its latest version, or ``version``, as feature sets and features answer)."""
    return get_store().get_entity(path.id_or_name, version=query.version)


@bp.patch("/entities/<id_or_name>", tags=[_entities], responses={200: rs.Entity})
def update_entity(path: RefPath, query: NoQuery, body: EntityPatch):
    """Change an entity."""
    return get_store().update_entity(path.id_or_name, request.get_json(), actor=actor())


@bp.get("/entities/<id_or_name>/versions", tags=[_entities], responses={200: rs.Versions})
def entity_versions(path: RefPath, query: NoQuery):
    """Every version of an entity: what changed, when, by whom."""
    return {"items": get_store().entity_versions(path.id_or_name)}


@bp.delete("/entities/<id_or_name>", tags=[_entities], responses=rs.NO_CONTENT)
def delete_entity(path: RefPath, query: NoQuery):
    """Delete an entity no feature set uses."""
    get_store().delete_entity(path.id_or_name, actor=actor())
    return "", 204


# -- feature sets -----------------------------------------------------------------------------

@bp.post("/feature-sets", tags=[_sets], responses={201: rs.FeatureSet})
def create_feature_set(query: DefinitionQuery, body: FeatureSetBody):
    """Create a feature set (version 1); a local source path that does not exist is refused unless
    ``allow_missing_sources=true``."""
    return created(get_store().create_feature_set(request.get_json(), actor=actor(),
                                                  allow_missing_sources=query.allow_missing_sources), FEATURE_SETS)


@bp.get("/feature-sets", tags=[_sets], responses={200: rs.FeatureSetPage})
def list_feature_sets(query: FeatureSetQuery):
    """List feature sets: search ``q``, filter by entity, owner, tag; paginate."""
    return get_store().list_feature_sets(query=query.q, entity=query.entity, owner=query.owner, tag=query.tag,
                                         limit=query.limit, offset=query.offset, grant=grant())


@bp.get("/feature-sets/<id_or_name>", tags=[_sets], responses={200: rs.FeatureSet})
def get_feature_set(path: RefPath, query: VersionQuery):
    """One feature set by id or name (its latest version, or ``version``)."""
    return get_store().get_feature_set(path.id_or_name, version=query.version)


@bp.patch("/feature-sets/<id_or_name>", tags=[_sets], responses={200: rs.FeatureSet})
def update_feature_set(path: RefPath, query: DefinitionQuery, body: FeatureSetPatch):
    """Change a feature set: makes a new version (``allow_missing_sources`` as on create)."""
    return get_store().update_feature_set(path.id_or_name, request.get_json(), actor=actor(),
                                          allow_missing_sources=query.allow_missing_sources)


@bp.delete("/feature-sets/<id_or_name>", tags=[_sets], responses=rs.NO_CONTENT)
def delete_feature_set(path: RefPath, query: NoQuery):
    """Delete a feature set and its features."""
    get_store().delete_feature_set(path.id_or_name, actor=actor())
    return "", 204


@bp.get("/feature-sets/<id_or_name>/versions", tags=[_sets], responses={200: rs.Versions})
def feature_set_versions(path: RefPath, query: NoQuery):
    """Every version of a feature set: what changed, when, by whom."""
    return {"items": get_store().feature_set_versions(path.id_or_name)}


# -- features ----------------------------------------------------------------------------------

@bp.post("/features", tags=[_features], responses={201: rs.Feature})
def create_feature(query: DefinitionQuery, body: FeatureBody):
    """Create a feature in a feature set (``feature_set_id`` takes an id or a name); the set gets a new version
    (``allow_missing_sources`` as on a set's create)."""
    return created(get_store().create_feature(request.get_json(), actor=actor(),
                                              allow_missing_sources=query.allow_missing_sources), FEATURES)


@bp.get("/features", tags=[_features], responses={200: rs.FeaturePage})
def list_features(query: FeatureQuery):
    """List features: search ``q``, filter by feature set, entity, owner, data type, tag; paginate."""
    return get_store().list_features(query=query.q, feature_set=query.feature_set, entity=query.entity,
                                     owner=query.owner, data_type=query.data_type, tag=query.tag,
                                     limit=query.limit, offset=query.offset, grant=grant())


@bp.get("/features/<id_or_name>", tags=[_features], responses={200: rs.Feature})
def get_feature(path: RefPath, query: FeatureGetQuery):
    """One feature by id or name (``feature_set`` when the name is in several sets)."""
    return get_store().get_feature(path.id_or_name, feature_set=query.feature_set, version=query.version)


@bp.patch("/features/<id_or_name>", tags=[_features], responses={200: rs.Feature})
def update_feature(path: RefPath, query: FeatureDefinitionQuery, body: FeaturePatch):
    """Change a feature: makes a new version of it and of its set (``allow_missing_sources`` as on create)."""
    return get_store().update_feature(path.id_or_name, request.get_json(), feature_set=query.feature_set,
                                      actor=actor(), allow_missing_sources=query.allow_missing_sources)


@bp.delete("/features/<id_or_name>", tags=[_features], responses=rs.NO_CONTENT)
def delete_feature(path: RefPath, query: FeatureSetRefQuery):
    """Delete a feature that no other feature depends on."""
    get_store().delete_feature(path.id_or_name, feature_set=query.feature_set, actor=actor())
    return "", 204


@bp.get("/features/<id_or_name>/versions", tags=[_features], responses={200: rs.Versions})
def feature_versions(path: RefPath, query: FeatureSetRefQuery):
    """Every version of a feature."""
    return {"items": get_store().feature_versions(path.id_or_name, feature_set=query.feature_set)}


# -- search -------------------------------------------------------------------------------------

@bp.get("/search", tags=[Tag(name="search")], responses={200: rs.Page})
def search(query: SearchQuery):
    """Search entities, feature sets and features by name, description, owner and tags."""
    return get_store().search(query.q, kinds=query.kind_tuple(), limit=query.limit, offset=query.offset,
                              grant=grant())
