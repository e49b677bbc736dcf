"""What every view needs: the app's ``FeatureStore`` and the acting user."""
from __future__ import annotations

from flask import current_app, request

from fstore.core.errors import InvalidDefinition

MAX_ACTOR_LENGTH = 200


def get_store():
    """The one ``FeatureStore`` built by ``create_app``."""
    return current_app.extensions["fstore"]


def actor() -> str:
    """Who is acting: the API key's owner when auth is on, else the ``X-Actor`` header; empty when not given."""
    from flask import g

    key = g.get("api_key")
    if key is not None:
        return key.actor
    value = request.headers.get("X-Actor", "").strip()
    if len(value) > MAX_ACTOR_LENGTH:
        raise InvalidDefinition(f"X-Actor is longer than {MAX_ACTOR_LENGTH} characters", field="X-Actor")
    return value


def grant():
    """The request key's grant when it is limited to some feature sets/features (lists filter by it); else None."""
    from flask import g

    key = g.get("api_key")
    return key.grant if key is not None and not key.grant.unrestricted else None


def created(item: dict, collection: str):
    """A 201 response for a new object, with its ``Location``."""
    ident = item.get("id", item.get("name")) if isinstance(item, dict) else None
    headers = {"Location": f"{collection}/{ident}"} if ident is not None else {}
    return item, 201, headers


def feature_filter(limit):
    """``allowed(set, feature_or_None)`` for ``fstore.ops.monitoring.statistics`` from a grant (None: no limit)."""
    if limit is None:
        return None

    def allowed(fs: str, feature: str | None) -> bool:
        return limit.allows_feature_set(fs) if feature is None else limit.allows_feature(fs, feature)
    return allowed
