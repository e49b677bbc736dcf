"""Anomaly detection on a feature set's run-level series, alerts and the alert webhook.

Each run, before it writes, compares its figures with the same figures of the set's last ``window``
succeeded runs (its ``anomaly_policy``, default 20): the rows it writes, and per feature the null rate and
the mean; plus the freshness lag (seconds from the newest event the run computed to the run's start).
The score is a robust z-score, ``(value - median) / (1.4826 · MAD)``: the median and the median absolute
deviation ignore the odd bad run that would inflate a mean and standard deviation. The scale is floored at
5% of the median (and 1e-6), so a series that never moved (a null rate of 0 in every run) alerts on
any clear change instead of dividing by zero, and a row count wobbling by a few rows does not.
Nothing is scored before ``min_runs`` runs exist (default 5).

``|z| >= warning_z`` (3.5) is a warning, ``>= critical_z`` (6) critical. Each is an alert row in the
registry (``quality_alerts``, counted by ``fstore_quality_alerts`` in /monitoring/metrics) and, when
``ALERT_WEBHOOK_URL`` is set, one JSON POST per run listing them (3 tries, 1 s apart, 5 s timeout each;
a webhook that stays down is logged, never fails the run). With ``on_anomaly: fail`` a critical anomaly
fails the run: nothing is written, the error names the figures.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fstore.core.errors import ComputeError
from fstore.definitions.model import AnomalyPolicy
from fstore.registry import quality as records

if TYPE_CHECKING:
    from fstore.core.context import StoreContext
    from fstore.core.settings import Settings
    from fstore.definitions.model import FeatureSetVersion

log = logging.getLogger(__name__)

WEBHOOK_TRIES = 3
WEBHOOK_WAIT = 1.0
WEBHOOK_TIMEOUT = 5.0


def robust_z(history: list[float], value: float) -> tuple[float, float]:
    """``(median, z)`` of ``value`` against ``history`` (median/MAD, scale floored; see the module)."""
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    scale = max(1.4826 * mad, 0.05 * abs(median), 1e-6)
    return median, (value - median) / scale


def figures(rows: int, profile: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    """The run's series values: ``{(feature or "", metric): value}``."""
    out: dict[tuple[str, str], float] = {("", "row_count"): float(rows)}
    if not profile:
        return out
    if profile.get("freshness_lag_seconds") is not None:
        out[("", "freshness_lag")] = float(profile["freshness_lag_seconds"])
    for name, p in profile.get("features", {}).items():
        if p.get("null_rate") is not None:
            out[(name, "null_rate")] = float(p["null_rate"])
        if isinstance(p.get("mean"), (int, float)):
            out[(name, "mean")] = float(p["mean"])
    return out


def add_freshness(profile: dict[str, Any], started: datetime) -> None:
    """Put the run's freshness lag (its start minus its newest event, in seconds) in its profile."""
    newest = profile.get("newest_event")
    if newest:
        at = datetime.fromisoformat(newest.rstrip("Z"))
        at = at if at.tzinfo is None else at.astimezone(timezone.utc).replace(tzinfo=None)
        profile["freshness_lag_seconds"] = max(0.0, round((started - at).total_seconds(), 3))


def check_run(store: "StoreContext", fsv: "FeatureSetVersion", run_id: str, rows: int,
              profile: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Score this run against the set's history; record alerts, call the webhook; raise ``ComputeError`` on a
    critical anomaly when the set's policy is ``fail``. Returns the alerts."""
    policy = fsv.feature_set.anomaly_policy or AnomalyPolicy()
    with store.transaction() as s:
        history = records.run_profiles(s, fsv.name, limit=policy.window)
    if len(history) < policy.min_runs:
        return []
    past = [figures(h["rows_written"] or 0, h["profile"]) for h in history]
    found = []
    for key, value in figures(rows, profile).items():
        series = [p[key] for p in past if key in p]
        if len(series) < policy.min_runs:
            continue
        median, z = robust_z(series, value)
        severity = "critical" if abs(z) >= policy.critical_z else "warning" if abs(z) >= policy.warning_z else None
        if severity:
            found.append({"feature_set": fsv.name, "feature": key[0], "run_id": run_id, "metric": key[1],
                          "value": value, "median": median, "score": round(z, 3), "severity": severity})
    if not found:
        return []
    with store.transaction() as s:
        alerts = [records.add_alert(s, **a) for a in found]
    for a in alerts:
        log.warning("anomaly in run %s of %s: %s%s = %s (median %s, z %.1f, %s)", run_id, fsv.name,
                    f"{a['feature']}." if a["feature"] else "", a["metric"], a["value"], a["median"], a["score"],
                    a["severity"])
    critical = [a for a in alerts if a["severity"] == "critical"]
    failing = policy.on_anomaly == "fail" and bool(critical)
    notify(store.settings, {"event": "anomaly", "feature_set": fsv.name, "run_id": run_id,
                            "run_failed": failing, "alerts": alerts})
    if failing:
        detail = ", ".join(f"{a['feature'] + '.' if a['feature'] else ''}{a['metric']} = {a['value']:g} "
                           f"(median {a['median']:g}, z {a['score']:g})" for a in critical)
        raise ComputeError(f"run {run_id} of {fsv.name} found critical anomalies: {detail}; its anomaly_policy is "
                           "on_anomaly: fail, so nothing was written")
    return alerts


def notify(settings: "Settings", payload: dict[str, Any]) -> bool:
    """POST ``payload`` as JSON to ``ALERT_WEBHOOK_URL`` (if set), retried; True when it was accepted (2xx)."""
    url = settings.alert_webhook_url
    if not url:
        return False
    body = json.dumps(payload, default=str).encode("utf-8")
    for attempt in range(1, WEBHOOK_TRIES + 1):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "fstore-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:  # noqa: S310 - configured URL
                if 200 <= response.status < 300:
                    return True
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            problem = str(exc)
        log.warning("alert webhook %s: try %d of %d failed: %s", url, attempt, WEBHOOK_TRIES, problem)
        if attempt < WEBHOOK_TRIES:
            time.sleep(WEBHOOK_WAIT)
    return False

