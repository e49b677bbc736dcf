"""Operations endpoints: Prometheus metrics, feature statistics, data freshness, usage; API keys; audit log.

``/monitoring/*`` reads what runs and requests already recorded. ``/api/v1/keys``
and ``/api/v1/audit`` are for admins (scope ``admin``, enforced by
``fstore.api.security``). A key limited to some feature sets sees only those in
every answer here.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional, Union

from flask import current_app, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fstore.api import responses as rs
from fstore.ops import audit
from fstore.ops import auth
from fstore.ops import monitoring
from fstore.ops import usage
from fstore.api.common import feature_filter, get_store
from fstore.api.errors import ErrorBody
from fstore.api.schemas import PRINTABLE, NoQuery
from fstore.core.errors import InvalidDefinition
from fstore.registry.models import utcnow
from fstore.registry.runs import to_utc

_ERRORS = {code: ErrorBody for code in (400, 401, 403, 404, 413, 415, 422)}
bp = APIBlueprint("monitoring", __name__, abp_responses=_ERRORS)
_mon = Tag(name="monitoring", description="Metrics, statistics, freshness and usage")
_keys = Tag(name="api keys", description="API keys with scopes and grants (admin)")
_audit = Tag(name="audit", description="Who changed what (admin)")
_QUERY = ConfigDict(extra="forbid")
_OPEN = ConfigDict(extra="allow")


# -- schemas ------------------------------------------------------------------------------------

class StatisticsQuery(BaseModel):
    model_config = _QUERY
    days: int = Field(7, ge=1, le=3660, description="look back this many days")
    feature_set: Optional[str] = Field(None, max_length=200)


class DaysQuery(BaseModel):
    model_config = _QUERY
    days: int = Field(30, ge=1, le=36500, description="look back this many days")


class DriftQuery(BaseModel):
    model_config = _QUERY
    feature_set: str = Field(max_length=200)
    baseline: str = Field("previous", max_length=200,
                          description="previous | training_set:NAME | window:START/END (ISO 8601)")


class AlertsQuery(BaseModel):
    model_config = _QUERY
    feature_set: Optional[str] = Field(None, max_length=200)
    limit: int = Field(100, ge=1, le=1000)


class UsageQuery(BaseModel):
    model_config = _QUERY
    start_date: Optional[str] = Field(None, max_length=64, description="ISO 8601; default: 24 hours ago")
    end_date: Optional[str] = Field(None, max_length=64, description="ISO 8601; default: now")
    level: str = Field("feature_set", pattern="^(key|feature_set|feature)$")
    granularity: Optional[str] = Field(None, pattern="^(minute|hour|day)$")
    api_key: Optional[str] = Field(None, max_length=200, description="a key prefix")
    feature_set: Optional[str] = Field(None, max_length=200)


class KeyBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    owner: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1, max_length=len(auth.SCOPES))
    feature_sets: Optional[list[str]] = Field(None, max_length=1000)
    features: Optional[list[str]] = Field(None, max_length=10000)
    expires_in: Optional[Union[int, str]] = Field(None, description="e.g. 30d, 12h, or seconds; at most 10 years")

    @field_validator("expires_in")
    @classmethod
    def _lifetime(cls, value: int | str | None) -> int | str | None:
        if value is not None and value != "":
            auth.key_lifetime(value)  # a 422 naming expires_in, before any registry work
        return value


class KeyPath(BaseModel):
    key_id: str = Field(max_length=64, description="numeric id or the key's prefix")


class KeyQuery(BaseModel):
    model_config = _QUERY
    owner: Optional[str] = Field(None, max_length=200)
    active: bool = Field(False, description="only keys neither revoked nor expired")
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class AuditQuery(BaseModel):
    model_config = _QUERY
    actor: Optional[str] = Field(None, max_length=200, pattern=PRINTABLE)
    action: Optional[str] = Field(None, max_length=100, pattern=PRINTABLE)
    target: Optional[str] = Field(None, max_length=300, pattern=PRINTABLE)
    outcome: Optional[str] = Field(None, pattern="^(ok|rejected|failed)$")
    since: Optional[str] = Field(None, max_length=64)
    until: Optional[str] = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class Grants(BaseModel):
    feature_sets: list[str]
    features: list[str]


class KeyOut(BaseModel):
    model_config = _OPEN
    id: int
    prefix: str
    owner: str
    scopes: list[str]
    grants: Grants
    status: str
    created_at: Optional[str]
    expires_at: Optional[str]
    revoked_at: Optional[str]
    last_used_at: Optional[str]


class CreatedKey(KeyOut):
    key: str = Field(description="the secret: shown this once, never again")


class KeyList(BaseModel):
    items: list[KeyOut]
    total: int
    limit: int
    offset: int


class AuditItem(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    source_ip: str
    outcome: str
    detail: Optional[dict[str, Any]]


class AuditList(BaseModel):
    items: list[AuditItem]
    total: int
    limit: int
    offset: int


class Items(BaseModel):
    model_config = _OPEN
    items: list[dict[str, Any]]


_METRICS_RESPONSE = {"200": {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}}


# -- monitoring ---------------------------------------------------------------------------------

def _flush_usage() -> None:
    security = current_app.extensions.get("fstore_security")
    if security is not None:
        security.usage.flush()


def _grant() -> auth.Grant | None:
    key = g.get("api_key")
    return None if key is None or key.grant.unrestricted else key.grant


@bp.get("/monitoring/metrics", tags=[_mon], responses=_METRICS_RESPONSE)
def metrics_text(query: NoQuery):
    """Prometheus metrics of every worker, plus run and freshness figures read from the registry."""
    from fstore.ops import metrics

    _flush_usage()  # per-set serving latency is recorded by the usage flusher: bring this worker's up to date
    grant = _grant()
    text, content_type = metrics.render(get_store(), allowed=grant.allows_feature_set if grant else None)
    if grant is not None:
        text = metrics.filter_text(text, grant.allows_feature_set)
    return current_app.response_class(text, mimetype=content_type.split(";")[0], content_type=content_type)


@bp.get("/monitoring/statistics", tags=[_mon], responses={200: Items})
def statistics(query: StatisticsQuery):
    """Per feature set and feature, from the quality reports of the last ``days`` days: counts, null rate,
    violations, min/max/mean and their change."""
    with get_store().transaction() as s:
        data = monitoring.statistics(s, days=query.days, feature_set=query.feature_set,
                                     allowed=feature_filter(_grant()))
    from fstore.ops import metrics  # on first use: its multi-process set-up must precede the import

    grant = _grant()
    data["online_skew"] = metrics.online_skew(get_store().settings.online_skew_sample, feature_set=query.feature_set,
                                              allowed=grant.allows_feature_set if grant else None)
    data["online_cache"] = metrics.online_cache(get_store().settings.online_cache)
    return data


def _feature_allowed():
    grant = _grant()
    if grant is None:
        return None
    return lambda fs, feature: grant.allows_feature_set(fs) if feature is None else grant.allows_feature(fs, feature)


@bp.get("/monitoring/drift", tags=[_mon], responses={200: rs.Obj})
def drift(query: DriftQuery):
    """Per feature: PSI (band stable < 0.1 ≤ moderate ≤ 0.25 < significant), KS and Jensen–Shannon of the set's
    newest profiled run against the baseline: the previous run, a saved training set, or the runs of a window."""
    from fstore.ops.drift import drift as measure

    with get_store().transaction() as s:
        return measure(s, query.feature_set, query.baseline, allowed=_feature_allowed())


@bp.get("/monitoring/alerts", tags=[_mon], responses={200: Items})
def alerts(query: AlertsQuery):
    """Anomaly alerts of runs (robust z-score of row count, null rate, mean, freshness lag), newest first."""
    from fstore.registry.quality import list_alerts

    allowed = _feature_allowed()
    with get_store().transaction() as s:
        items = list_alerts(s, feature_set=query.feature_set, limit=query.limit)
    return {"items": [a for a in items if allowed is None or allowed(a["feature_set"], a["feature"])]}


@bp.get("/monitoring/data-freshness", tags=[_mon], responses={200: Items})
def data_freshness(query: NoQuery):
    """Per feature set: newest event time offline and online, last succeeded run, late against its schedule."""
    grant = _grant()
    return monitoring.data_freshness(get_store(), allowed=grant.allows_feature_set if grant else None)


@bp.get("/monitoring/usage", tags=[_mon], responses={200: Items})
def usage_report(query: UsageQuery):
    """Requests per API key, feature set or feature, with p50/p95/p99 latency, cache hit rate and coverage."""
    _flush_usage()  # include what this worker has not flushed yet
    end = to_utc(query.end_date, field_name="end_date") if query.end_date else None
    start = to_utc(query.start_date, field_name="start_date") if query.start_date else utcnow() - timedelta(days=1)
    grant = _grant()
    with get_store().transaction() as s:
        return usage.query_usage(s, start=start, end=end, level=query.level, granularity=query.granularity,
                                 api_key=query.api_key, feature_set=query.feature_set,
                                 allowed_set=grant.allows_feature_set if grant else None)


@bp.get("/monitoring/cost", tags=[_mon], responses={200: rs.Obj})
def cost(query: DaysQuery):
    """Cost per feature set and in total: its runs of the last ``days`` days (CPU seconds, bytes read and written,
    shuffle bytes, peak memory), its offline bytes and online memory now; money with ``COST_PRICES``."""
    from fstore.ops.cost import cost_report

    grant = _grant()
    return cost_report(get_store(), query.days, allowed=grant.allows_feature_set if grant else None)


@bp.get("/monitoring/unused", tags=[_mon], responses={200: rs.Obj})
def unused(query: DaysQuery):
    """Features neither served online nor used in a training set for ``days`` days, with when each was last
    used and whether usage-based retention dropped its online values (``UNUSED_ONLINE_DROP_DAYS``)."""
    from fstore.ops.unused import unused_features

    _flush_usage()  # this worker's requests count as use too
    allowed = _feature_allowed()
    data = unused_features(get_store(), query.days, allowed=(lambda fs: allowed(fs, None)) if allowed else None)
    if allowed is not None:
        data["items"] = [i for i in data["items"] if allowed(i["feature_set"], i["feature"])]
        data["unused"] = len(data["items"])
    return data


# -- keys ---------------------------------------------------------------------------------------

def _forget(key_id: int) -> None:
    security = current_app.extensions.get("fstore_security")
    if security is not None:
        security.verifier.forget([key_id])


@bp.post("/api/v1/keys", tags=[_keys], responses={201: CreatedKey})
def create_key(query: NoQuery, body: KeyBody):
    """Create a key. The answer holds the secret once; only its hash is stored."""
    data = request.get_json()
    with get_store().transaction() as s:
        created = auth.create_key(s, owner=data["owner"], scopes=data["scopes"], feature_sets=data.get("feature_sets"),
                                  features=data.get("features"), expires_in=data.get("expires_in"),
                                  registered_only=True)
    return created, 201, {"Location": f"/api/v1/keys/{created['id']}", "Cache-Control": "no-store"}


@bp.get("/api/v1/keys", tags=[_keys], responses={200: KeyList})
def list_keys(query: KeyQuery):
    """Keys, newest first (never secrets or hashes)."""
    with get_store().transaction() as s:
        return auth.list_keys(s, owner=query.owner, include_inactive=not query.active, limit=query.limit,
                              offset=query.offset)


@bp.get("/api/v1/keys/<key_id>", tags=[_keys], responses={200: KeyOut})
def get_key(path: KeyPath, query: NoQuery):
    """One key by id or prefix."""
    with get_store().transaction() as s:
        return auth.get_key(s, path.key_id)


@bp.delete("/api/v1/keys/<key_id>", tags=[_keys], responses={200: KeyOut})
def revoke_key(path: KeyPath, query: NoQuery):
    """Revoke a key; it stops working at once in this process and within seconds in the others."""
    with get_store().transaction() as s:
        revoked = auth.revoke_key(s, path.key_id)
    _forget(revoked["id"])
    return revoked


# -- audit --------------------------------------------------------------------------------------

@bp.get("/api/v1/audit", tags=[_audit], responses={200: AuditList})
def list_audit(query: AuditQuery):
    """Audit records, newest first: who, what, when, from where, outcome."""
    since = to_utc(query.since, field_name="since") if query.since else None
    until = to_utc(query.until, field_name="until") if query.until else None
    if since and until and since >= until:
        raise InvalidDefinition("since must be before until", field="since")
    with get_store().transaction() as s:
        return audit.list_audit(s, actor=query.actor, action=query.action, target=query.target,
                                outcome=query.outcome, since=since, until=until, limit=query.limit,
                                offset=query.offset)

