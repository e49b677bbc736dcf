"""The UI's pages. Each one reads through the library functions the REST API uses and renders a template.

Authentication happens in ``authenticate`` (before every page): with keys on, the key from the session
cookie is verified by the API's ``KeyVerifier`` and must hold ``read_registry``; its grant then filters
every list and turns a hidden feature set into the same 404 as an unknown one.
"""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from fstore.api.common import feature_filter, get_store, grant
from fstore.api.ui import charts, lineage
from fstore.api.ui import session as ui_session
from fstore.core.errors import FStoreError, Forbidden, InvalidDefinition, NotFound, Unauthorized
from fstore.registry.models import utcnow

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

_OPEN_ENDPOINTS = {"ui.login", "ui.static"}
STAGES = ("read_compute", "validate", "offline", "online")


# -- authentication ------------------------------------------------------------------------------

def _security():
    return current_app.extensions["fstore_security"]


@bp.before_request
def authenticate():
    g.api_key = None
    if not _security().enabled or request.endpoint in _OPEN_ENDPOINTS:
        return None
    key = ui_session.remembered()
    if key is None:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    try:
        api_key = _security().verifier.verify(key)
    except Unauthorized:  # revoked or expired since the login
        ui_session.forget()
        return redirect(url_for("ui.login", expired=1))
    if not api_key.has_scope(ui_session.SCOPE):
        raise Forbidden(f"this API key lacks the scope {ui_session.SCOPE!r} the UI needs", field="scope")
    g.api_key = api_key
    return None


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path under /ui only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and not urlsplit(target).netloc \
            and "\\" not in target:
        return target
    return url_for("ui.registry")


def _same_origin() -> bool:
    """A form post from this site (browsers send Origin on POST; none is sent by non-browser clients)."""
    origin = request.headers.get("Origin")
    return origin is None or origin == request.host_url.rstrip("/")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form: one API key, checked as the API checks it, kept in the session cookie."""
    if not _security().enabled:
        return redirect(url_for("ui.registry"))
    error, status = None, 200
    if not ui_session.can_log_in():
        error, status = ("The UI cannot keep a login: set UI_SESSION_SECRET (32 characters or more) or "
                         "FSTORE_SECRET_KEY on the server and restart it."), 503
    elif request.method == "POST":
        if not _same_origin():
            raise Forbidden("a login must come from this site's own form", field="Origin")
        key = request.form.get("key", "").strip()
        try:
            api_key = _security().verifier.verify(key or None)
            if not api_key.has_scope(ui_session.SCOPE):
                raise Forbidden("this API key lacks the scope 'read_registry' the UI needs", field="scope")
        except (Unauthorized, Forbidden) as exc:
            error, status = exc.message, exc.http_status
        else:
            ui_session.remember(key)
            return redirect(_safe_next(request.form.get("next")))
    elif request.args.get("expired"):
        error = "Your key is no longer valid (revoked or expired): log in again."
    return render_template("login.html", error=error, next=request.values.get("next", "")), status


@bp.post("/logout")
def logout():
    ui_session.forget()
    return redirect(url_for("ui.login"))


@bp.errorhandler(FStoreError)
def fstore_error(exc: FStoreError):
    return render_template("error.html", error=exc), exc.http_status


@bp.after_request
def headers(response):
    """No script at all, nothing from elsewhere, never framed, never cached (pages show a key's view)."""
    response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                                   "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def _context():
    return {"current_key": g.get("api_key"), "auth_on": _security().enabled, "fmt": charts.fmt}


# -- helpers -------------------------------------------------------------------------------------

def _can_admin() -> bool:
    key = g.get("api_key")
    return key is None or key.has_scope("admin")


def _visible_set(ref: str, *, version: int | None = None) -> dict:
    """A feature set as the API's GET answers it for this key: hidden == unknown (404), hidden features dropped."""
    limit = grant()
    if limit is not None and not (ref.isascii() and ref.isdigit()) and not limit.allows_feature_set(ref):
        raise NotFound(f"feature set {ref!r} not found")
    item = get_store().get_feature_set(ref, version=version)
    if limit is not None:
        if not limit.allows_feature_set(item["name"]):
            raise NotFound(f"feature set {ref!r} not found")
        item["features"] = [f for f in item["features"] if limit.allows_feature(item["name"], f)]
    return item


def _features(name: str) -> list[dict]:
    limit = grant()
    items = get_store().list_features(feature_set=name, limit=500, grant=limit)["items"]
    return [f for f in items if limit is None or limit.allows_feature(name, f["name"])]


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise InvalidDefinition(f"{name} must be a version number", field=name)
    return int(value)


# -- registry ------------------------------------------------------------------------------------

@bp.get("/")
def index():
    return redirect(url_for("ui.registry"))


@bp.get("/registry")
def registry():
    """Feature sets, or search results for ``q`` (names, descriptions, tags, owners), filtered by tag/owner."""
    store, limit = get_store(), grant()
    q = request.args.get("q", "").strip()[:200]
    owner = request.args.get("owner", "").strip()[:200] or None
    tag = request.args.get("tag", "").strip()[:200] or None
    if q and not (owner or tag):
        results = store.search(q, limit=100, grant=limit)["items"]
        if limit is not None:
            results = [r for r in results if r.get("kind") == "entity"
                       or (r.get("kind") == "feature_set" and limit.allows_feature_set(r["name"]))
                       or (r.get("kind") == "feature" and limit.allows_feature(r.get("feature_set"), r["name"]))]
    else:
        results = [{"kind": "feature_set", **item} for item in
                   store.list_feature_sets(query=q or None, owner=owner, tag=tag, limit=500, grant=limit)["items"]]
    return render_template("registry.html", q=q, owner=owner or "", tag=tag or "", results=results)


@bp.get("/sets/<ref>")
def feature_set(ref: str):
    """One feature set: definition, features, versions (pick two to diff), the compiled SQL."""
    version = _int_arg("version")
    item = _visible_set(ref, version=version)
    store = get_store()
    versions = store.feature_set_versions(item["name"])
    sql = store.compile(item["name"], version=version)
    return render_template("set.html", fs=item, features=_features(item["name"]), versions=versions, sql=sql,
                           tab="overview", version=version)


@bp.get("/sets/<ref>/diff")
def diff(ref: str):
    """What changed between versions ``a`` and ``b``: the set's fields, and each feature whose version moved."""
    from fstore.registry.repo import diff as spec_diff

    item = _visible_set(ref)
    name, limit = item["name"], grant()
    versions = {v["version"]: v for v in get_store().feature_set_versions(name)}
    a, b = _int_arg("a") or 1, _int_arg("b") or item["version"]
    for field_name, number in (("a", a), ("b", b)):
        if number not in versions:
            raise NotFound(f"version {number} of feature set {name!r} not found", field=field_name)
    old, new = versions[a], versions[b]
    fields = spec_diff(old["spec"], new["spec"])
    feature_changes = []
    for feature in sorted(set(old["features"]) | set(new["features"])):
        if limit is not None and not limit.allows_feature(name, feature):
            continue
        va, vb = old["features"].get(feature), new["features"].get(feature)
        if va == vb:
            continue
        specs = {v["version"]: v["spec"] for v in get_store().feature_versions(feature, feature_set=name)} \
            if va is not None and vb is not None else {}
        changes = spec_diff(specs.get(va, {}), specs.get(vb, {})) if specs else []
        feature_changes.append({"name": feature, "old": va, "new": vb, "changes": changes})
    return render_template("diff.html", fs=item, a=a, b=b, fields=fields, features=feature_changes,
                           versions=sorted(versions), tab="overview")


@bp.get("/sets/<ref>/lineage")
def lineage_page(ref: str):
    """Source → feature set → features → composite features → training sets."""
    item = _visible_set(ref)
    training = get_store().list_training_sets(limit=500, grant=grant())["items"]
    graph = lineage.graph(item, _features(item["name"]), training)
    return render_template("lineage.html", fs=item, graph=graph, tab="lineage")


@bp.get("/training-sets/<name>")
def training_set(name: str):
    """A saved training set: what it read (sets, versions, features), and the feature importances recorded
    for it (``fstore analyze importance`` or an experiment tracker), one chart per label and method."""
    from fstore.registry.training_sets import readable_with

    saved = get_store().get_training_set(name)
    limit = grant()
    if limit is not None and not readable_with(saved, limit):
        raise NotFound(f"training set {name} not found", field="name")  # hidden == unknown, as the API
    importance = [charts.bars(f"{i['label']} · {i['method']}", [(s["feature"], s["score"]) for s in i["scores"][:30]])
                  for i in saved.get("importances") or ()]
    return render_template("training_set.html", ts=saved, importance=importance)


# -- materialization -----------------------------------------------------------------------------

def _freshness(names: list[str] | None = None) -> list[dict]:
    from fstore.ops import monitoring

    limit = grant()
    items = monitoring.data_freshness(get_store(), allowed=limit.allows_feature_set if limit else None)["items"]
    return [i for i in items if names is None or i["feature_set"] in names]


def _next_run(schedule: str | None):
    from fstore.compute.scheduler import next_tick

    return next_tick(schedule, utcnow()) if schedule else None


def _covered(runs: list[dict]) -> list[tuple[str, str]]:
    """The event-time ranges succeeded runs wrote, merged where they touch (what is materialized)."""
    spans = sorted((r["start"], r["end"]) for r in runs if r.get("status") == "succeeded" and r.get("start"))
    merged: list[list[str]] = []
    for start, end in spans:  # ISO 8601 UTC strings of one format compare as times
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


@bp.get("/sets/<ref>/runs")
def runs(ref: str):
    """Runs of one set: status, stage timings, rows read/written/rejected, Delta version, quality report."""
    item = _visible_set(ref)
    items = get_store().list_runs(item["name"], limit=200)["items"]
    shown = items[:30]
    timing = charts.stacked("Stage timings per run (seconds)",
                            [(f"{r['id'][:8]} {(r.get('created_at') or r.get('start') or '')[:16]}", r.get("stages") or {})
                             for r in reversed(shown)], STAGES)
    volume = charts.lines("Rows per run", [(r.get("created_at") or "")[:16] for r in reversed(shown)],
                          {"read": [r.get("rows_read") for r in reversed(shown)],
                           "written": [r.get("rows_written") for r in reversed(shown)],
                           "rejected": [r.get("rows_rejected") for r in reversed(shown)]})
    freshness = next(iter(_freshness([item["name"]])), None)
    return render_template("runs.html", fs=item, runs=shown, total=len(items), timing=timing, volume=volume,
                           covered=_covered(items), freshness=freshness,
                           next_run=_next_run(item.get("materialization_schedule")), tab="runs")


@bp.get("/materialization")
def materialization():
    """Every visible set: latest run, watermark, ranges covered, next scheduled run."""
    limit = grant()
    sets = get_store().list_feature_sets(limit=500, grant=limit)["items"]
    rows = []
    for fs in sets:
        runs_ = get_store().list_runs(fs["name"], limit=200)["items"]
        rows.append({"fs": fs, "last": runs_[0] if runs_ else None, "covered": _covered(runs_),
                     "next_run": _next_run(fs.get("materialization_schedule")), "runs": len(runs_)})
    return render_template("materialization.html", rows=rows)


# -- health --------------------------------------------------------------------------------------

def _errors_by_endpoint() -> list[tuple[str, float]]:
    from fstore.ops import metrics

    text, _ = metrics.render()  # the request counters only (no feature set in them)
    return [(endpoint, counts["errors"] / counts["requests"])
            for endpoint, counts in sorted(metrics.request_counts(text).items())
            if counts["requests"] and not endpoint.startswith("/ui/")]  # the API's endpoints, not these pages


@bp.get("/health")
def health():
    """Freshness (late first), online coverage, serving latency and cache hit rate over time, usage, error rates."""
    from fstore.ops import usage

    freshness = sorted(_freshness(), key=lambda i: (not i.get("late"), -(i.get("offline_lag_seconds") or 0)))
    lag = charts.bars("Offline lag (hours behind now)",
                      [(i["feature_set"], (i["offline_lag_seconds"] or 0) / 3600 if i.get("offline_lag_seconds") is not None
                        else None) for i in freshness], unit="h",
                      colors=[charts.PALETTE[3] if i.get("late") else charts.PALETTE[2] for i in freshness])
    context = {"freshness": freshness, "lag": lag, "usage_allowed": _can_admin(), "errors": charts.bars(
        "Error rate per API endpoint (this server since it started)", _errors_by_endpoint(), unit="%", maximum=1.0)}
    if context["usage_allowed"]:  # /monitoring/usage needs the admin scope in the API: the same here
        limit = grant()
        allowed = limit.allows_feature_set if limit else None
        days = min(max(_int_arg("days") or 1, 1), 90)
        start = utcnow() - timedelta(days=days)
        granularity = "minute" if days == 1 else "hour"
        _security().usage.flush()  # this worker's unflushed requests too, as GET /monitoring/usage does
        with get_store().transaction() as s:
            by_time = usage.query_usage(s, start=start, level="key", granularity=granularity, allowed_set=allowed)
            by_key = usage.query_usage(s, start=start, level="key", allowed_set=allowed)["items"]
            by_set = usage.query_usage(s, start=start, level="feature_set", allowed_set=allowed)["items"]
            by_feature = usage.query_usage(s, start=start, level="feature", allowed_set=allowed)["items"]
        periods = sorted({i["period"] for i in by_time["items"]})
        per_period = {p: [i for i in by_time["items"] if i["period"] == p] for p in periods}

        def worst(period: str, pick) -> float | None:
            values = [pick(i) for i in per_period[period] if pick(i) is not None]
            return max(values) if values else None

        labels = [p[5:16].replace("T", " ") for p in periods]
        context.update(
            days=days,
            latency=charts.lines("Serving latency, ms (highest over keys per period)", labels, {
                q: [worst(p, lambda i, q=q: i["latency_ms"][q]) for p in periods] for q in ("p50", "p95", "p99")},
                unit="ms"),
            cache=charts.lines("Cache hit rate", labels, {"hit rate": [worst(p, lambda i: i["cache_hit_rate"])
                                                                      for p in periods]}, unit="%"),
            by_key=charts.bars("Requests per API key", [(f"{i['api_key'] or '(no key)'} {i['endpoint']}", i["requests"])
                                                        for i in by_key]),
            by_set=charts.bars("Requests per feature set", [(f"{i['feature_set']} {i['endpoint']}", i["requests"])
                                                            for i in by_set]),
            coverage=charts.bars("Online coverage per feature (share of entities with a value)",
                                 [(f"{i['feature_set']}:{i['feature']}", i.get("coverage")) for i in by_feature
                                  if i["endpoint"] == "online"], unit="%", maximum=1.0))
    return render_template("health.html", **context)


# -- statistics ----------------------------------------------------------------------------------

@bp.get("/statistics")
def statistics():
    """Per feature, from the runs' quality reports (``fstore.ops.monitoring.statistics``): null rate, range, mean."""
    from fstore.ops import monitoring

    days = min(max(_int_arg("days") or 30, 1), 3660)
    name = request.args.get("feature_set", "").strip()[:200] or None
    with get_store().transaction() as s:
        report = monitoring.statistics(s, days=days, feature_set=name, allowed=feature_filter(grant()))
    sets = []
    for entry in report["items"]:
        features = entry["features"]
        sets.append({**entry, "null_rate": charts.bars(
            f"{entry['feature_set']}: null rate per feature over {entry['runs']} run(s)",
            [(f["feature"], f.get("null_rate")) for f in features], unit="%", maximum=1.0),
            "non_null": charts.bars(f"{entry['feature_set']}: non-null values per feature over the period",
                                  [(f["feature"], (f.get("count") or 0) - (f.get("nulls") or 0)) for f in features])})
    return render_template("statistics.html", sets=sets, days=days, feature_set=name or "")
