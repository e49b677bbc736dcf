"""Computation endpoints: the compiled SQL of a feature set, materialization runs and their status.

``POST …/materialize`` starts a run in the background and answers 202 with the
run at once; clients poll ``GET /api/v1/runs/{run_id}``. ``POST …/vacuum`` deletes
offline files old versions no longer need (admin scope: it deletes data). ``POST …/online/reload``
(body ``{}``) rebuilds the online values from the offline table (after the online store lost them) and
answers when done. ``POST /api/v1/push`` (scope ``push``) computes source rows of a set at once and writes
them online and/or offline (``fstore.compute.push``); it answers once they are written.
"""
from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag

from fstore.api.common import actor, get_store
from fstore.api import responses as rs
from fstore.api.errors import ErrorBody
from fstore.api.schemas import (MaterializeBody, NoQuery, Page, PushBody, RefPath, ReloadBody, RunIdPath, RunPath,
                                VacuumBody, VersionQuery)
from fstore.core.errors import NotFound

_ERRORS = {code: ErrorBody for code in (400, 404, 409, 413, 415, 422)}
bp = APIBlueprint("compute", __name__, url_prefix="/api/v1", abp_responses=_ERRORS)
_runs = Tag(name="materialization", description="Compiled SQL, materialization runs")


@bp.get("/feature-sets/<id_or_name>/compile", tags=[_runs], responses={200: rs.Compiled})
def compile_feature_set(path: RefPath, query: VersionQuery):
    """The Spark SQL that computes a feature set version."""
    sql = get_store().compile(path.id_or_name, version=query.version)
    return {"feature_set": path.id_or_name, "version": query.version, "sql": sql}


@bp.post("/feature-sets/<id_or_name>/materialize", tags=[_runs], responses={202: rs.Run})
def materialize(path: RefPath, query: NoQuery, body: MaterializeBody):
    """Start materializing ``[start_date, end_date)``; returns the run (202) at once."""
    start, end = body.range()
    run = get_store().start_materialization(path.id_or_name, start, end, actor=actor())
    headers = {"Location": f"/api/v1/runs/{run['id']}"} if isinstance(run, dict) and "id" in run else {}
    return run, 202, headers


@bp.post("/feature-sets/<id_or_name>/vacuum", tags=[_runs], responses={200: rs.Obj})
def vacuum(path: RefPath, query: NoQuery, body: VacuumBody):
    """Delete offline files that no version worth keeping reads (``fstore.compute.vacuum``); needs the admin scope."""
    return get_store().vacuum_offline(path.id_or_name, retain_hours=body.retain_hours, dry_run=body.dry_run,
                                      actor=actor())


@bp.post("/feature-sets/<id_or_name>/online/reload", tags=[_runs], responses={200: rs.Obj})
def reload_online(path: RefPath, query: NoQuery, body: ReloadBody):
    """Rebuild the set's online values from its offline table (``fstore.compute.reload``); materialize scope."""
    return get_store().reload_online(path.id_or_name, actor=actor())


@bp.post("/push", tags=[_runs], responses={200: rs.Obj})
def push(query: NoQuery, body: PushBody):
    """Compute rows of a feature set's source now and write them ``to`` online, offline or both (push scope)."""
    return get_store().push(body.feature_set, body.rows, to=body.to, actor=actor())


@bp.get("/feature-sets/<id_or_name>/runs", tags=[_runs], responses={200: rs.Page})
def list_runs(path: RefPath, query: Page):
    """A feature set's runs, newest first."""
    return get_store().list_runs(path.id_or_name, limit=query.limit, offset=query.offset)


@bp.get("/feature-sets/<id_or_name>/runs/<run_id>", tags=[_runs], responses={200: rs.Run})
def get_feature_set_run(path: RunPath, query: NoQuery):
    """One run of a feature set: status, rows read/written/rejected, duration, Delta version, error."""
    run = get_store().get_run(path.run_id)
    ref = path.id_or_name
    if ref not in (str(run.get("feature_set")), str(run.get("feature_set_id"))):
        raise NotFound(f"run {path.run_id} is not a run of feature set {ref}", field="run_id")
    return run


@bp.get("/runs/<run_id>", tags=[_runs], responses={200: rs.Run})
def get_run(path: RunIdPath, query: NoQuery):
    """One run by id."""
    return get_store().get_run(path.run_id)
