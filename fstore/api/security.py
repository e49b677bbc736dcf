"""Authentication, scopes, grants, audit, usage and metrics around every request.

``install(app, store)`` adds one before-request hook (run first, ahead of body
checks) and one after-request hook:

* before: ``/health`` passes untouched, and so does ``/ready`` without a key (a probe gets the status, a
  valid key the details). When auth is on, the key comes from
  ``Authorization: Bearer <key>`` or ``X-API-Key``; a missing or wrong key is a 401
  that says nothing more. The endpoint's scope is checked (``SCOPE_RULES``), then,
  for a key limited to feature sets/features, every set and feature the request
  names (path, query, body): what the key cannot see answers 404 exactly as an unknown name does, what it
  sees but may not change is a 403 naming it.
* after: request metrics, serving usage (handed to the background recorder),
  an audit row for every write (rejected ones too), and, for a restricted key,
  the response is filtered so nothing outside the grant appears in it.

When is auth on? ``AUTH_ENABLED`` decides when set. Otherwise it is on whenever
the server is bound to anything but localhost: the server shells put the bind
address in ``FSTORE_BIND_HOST`` (``conf/gunicorn.conf.py`` from gunicorn's real
bind list, ``server.py`` from ``HOST``), read by ``Settings.bind_host``. An app
that is not bound at all (tests, in-process use) has auth off unless asked.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request

from fstore.ops import audit
from fstore.ops import metrics
from fstore.ops.auth import ApiKey, Grant, KeyVerifier
from fstore.core.errors import BadRequest, FStoreError, Forbidden, NotFound, Unauthorized, Unavailable
from fstore.registry.training_sets import readable_with
from fstore.ops.usage import UsageRecorder

log = logging.getLogger(__name__)

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_READ_POSTS = re.compile(r"^/api/v1/(serving/(online|historical)|training-sets/[^/]+/recreate)$")  # POSTs that read
USAGE_ENDPOINTS = {"/api/v1/serving/online": "online", "/api/v1/serving/historical": "historical"}

# (methods or None for any, path pattern, scope or None for "any valid key"); first match wins.
SCOPE_RULES: tuple[tuple[frozenset[str] | None, re.Pattern, str | None], ...] = tuple(
    (frozenset(m.split()) if m else None, re.compile(p), s) for m, p, s in (
        ("", r"^/api/v1/(keys|audit)(/|$)", "admin"),
        ("", r"^/monitoring/usage$", "admin"),
        ("", r"^/api/v1/feature-sets/[^/]+/vacuum$", "admin"),  # it deletes offline data for good
        ("", r"^/monitoring/", "read_registry"),
        ("POST", r"^/api/v1/serving/online$", "serve_online"),
        ("POST", r"^/api/v1/push$", "push"),
        ("", r"^/api/v1/serving/", "serve_historical"),
        ("POST", r"^/api/v1/training-sets/[^/]+/importance$", "write_registry"),  # a registry write
        ("GET HEAD POST", r"^/api/v1/training-sets(/|$)", "serve_historical"),
        ("POST PUT PATCH DELETE", r"^/api/v1/feature-sets/[^/]+/(materialize|backfill|runs|online/reload)", "materialize"),
        ("GET HEAD", r"^/api/v1/", "read_registry"),
        ("", r"^/api/v1/", "write_registry"),
        ("", r"^/(ready|openapi|docs)", None),
    ))


def required_scope(method: str, path: str) -> str | None:
    """The scope an endpoint needs; anything unlisted needs ``admin`` (deny by default)."""
    for methods, pattern, scope in SCOPE_RULES:
        if (methods is None or method in methods) and pattern.search(path):
            return scope
    return "admin"


def is_local_bind(bind: str) -> bool:
    """True when every address the server listens on is loopback (``host:port`` entries, comma separated)."""
    if not bind.strip():
        return True
    for entry in bind.split(","):
        entry = entry.strip()
        if entry.startswith("unix:") or not entry:
            return False  # a socket is usually fronted by a proxy that exposes it
        host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 or entry.startswith("[") else entry
        if host not in _LOCAL_HOSTS:
            return False
    return True


@dataclass
class Security:
    """What ``install`` set up, kept in ``app.extensions["fstore_security"]``."""

    enabled: bool
    verifier: KeyVerifier
    usage: UsageRecorder


def install(app: Flask, store, *, usage_interval: float = 10.0, start_usage_thread: bool = True) -> Security:
    """Install authentication, authorization, audit, usage and metrics on ``app``."""
    settings = store.settings
    bind = getattr(settings, "bind_host", "")
    enabled = settings.auth_enabled if settings.auth_enabled is not None else not is_local_bind(bind)
    names = _SetNames(store)
    security = Security(enabled=enabled,
                        verifier=KeyVerifier(store.transaction),
                        usage=UsageRecorder(store.engine, interval=usage_interval, resolve_set=names.single_set,
                                            observe=metrics.observe_serving))
    if start_usage_thread:
        security.usage.start()
    app.extensions["fstore_security"] = security
    _document(app, required=enabled)

    def before() -> None:
        ctx = g._get_current_object()
        ctx.fstore_t0 = time.perf_counter()
        ctx.api_key = None
        req = request._get_current_object()
        path = req.path
        if path == "/health" or not security.enabled:
            return
        if path == "/ui" or path.startswith("/ui/"):
            return  # the UI authenticates from its session cookie, with this verifier (fstore.api.ui.views)
        presented = _presented_key(req)
        if path == "/ready" and presented is None:
            return  # orchestrator probes carry no key: the view answers the status alone
        api_key = security.verifier.verify(presented)
        ctx.api_key = api_key
        scope = required_scope(req.method, path)
        if scope is not None and not api_key.has_scope(scope):
            raise Forbidden(f"this API key lacks the scope {scope!r} needed for {req.method} {path}", field="scope")
        if not api_key.grant.unrestricted:
            _check_grant(store, names, api_key.grant)

    # Ahead of the body checks: who is asking comes before what they sent.
    app.before_request_funcs.setdefault(None, []).insert(0, before)

    @app.after_request
    def after(response: Response) -> Response:
        if request.path == "/health":
            return response
        try:
            response = _after(store, security, names, response)
        except Exception:  # noqa: BLE001 - bookkeeping must never turn an answer into an error
            log.exception("after-request bookkeeping failed on %s %s", request.method, request.path)
        return response

    return security


def _document(app: Flask, *, required: bool) -> None:
    """Declare both key forms in ``/openapi.json`` (flask-openapi3 app); required everywhere when auth is on."""
    if not hasattr(app, "security_schemes"):
        return
    app.security_schemes = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    if required:
        app.openapi_extensions = {**(app.openapi_extensions or {}), "security": [{"bearer": []}, {"apiKey": []}]}
    app.spec_json = {}  # built lazily on first request of the document


def _presented_key(req) -> str | None:
    headers = req.headers
    header = headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("missing or invalid API key")
        return value.strip()
    return headers.get("X-API-Key", "").strip() or None


def current_key() -> ApiKey | None:
    """The verified key of this request (None when auth is off)."""
    return g.get("api_key")


def actor_name() -> str:
    """Who the audit log names: the key's owner; with keys off, the ``X-Actor`` header, else ``anonymous``.

    With keys on, a request without a valid key is ``anonymous``: what it claims in ``X-Actor`` is not trusted.
    """
    key = current_key()
    if key is not None:
        return key.actor
    if auth_required():
        return "anonymous"
    return request.headers.get("X-Actor", "").strip()[:200] or "anonymous"


def auth_required() -> bool:
    """True when this app requires API keys."""
    from flask import current_app

    security = current_app.extensions.get("fstore_security")
    return security is not None and security.enabled


# -- grants ----------------------------------------------------------------------------------------

class _SetNames:
    """Feature set names for ids and feature names, cached briefly (grant checks, usage attribution)."""

    def __init__(self, store, ttl: float = 30.0) -> None:
        self._store = store
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[Any, float]] = {}

    def _get(self, kind: str, key: str, load):
        hit = self._cache.get((kind, key))
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        value = load()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(kind, key)] = (value, now)
        return value

    def set_name(self, ref: str) -> str | None:
        """The name of feature set ``ref`` (id or name); None when there is none."""
        if not (ref.isascii() and ref.isdigit()):
            return ref

        def load():
            try:
                return self._store.get_feature_set(ref)["name"]
            except NotFound:
                return None
        return self._get("set", ref, load)

    def version(self, name: str) -> int | None:
        """The current version of feature set ``name`` (the serving path's 404 names it)."""
        try:
            return self._store.get_feature_set(name)["version"]
        except NotFound:
            return None

    def sets_with_feature(self, name: str) -> list[str]:
        def load():
            from fstore.registry import repo

            with self._store.transaction() as s:
                return list(repo.feature_set_names_with_feature(s, name))
        return self._get("feature", name, load)

    def single_set(self, feature: str) -> str:
        """The one set holding a bare feature name (usage attribution); empty when not exactly one."""
        try:
            sets = self.sets_with_feature(feature)
        except Exception:  # noqa: BLE001 - attribution is best effort
            return ""
        return sets[0] if len(sets) == 1 else ""


def _deny(what: str) -> Forbidden:
    """For what the key can see but not change (a set it holds part of): 403 names it."""
    return Forbidden(f"this API key is not granted {what}", field="grant")


# What the key cannot see at all answers exactly as what does not exist (the library's own NotFound messages),
# so a restricted key cannot tell a hidden name from an unknown one.

def _no_set(ref: str) -> NotFound:
    return NotFound(f"feature set {ref!r} not found")


def _no_feature(ref: str, set_name: str | None = None) -> NotFound:
    return NotFound(f"feature {ref!r} not found" + (f" in feature set {set_name}" if set_name else ""))


def _check_set(names: _SetNames, grant: Grant, ref: str, *, whole: bool) -> None:
    name = names.set_name(ref)
    if name is None:
        return  # does not exist: the view answers 404 as for anyone
    if not grant.allows_feature_set(name):
        raise _no_set(ref)
    if whole and not grant.allows_whole_set(name):
        raise _deny(f"feature set {ref!r}")


def _check_feature(names: _SetNames, grant: Grant, feature: str, feature_set: str | None,
                   within: list[str] | None = None, *, whole: bool = False, serving=None) -> None:
    """A feature named bare or as ``set[@v]:name``; a bare name must be granted in every set that could resolve it.

    ``serving(name, set_name)`` makes the 404 of a hidden feature (the serving path words it its own way).
    """
    missing = serving or (lambda name, set_name: _no_feature(name, set_name))
    if ":" in feature:
        head, name = feature.split(":", 1)
        feature_set = head.split("@", 1)[0]
    else:
        name = feature
    if feature_set is not None:
        set_name = names.set_name(feature_set)
        if set_name is None:
            return  # unknown set: the view says so
        if not grant.allows_feature_set(set_name):
            raise _no_set(feature_set)
        if whole and not grant.allows_whole_set(set_name):
            raise _deny(f"feature {feature!r} of feature set {feature_set!r}")
        if not grant.allows_feature(set_name, name):
            raise missing(name, set_name)
        return
    candidates = names.sets_with_feature(name)
    if within is not None:
        candidates = [c for c in candidates if c in within]
    visible = [c for c in candidates if grant.allows_feature(c, name)]
    if candidates and not visible:
        raise missing(name, None)
    if len(visible) < len(candidates) or (whole and not all(grant.allows_whole_set(c) for c in candidates)):
        raise _deny(f"feature {feature!r} (name it as feature_set:feature within your grant)")


def _serving_missing(names: _SetNames, within: list[str] | None):
    """The serving path's own 404 for a feature (``fstore.registry.references.resolve``), for a hidden one."""
    def missing(name: str, set_name: str | None) -> NotFound:
        if set_name is not None:
            return NotFound(f"feature {name} not found in feature set {set_name} (version {names.version(set_name)})",
                            field="features")
        where = f" in feature sets {', '.join(within)}" if within else ""
        return NotFound(f"feature {name} not found{where}", field="features")
    return missing


def _body() -> dict:
    """The request's JSON object for the grant check ({} when it is not one: the body check then refuses it)."""
    if not request.is_json:
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json's own limit; refused here, before anything walks it
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    return body if isinstance(body, dict) else {}


def _check_grant(store, names: _SetNames, grant: Grant) -> None:
    """Refuse a request that names any feature set or feature outside ``grant``: 404 when the key cannot see it
    (as if it did not exist), 403 when it sees it but may not change it."""
    path, method = request.path, request.method
    write = method in _WRITE_METHODS
    body = _body()
    if path.startswith("/api/v1/feature-sets"):
        match = re.match(r"^/api/v1/feature-sets/([^/]+)", path)
        if match:
            _check_set(names, grant, match.group(1), whole=write)
        elif write and isinstance(body.get("name"), str):
            _check_set(names, grant, body["name"], whole=True)
    elif path.startswith("/api/v1/features"):
        match = re.match(r"^/api/v1/features/([^/]+)", path)
        given = request.args.get("feature_set")
        for field in ("feature_set", "feature_set_id"):
            if given is None and isinstance(body.get(field), (str, int)) and not isinstance(body.get(field), bool):
                given = str(body[field])
        if match:
            ref, feature_set = match.group(1), given
            if ref.isascii() and ref.isdigit():
                try:
                    item = store.get_feature(ref)
                except FStoreError:
                    return
                if not grant.allows_feature(item["feature_set"], item["name"]):
                    raise _no_feature(ref)
                ref, feature_set = item["name"], item["feature_set"]
            _check_feature(names, grant, ref, feature_set, whole=write)
        elif write:
            if given is None:
                raise _deny("features outside a named feature set (give feature_set)")
            _check_set(names, grant, given, whole=True)
        elif given:
            _check_set(names, grant, given, whole=False)
    elif path == "/api/v1/push":
        ref = body.get("feature_set")
        name = names.set_name(ref) if isinstance(ref, str) else None
        if name is not None and not grant.allows_feature_set(name):
            # The library's own answer for an unknown set (fstore.registry.runs.feature_set_row), word for word.
            raise NotFound(f"feature set {ref!r} does not exist", field="feature_set")
        if name is not None and not grant.allows_whole_set(name):
            raise _deny(f"feature set {ref!r}")
    elif path.startswith("/api/v1/serving/"):
        sets = body.get("feature_sets")
        sets = [s for s in sets if isinstance(s, str)] if isinstance(sets, list) else None
        # Snapshots without ``features`` answer every feature of the sets: only a grant of the whole set covers that.
        every_feature = path == "/api/v1/serving/snapshots" and not body.get("features")
        for name in sets or ():
            _check_set(names, grant, name, whole=every_feature)
        missing = _serving_missing(names, sets)
        for feature in body.get("features") or () if isinstance(body.get("features"), list) else ():
            if isinstance(feature, str):
                _check_feature(names, grant, feature, None, sets, serving=missing)
    elif (match := re.match(r"^/api/v1/training-sets/([^/]+)", path)):
        try:
            saved = store.get_training_set(match.group(1))
        except FStoreError:
            return  # does not exist or is not a valid name: the view answers as for anyone
        if not readable_with(saved, grant):
            raise NotFound(f"training set {match.group(1)} not found", field="name")


# -- after the view ------------------------------------------------------------------------------

def _after(store, security: Security, names: _SetNames, response: Response) -> Response:
    ctx = g._get_current_object()
    req = request._get_current_object()
    seconds = time.perf_counter() - getattr(ctx, "fstore_t0", time.perf_counter())
    rule = req.url_rule
    endpoint = rule.rule if rule is not None else "<unmatched>"
    status = response.status_code
    error_code = None
    if status >= 400 and response.is_json:
        payload = response.get_json(silent=True)
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error_code = payload["error"].get("code")
    method = req.method
    metrics.observe_request(endpoint, method, status, seconds, error_code)
    key = getattr(ctx, "api_key", None)
    usage_endpoint = USAGE_ENDPOINTS.get(req.path)
    if usage_endpoint is not None and status == 200:
        # One append; parsing, attribution and per-set metrics happen in the usage flusher.
        security.usage.record(endpoint=usage_endpoint, api_key=key.prefix if key else "",
                              body=req.get_json(silent=True) if req.is_json else None,
                              response_body=response.get_data() if usage_endpoint == "online" else None,
                              latency_ms=seconds * 1000.0)
    elif method in _WRITE_METHODS and not _READ_POSTS.match(req.path):
        _audit(store, response, status, error_code)
    if key is not None and not key.grant.unrestricted and status < 300 and response.is_json:
        _filter_response(response, key.grant)
    return response


def _audit(store, response: Response, status: int, error_code: str | None) -> None:
    detail: dict[str, Any] = {"status": status, "method": request.method}
    if error_code:
        payload = response.get_json(silent=True) or {}
        detail["error"] = {"code": error_code, "message": str(payload.get("error", {}).get("message", ""))[:500]}
    elif response.is_json:
        payload = response.get_json(silent=True)
        if isinstance(payload, dict):
            for field in ("id", "name", "version", "status", "prefix"):
                if field in payload and isinstance(payload[field], (str, int)):
                    detail[field] = payload[field]
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    # A push's row is queued for the background writer (push answers within milliseconds; fstore.ops.audit),
    # every other write's is written before the answer leaves.
    write = audit.record_later if request.path == "/api/v1/push" else audit.record
    try:
        write(store.engine, actor=actor_name(), action=f"{request.method} {rule}", target=request.path,
              source_ip=request.remote_addr or "", outcome=audit.outcome_for_status(status), detail=detail)
    except Unavailable as exc:  # the registry is down (its outage is logged once): one line, no traceback
        log.warning("could not write the audit record for %s %s: %s", request.method, request.path, exc.message)
    except Exception:  # noqa: BLE001 - the registry may be the thing that is down; log, do not mask the answer
        log.exception("could not write the audit record for %s %s", request.method, request.path)


def _filter_response(response: Response, grant: Grant) -> None:
    """Drop from a JSON answer every feature set and feature outside ``grant``."""
    payload = response.get_json(silent=True)
    if not isinstance(payload, (dict, list)):
        return
    cleaned, hidden = _clean(payload, grant, request.path)
    if hidden is True:  # the object itself is outside the grant: answered as if it did not exist
        response.set_data(_dumps(NotFound(f"{request.path} not found").to_dict()))
        response.status_code = 404
        return
    if isinstance(cleaned, dict) and isinstance(cleaned.get("items"), list) and isinstance(cleaned.get("total"), int):
        cleaned["total"] = max(len(cleaned["items"]), cleaned["total"] - hidden)
    response.set_data(_dumps(cleaned))


def _dumps(value: Any) -> str:
    from flask import current_app

    return current_app.json.dumps(value)


def _visible(item: dict, grant: Grant, path: str) -> bool:
    kind = item.get("kind")
    name = item.get("name") if isinstance(item.get("name"), str) else None
    fs = item.get("feature_set") if isinstance(item.get("feature_set"), str) else None
    if kind == "entity" or (kind is None and path.startswith("/api/v1/entities")):
        return True
    if kind == "feature" or (kind is None and path.startswith("/api/v1/features") and name and fs):
        return grant.allows_feature(fs, name) if name else True
    if kind == "feature_set" or (kind is None and path.startswith("/api/v1/feature-sets") and name and fs is None):
        return grant.allows_feature_set(name) if name else True
    if fs is not None:
        return grant.allows_feature_set(fs)
    return True


def _clean(payload: Any, grant: Grant, path: str) -> tuple[Any, int | bool]:
    """The payload without what the grant hides, and how many list items were hidden (True: all of it)."""
    if isinstance(payload, dict):
        if path.startswith("/api/v1/training-sets") and "groups" in payload:  # a training set: all or nothing
            return (payload, 0) if readable_with(payload, grant) else (None, True)
        if not _visible(payload, grant, path):
            return None, True
        out = dict(payload)
        hidden = 0
        set_name = out.get("name") if isinstance(out.get("name"), str) and "features" in out else None
        if set_name and isinstance(out["features"], list):
            out["features"] = [f for f in out["features"]
                               if not (isinstance(f, str) and not grant.allows_feature(set_name, f))
                               and not (isinstance(f, dict) and isinstance(f.get("name"), str)
                                        and not grant.allows_feature(set_name, f["name"]))]
        if isinstance(out.get("items"), list):
            kept = []
            for item in out["items"]:
                if isinstance(item, dict):
                    cleaned, gone = _clean(item, grant, path)
                    if gone is True:
                        hidden += 1
                        continue
                    kept.append(cleaned)
                else:
                    kept.append(item)
            out["items"] = kept
        return out, hidden
    if isinstance(payload, list):
        kept = [c for c, gone in (_clean(i, grant, path) if isinstance(i, dict) else (i, 0) for i in payload) if gone is not True]
        return kept, len(payload) - len(kept)
    return payload, 0
