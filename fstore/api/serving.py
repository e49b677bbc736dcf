"""Serving endpoints: online lookups (the hot path), historical retrieval, batch jobs.

The online view is kept minimal on purpose: the body is parsed once (cached by
the request), checked once by its schema, handed to the store, and the store's
answer is serialized once as it is.
"""
from __future__ import annotations

from flask import request
from flask_openapi3 import APIBlueprint, Tag

from fstore.api.common import actor, get_store
from fstore.api import responses as rs
from fstore.api.errors import ErrorBody
from fstore.api.fast_online import UNAVAILABLE_KEY
from fstore.api.render import frame_to_json
from fstore.api.schemas import BatchBody, HistoricalBody, JobPath, NoQuery, OnlineBody
from fstore.core.errors import TooLarge

_ERRORS = {code: ErrorBody for code in (400, 404, 413, 415, 422)}
bp = APIBlueprint("serving", __name__, url_prefix="/api/v1/serving", abp_responses=_ERRORS)
_tag = Tag(name="serving", description="Online features, training data, batch retrieval jobs")


@bp.post("/online", tags=[_tag], responses={200: rs.OnlineAnswer})
def online(query: NoQuery, body: OnlineBody):
    """Latest feature values for entity keys, from the online store."""
    unavailable = request.environ.get(UNAVAILABLE_KEY)
    if unavailable is not None:  # the fast path just found a backend down: one attempt per request, not two
        raise unavailable
    data = request.get_json()
    return get_store().get_online_features(features=data["features"], entities=data["entities"],
                                           feature_sets=data.get("feature_sets"))


@bp.post("/historical", tags=[_tag], responses={200: rs.Obj})
def historical(query: NoQuery, body: HistoricalBody):
    """Point-in-time-correct features for each entity row, in the rows' order (training data)."""
    store = get_store()
    limit = store.settings.max_historical_rows
    if len(body.entity_df.data) > limit:
        raise TooLarge(f"entity_df has {len(body.entity_df.data)} rows, over the limit of {limit} for this "
                       "endpoint; use POST /api/v1/serving/batch for large entity sets", field="entity_df")
    entity_df = body.entity_df.to_pandas()
    result = store.get_historical_features(entity_df=entity_df, features=body.features,
                                           feature_sets=body.feature_sets, as_of=body.as_of,
                                           timestamp_column=body.timestamp_column, save_as=body.save_as,
                                           actor=actor())
    meta = getattr(result, "meta", None)
    return frame_to_json(result.to_df(), meta if isinstance(meta, dict) else None)


@bp.post("/batch", tags=[_tag], responses={202: rs.Run})
def batch(query: NoQuery, body: BatchBody):
    """Start a batch retrieval job writing Delta or Parquet; returns the job (202) at once."""
    job = get_store().start_batch_retrieval(entity_source=body.entity_source, features=body.features,
                                            output_path=body.output_path, output_format=body.output_format,
                                            feature_sets=body.feature_sets, actor=actor())
    headers = {"Location": f"/api/v1/serving/jobs/{job['id']}"} if isinstance(job, dict) and "id" in job else {}
    return job, 202, headers


@bp.get("/jobs/<job_id>", tags=[_tag], responses={200: rs.Run})
def get_job(path: JobPath, query: NoQuery):
    """A batch job: status, progress, output location and row count."""
    return get_store().get_job(path.job_id)


