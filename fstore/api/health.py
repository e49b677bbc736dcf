"""Liveness and readiness: ``/health`` does no I/O; ``/ready`` checks the registry and the online store,
and reports ``degraded`` (200) with the feature sets whose online values were lost."""
from __future__ import annotations

from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from fstore.api.common import get_store
from fstore.api import responses as rs
from fstore.api.schemas import NoQuery

bp = APIBlueprint("health", __name__)
_tag = Tag(name="health")


@bp.get("/health", tags=[_tag], responses={200: rs.Health})
def health(query: NoQuery):
    """The process is up (no I/O, for liveness probes)."""
    return {"status": "ok"}


@bp.get("/ready", tags=[_tag], responses={200: rs.ReadyBody, 503: rs.ReadyBody})
def ready(query: NoQuery):
    """The registry answers and the online store pings; 503 when one does not.

    With API keys on, a request without a key (an orchestrator's probe) gets the status alone; the checks and
    what failed (which may name hosts) need a valid key.
    """
    from fstore.api.security import auth_required, current_key

    detailed = current_key() is not None or not auth_required()
    body, status = _readiness(get_store())
    if detailed:
        return body, status
    if status == 200:
        return {"status": body["status"]}, status
    return {"status": body["status"], "error": {"code": "unavailable", "message": "not ready", "field": None}}, status


def _readiness(store) -> tuple[dict, int]:
    checks: dict[str, str] = {}
    problems: list[str] = []
    try:
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["registry"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported, not raised
        checks["registry"] = "unavailable"
        problems.append(f"registry unreachable: {_first_line(exc)}")
    try:
        store.online.ping()
        checks["online_store"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["online_store"] = "unavailable"
        problems.append(f"online store unreachable: {_first_line(exc)}")
    if problems:
        body = {"status": "unavailable", "checks": checks,
                "error": {"code": "unavailable", "message": "; ".join(problems), "field": None}}
        return body, 503
    lost = _online_values_lost(store)
    if lost:
        # 200, not 503: every replica shares the store, so 503 would take them all out of the load
        # balancer (no answers at all, and no way to POST the reload) instead of degraded answers.
        checks["online_store"] = "degraded"
        return {"status": "degraded", "checks": checks,
                "online_values_lost": [{"feature_set": name, "reason": why} for name, why in lost.items()]}, 200
    return {"status": "ready", "checks": checks}, 200


def _online_values_lost(store) -> dict[str, str]:
    """Sets whose online values are lost (a store restarted empty: ``fstore.storage.online.marker``)."""
    from fstore.ops.monitoring import online_values_lost

    try:
        return online_values_lost(store)
    except Exception:  # noqa: BLE001 - both backends just answered; a failure here is not a readiness verdict
        return {}


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
