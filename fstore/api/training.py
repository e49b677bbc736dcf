"""Training-set endpoints: list the saved retrievals, show one, re-create one exactly.

Reading a training set needs the ``serve_historical`` scope (``fstore.api.security``);
a key limited to some feature sets sees only training sets that read nothing else.
Re-creating answers in the shape of ``POST /api/v1/serving/historical`` and is held
to the same row limit, checked on the saved entity count before any Spark work.
"""
from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from fstore.api.common import get_store, grant
from fstore.api import responses as rs
from fstore.api.errors import ErrorBody
from fstore.api.render import frame_to_json
from fstore.api.schemas import REF_PATTERN, NoQuery, Page
from fstore.core.errors import TooLarge

_ERRORS = {code: ErrorBody for code in (400, 404, 409, 413, 415, 422)}
bp = APIBlueprint("training", __name__, url_prefix="/api/v1/training-sets", abp_responses=_ERRORS)
_tag = Tag(name="training sets", description="Saved retrievals, re-creatable exactly")


class TrainingSetPath(BaseModel):
    name: str = Field(description="name or numeric id of the training set", pattern=REF_PATTERN)


class RecreateBody(BaseModel):
    """Nothing to give: everything is pinned in the saved training set. Send ``{}`` (every POST body is JSON)."""

    model_config = ConfigDict(strict=True, extra="forbid")


@bp.get("", tags=[_tag], responses={200: rs.Page})
def list_training_sets(query: Page):
    """Saved training sets, newest first."""
    return get_store().list_training_sets(limit=query.limit, offset=query.offset, grant=grant())


@bp.get("/<name>", tags=[_tag], responses={200: rs.Obj})
def get_training_set(path: TrainingSetPath, query: NoQuery):
    """One training set: features, set and feature versions, pinned offline versions, paths."""
    return get_store().get_training_set(path.name)


class ImportanceBody(BaseModel):
    """Feature importances from an external experiment tracker, stored with the training set."""

    model_config = ConfigDict(strict=True, extra="forbid")
    label: str = Field(min_length=1, max_length=200)
    method: str = Field(min_length=1, max_length=63, examples=["shap_mean_abs"])
    scores: dict[str, float] = Field(min_length=1, max_length=10000, description="feature column -> score")


@bp.post("/<name>/importance", tags=[_tag], responses={200: rs.Obj})
def log_importance(path: TrainingSetPath, query: NoQuery, body: ImportanceBody):
    """Record importances computed elsewhere (replacing the same label and method); answers the training set."""
    from flask import g

    from fstore.registry.quality import save_importances
    from fstore.registry.training_sets import get_training_set as saved_set

    store = get_store()
    key = g.get("api_key")
    with store.transaction() as s:
        saved = saved_set(s, path.name)
        columns = set(saved.get("columns") or ())
        unknown = sorted(set(body.scores) - columns)
        if unknown:
            from fstore.core.errors import InvalidDefinition

            raise InvalidDefinition(f"training set {saved['name']} has no column(s) {', '.join(unknown)}; its columns "
                                    f"are: {', '.join(sorted(columns))}", field="scores")
        save_importances(s, saved["name"], body.label, body.method, body.scores,
                         actor=getattr(key, "owner", "") if key is not None else "")
    return store.get_training_set(saved["name"])


@bp.post("/<name>/recreate", tags=[_tag], responses={200: rs.Obj})
def recreate_training_set(path: TrainingSetPath, query: NoQuery, body: RecreateBody):
    """Re-run a training set's retrieval pinned to its recorded versions; rows as ``/serving/historical`` answers."""
    store = get_store()
    saved = store.get_training_set(path.name)
    limit = store.settings.max_historical_rows
    if saved["entity_count"] > limit:
        raise TooLarge(f"training set {saved['name']} has {saved['entity_count']} rows, over the limit of {limit} "
                       "for this endpoint; use `fstore training-sets recreate NAME --output PATH`", field="name")
    result = store.recreate_training_set(saved["id"])
    return frame_to_json(result.to_df(), result.meta)
