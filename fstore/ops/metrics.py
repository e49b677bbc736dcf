"""Prometheus metrics: request and serving figures recorded in-process, run figures read at scrape time.

Under gunicorn several worker processes each count their own requests. When
``PROMETHEUS_MULTIPROC_DIR`` is set (before this module is first imported —
the gunicorn config does it, see ``prepare_multiprocess_dir``) prometheus-client
keeps each worker's values in memory-mapped files in that folder and a scrape
served by any worker adds them all up. The folder must be emptied when the
master starts, and a dead worker's gauges removed: ``conf/gunicorn.conf.py``
does both (``on_starting``, ``child_exit``); ``prepare_multiprocess_dir`` and
``gunicorn_child_exit`` are the same steps for a gunicorn config of your own.

Materialization and freshness figures are not pushed by other modules: a
collector reads them from the registry (table ``materialization_runs``) at
scrape time, so they are right whichever process ran the job.

Other modules record serving figures through the small functions below
(``observe_online``, ``observe_online_store``); each costs a few microseconds.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
disable_created_metrics()  # the *_created series double the text and say nothing a scrape needs

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REQUESTS = Counter("fstore_http_requests", "HTTP requests by endpoint, method and status",
                   ["endpoint", "method", "status"])
ERRORS = Counter("fstore_http_errors", "HTTP responses with status >= 400 by endpoint and error code",
                 ["endpoint", "code"])
REQUEST_SECONDS = Histogram("fstore_http_request_duration_seconds", "HTTP request latency by endpoint",
                            ["endpoint", "method"], buckets=_LATENCY_BUCKETS)
SERVING_SECONDS = Histogram("fstore_serving_latency_seconds", "Serving latency by endpoint and feature set",
                            ["endpoint", "feature_set"], buckets=_LATENCY_BUCKETS)
CACHE = Counter("fstore_online_cache", "Online serving cache lookups by feature set and result (hit/miss)",
                ["feature_set", "result"])
CACHE_KEYS = Counter("fstore_online_cache_keys", "Online serving cache lookups by entity key and result (hit/miss; "
                     "counted while a cache is on: ONLINE_CACHE)", ["result"])
CACHE_INVALIDATIONS = Counter("fstore_online_cache_invalidations",
                              "Online cache invalidations from Redis (ONLINE_CACHE=tracking) by kind: key (one "
                              "changed key), flush (everything dropped: tracking lost or FLUSHDB)", ["kind"])
ONLINE_STORE_SECONDS = Histogram("fstore_online_store_roundtrip_seconds", "Online store round-trip time",
                                 ["operation"], buckets=_LATENCY_BUCKETS)
SKEW_ROWS = Counter("fstore_online_skew_rows",
                    "Entity rows of sampled online answers compared with historical retrieval at the same instant, "
                    "by feature set and result (same/skewed; ONLINE_SKEW_SAMPLE)", ["feature_set", "result"])
STREAM_LATE = Counter("fstore_stream_late_events",
                      "Pushed or streamed events later than their set's allowed_lateness: not applied to the online "
                      "windows (still returned for the offline table), by feature set", ["feature_set"])
REGISTRY_REFRESH = Counter("fstore_registry_snapshot_refreshes",
                           "Online serving's registry snapshot refreshes by result (ok/failed; failed: answers degraded)",
                           ["result"])


_CHILDREN: dict[tuple, object] = {}


def _child(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: prometheus-client's own lookup costs ~5 µs a call."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        if len(_CHILDREN) > 100_000:  # label values come from routes and names, but stay bounded anyway
            _CHILDREN.clear()
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def observe_late_events(feature_set: str, count: int) -> None:
    """Events of a push or stream batch beyond the set's allowed lateness (``fstore.compute.stream_windows``)."""
    if count:
        _child(STREAM_LATE, feature_set).inc(count)


def observe_request(endpoint: str, method: str, status: int, seconds: float, error_code: str | None = None) -> None:
    """One HTTP request (called by the API's after-request hook)."""
    _child(REQUESTS, endpoint, method, str(status)).inc()
    _child(REQUEST_SECONDS, endpoint, method).observe(seconds)
    if status >= 400:
        _child(ERRORS, endpoint, error_code or str(status)).inc()


def observe_serving(endpoint: str, feature_sets: Iterable[str], seconds: float) -> None:
    """Serving latency of a request, once per feature set it touched (recorded by the usage flusher)."""
    for name in feature_sets:
        _child(SERVING_SECONDS, endpoint, name).observe(seconds)


def observe_online(feature_set: str, seconds: float | None = None, cache_hit: bool = False) -> None:
    """An online lookup of one feature set: cache hit or miss (and its latency when known)."""
    _child(CACHE, feature_set, "hit" if cache_hit else "miss").inc()
    if seconds is not None:
        _child(SERVING_SECONDS, "sdk", feature_set).observe(seconds)


def observe_cache_keys(hits: int, misses: int) -> None:
    """One request's entity-key lookups in the online cache."""
    if hits:
        _child(CACHE_KEYS, "hit").inc(hits)
    if misses:
        _child(CACHE_KEYS, "miss").inc(misses)


def observe_invalidation(keys: int | None) -> None:
    """Redis invalidated ``keys`` cached keys, or (None) everything (``fstore.storage.online.tracking``)."""
    if keys is None:
        _child(CACHE_INVALIDATIONS, "flush").inc()
    elif keys:
        _child(CACHE_INVALIDATIONS, "key").inc(keys)


def cache_totals(source=None) -> dict[str, float]:
    """``{"hits", "misses", "invalidated_keys", "flushes", "hit_rate"}`` since start (every worker's, in
    multiprocess mode); ``hit_rate`` None before any lookup."""
    if source is None:
        source = _multiprocess_collector() if os.environ.get(MULTIPROC_ENV) else _Both(CACHE_KEYS, CACHE_INVALIDATIONS)
    names = {("fstore_online_cache_keys", "hit"): "hits", ("fstore_online_cache_keys", "miss"): "misses",
             ("fstore_online_cache_invalidations", "key"): "invalidated_keys",
             ("fstore_online_cache_invalidations", "flush"): "flushes"}
    totals: dict[str, float] = dict.fromkeys(names.values(), 0)
    for family in source.collect():
        for sample in family.samples:
            label = sample.labels.get("result", sample.labels.get("kind"))
            name = names.get((family.name, label))
            if name is not None and sample.name.endswith("_total"):
                totals[name] += sample.value
    looked = totals["hits"] + totals["misses"]
    totals["hit_rate"] = totals["hits"] / looked if looked else None
    return totals


def online_cache(mode: str) -> dict:
    """The online cache's figures for ``/monitoring/statistics``: ``ONLINE_CACHE`` and ``cache_totals``."""
    totals = cache_totals()
    return {"mode": mode, **{k: (v if k == "hit_rate" else int(v)) for k, v in totals.items()}}


class _Both:
    """Two collectors as one ``collect()`` (``cache_totals`` in a single process)."""

    def __init__(self, *collectors) -> None:
        self._collectors = collectors

    def collect(self):
        for collector in self._collectors:
            yield from collector.collect()


class CacheHitRateCollector:
    """``fstore_online_cache_hit_rate``: hits / lookups of the online cache by entity key, derived at scrape."""

    def collect(self):
        gauge = GaugeMetricFamily("fstore_online_cache_hit_rate", "Fraction of online entity-key lookups answered "
                                  "by the in-process cache since start (ONLINE_CACHE)")
        rate = cache_totals()["hit_rate"]
        if rate is not None:
            gauge.add_metric([], rate)
        yield gauge


def observe_online_store(seconds: float, operation: str = "read") -> None:
    """One round trip to the online store (Redis or embedded)."""
    _child(ONLINE_STORE_SECONDS, operation).observe(seconds)


def observe_skew(feature_set: str, compared: int, skewed: int) -> None:
    """One skew check of a feature set (``fstore.serving.skew``): rows compared, rows where some feature differed."""
    _child(SKEW_ROWS, feature_set, "skewed").inc(skewed)
    _child(SKEW_ROWS, feature_set, "same").inc(compared - skewed)


def skew_totals(source=None) -> dict[str, dict[str, float]]:
    """Per feature set ``{"compared", "skewed", "rate"}`` from the skew counters (every worker's, in
    multiprocess mode)."""
    if source is None:
        source = _multiprocess_collector() if os.environ.get(MULTIPROC_ENV) else SKEW_ROWS
    totals: dict[str, dict[str, float]] = {}
    for family in source.collect():
        if family.name != "fstore_online_skew_rows":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            entry = totals.setdefault(sample.labels["feature_set"], {"compared": 0, "skewed": 0})
            entry["compared"] += sample.value
            if sample.labels["result"] == "skewed":
                entry["skewed"] += sample.value
    for entry in totals.values():
        entry["rate"] = entry["skewed"] / entry["compared"] if entry["compared"] else None
    return totals


def online_skew(sample: float, *, feature_set: str | None = None, allowed: Callable[[str], bool] | None = None) -> dict:
    """The sampled skew check's figures for ``/monitoring/statistics`` (``fstore.serving.skew``,
    ``ONLINE_SKEW_SAMPLE`` = ``sample``): per feature set the entity rows compared with historical retrieval
    since the server started, those that differed, and the rate."""
    items = [{"feature_set": name, "compared": int(e["compared"]), "skewed": int(e["skewed"]), "skew_rate": e["rate"]}
             for name, e in sorted(skew_totals().items())
             if (feature_set is None or name == feature_set) and (allowed is None or allowed(name))]
    return {"sample": sample, "items": items}


def _multiprocess_collector():
    from prometheus_client import multiprocess

    return multiprocess.MultiProcessCollector(CollectorRegistry())


class SkewRateCollector:
    """``fstore_online_skew_rate``: skewed / compared rows per feature set, derived from the counters at scrape."""

    def collect(self):
        gauge = GaugeMetricFamily("fstore_online_skew_rate", "Fraction of sampled online entity rows that differ "
                                  "from historical retrieval at the same instant", labels=["feature_set"])
        for name, entry in skew_totals().items():
            if entry["rate"] is not None:
                gauge.add_metric([name], entry["rate"])
        yield gauge


def observe_registry_refresh(*, ok: bool) -> None:
    """One background refresh of serving's registry snapshot (``fstore.registry.snapshot``)."""
    _child(REGISTRY_REFRESH, "ok" if ok else "failed").inc()


# -- scrape-time figures from the registry ----------------------------------------------------

class RegistryCollector:
    """Materialization runs, rows, durations and freshness, read from the registry per scrape."""

    def __init__(self, store: "StoreContext", allowed: Callable[[str], bool] | None = None) -> None:
        self._store = store
        self._allowed = allowed

    def collect(self):
        from sqlalchemy import func, select

        from fstore.ops.monitoring import data_freshness
        from fstore.registry.models import FeatureSetRow, MaterializationRunRow as Run

        runs = CounterMetricFamily("fstore_materialization_runs", "Materialization runs by feature set and status",
                                   labels=["feature_set", "status"])
        rows = CounterMetricFamily("fstore_materialization_rows", "Rows handled by materialization runs",
                                   labels=["feature_set", "kind"])
        seconds = CounterMetricFamily("fstore_materialization_duration_seconds",
                                      "Total seconds spent in finished materialization runs", labels=["feature_set"])
        last_duration = GaugeMetricFamily("fstore_materialization_last_duration_seconds",
                                          "Duration of the newest finished run", labels=["feature_set"])
        with self._store.transaction() as s:
            stats = s.execute(
                select(FeatureSetRow.name, Run.status, func.count(), func.coalesce(func.sum(Run.rows_read), 0),
                       func.coalesce(func.sum(Run.rows_written), 0), func.coalesce(func.sum(Run.rows_rejected), 0),
                       func.coalesce(func.sum(Run.online_rows), 0), func.coalesce(func.sum(Run.duration_s), 0.0),
                       func.coalesce(func.sum(Run.late_dropped), 0))
                .join(FeatureSetRow, FeatureSetRow.id == Run.feature_set_id)
                .group_by(FeatureSetRow.name, Run.status)).all()
            newest = s.execute(
                select(FeatureSetRow.name, Run.duration_s, Run.finished_at)
                .join(FeatureSetRow, FeatureSetRow.id == Run.feature_set_id)
                .where(Run.finished_at.is_not(None)).order_by(Run.finished_at)).all()
        totals: dict[str, list[float]] = {}
        for name, status, count, read, written, rejected, online, duration, late in stats:
            if self._allowed is not None and not self._allowed(name):
                continue
            runs.add_metric([name, status], count)
            t = totals.setdefault(name, [0, 0, 0, 0, 0.0, 0])
            for i, value in enumerate((read, written, rejected, online, duration, late)):
                t[i] += value
        for name, (read, written, rejected, online, duration, late) in totals.items():
            # late_dropped: events that arrived later than the set's allowed_lateness, counted, not processed
            for kind, value in (("read", read), ("written", written), ("rejected", rejected), ("online", online),
                                ("late_dropped", late)):
                rows.add_metric([name, kind], value)
            seconds.add_metric([name], duration)
        latest = {name: duration for name, duration, _ in newest if duration is not None}
        for name, duration in latest.items():
            if self._allowed is None or self._allowed(name):
                last_duration.add_metric([name], duration)
        yield from (runs, rows, seconds, last_duration)
        yield _alert_metrics(self._store, self._allowed)
        yield from _cost_metrics(self._store, self._allowed)
        yield from _freshness_metrics(data_freshness(self._store, allowed=self._allowed))


def _alert_metrics(store: "StoreContext", allowed: Callable[[str], bool] | None):
    """Anomaly alerts recorded by runs (``fstore.ops.quality``), by feature set, feature, metric and severity."""
    from sqlalchemy import func, select

    from fstore.registry.models import AlertRow

    alerts = CounterMetricFamily("fstore_quality_alerts", "Anomalies found in run-level series (robust z-score)",
                                 labels=["feature_set", "feature", "metric", "severity"])
    with store.transaction() as s:
        counted = s.execute(select(AlertRow.feature_set, AlertRow.feature, AlertRow.metric, AlertRow.severity,
                                   func.count()).group_by(AlertRow.feature_set, AlertRow.feature, AlertRow.metric,
                                                          AlertRow.severity)).all()
    for name, feature, metric, severity, count in counted:
        if allowed is None or allowed(name):
            alerts.add_metric([name, feature, metric, severity], count)
    return alerts


def _cost_metrics(store: "StoreContext", allowed: Callable[[str], bool] | None):
    """What runs used (counters over every succeeded run), what each set keeps (gauges, measured at most every
    ``fstore.ops.cost.SIZES_MAX_AGE`` seconds) and, with ``COST_PRICES``, the money of the last 30 days."""
    from datetime import datetime

    from fstore.ops.cost import SIZES_MAX_AGE, cost_report, run_totals

    cpu = CounterMetricFamily("fstore_run_cpu_seconds", "CPU seconds of succeeded materialization runs "
                              "(Spark executorCpuTime; DuckDB process CPU)", labels=["feature_set"])
    moved = CounterMetricFamily("fstore_run_bytes", "Bytes of succeeded materialization runs by kind "
                                "(read: source files; written: Delta commits; shuffle_read/shuffle_write: Spark)",
                                labels=["feature_set", "kind"])
    for name, entry in run_totals(store, datetime(1970, 1, 1)).items():
        if allowed is None or allowed(name):
            cpu.add_metric([name], entry["cpu_seconds"])
            for kind in ("read", "written"):
                moved.add_metric([name, kind], entry[f"bytes_{kind}"])
            for kind in ("shuffle_read", "shuffle_write"):
                moved.add_metric([name, kind], entry[f"{kind}_bytes"])
    offline = GaugeMetricFamily("fstore_feature_set_offline_bytes", "Bytes of the current version of the set's "
                                "offline Delta table", labels=["feature_set"])
    online = GaugeMetricFamily("fstore_feature_set_online_bytes", "Memory the set takes in the online store "
                               "(Redis MEMORY USAGE sampled × keys; embedded: file bytes by share)", labels=["feature_set"])
    keys = GaugeMetricFamily("fstore_feature_set_online_keys", "Keys of the set in the online store",
                             labels=["feature_set"])
    money = GaugeMetricFamily("fstore_cost_30d", "Money of the last 30 days by part (COST_PRICES)",
                              labels=["feature_set", "part"])
    report = cost_report(store, 30, allowed=allowed, sizes_max_age=SIZES_MAX_AGE)
    for item in report["items"]:
        name = item["feature_set"]
        for family, field in ((offline, "offline_bytes"), (online, "online_bytes"), (keys, "online_keys")):
            if item.get(field) is not None:
                family.add_metric([name], item[field])
        for part, value in (item["money"] or {}).items():
            money.add_metric([name, part], value)
    return cpu, moved, offline, online, keys, money


def _freshness_metrics(freshness: dict):
    lag = GaugeMetricFamily("fstore_feature_set_offline_lag_seconds",
                            "Seconds between now and the newest event in the offline store", labels=["feature_set"])
    last = GaugeMetricFamily("fstore_feature_set_last_success_timestamp_seconds",
                             "Unix time of the newest succeeded run", labels=["feature_set"])
    late = GaugeMetricFamily("fstore_feature_set_late", "1 when the set missed its schedule", labels=["feature_set"])
    from datetime import datetime, timezone

    for item in freshness["items"]:
        name = item["feature_set"]
        if item["offline_lag_seconds"] is not None:
            lag.add_metric([name], item["offline_lag_seconds"])
        if item["last_success_at"]:
            at = datetime.fromisoformat(item["last_success_at"].rstrip("Z")).replace(tzinfo=timezone.utc)
            last.add_metric([name], at.timestamp())
        if item["late"] is not None:
            late.add_metric([name], 1.0 if item["late"] else 0.0)
    stream = GaugeMetricFamily("fstore_stream_freshness_seconds",
                               "Event time to online visibility of a streaming set's events in the last minute, "
                               "by quantile (0.5, 0.99)", labels=["feature_set", "quantile"])
    for item in freshness["items"]:
        measured = item.get("stream") or {}
        for quantile, key in (("0.5", "p50_seconds"), ("0.99", "p99_seconds")):
            if measured.get(key) is not None:
                stream.add_metric([item["feature_set"], quantile], measured[key])
    return lag, last, late, stream


def render(store: "StoreContext | None" = None, *, allowed: Callable[[str], bool] | None = None) -> tuple[bytes, str]:
    """The Prometheus exposition text (all workers' figures in multiprocess mode) and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (REQUESTS, ERRORS, REQUEST_SECONDS, SERVING_SECONDS, CACHE, ONLINE_STORE_SECONDS, SKEW_ROWS,
                          STREAM_LATE, CACHE_KEYS, CACHE_INVALIDATIONS):
            registry.register(collector)
    registry.register(SkewRateCollector())
    registry.register(CacheHitRateCollector())
    if store is not None:
        registry.register(RegistryCollector(store, allowed))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def request_counts(text: bytes) -> dict[str, dict[str, float]]:
    """``{endpoint: {"requests", "errors"}}`` from exposition text (``render``): requests per endpoint, and those
    answered with a status >= 400 (what the monitoring UI charts as error rates)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        if family.name != "fstore_http_requests":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            entry = counts.setdefault(sample.labels.get("endpoint", ""), {"requests": 0.0, "errors": 0.0})
            entry["requests"] += sample.value
            if sample.labels.get("status", "").isdigit() and int(sample.labels["status"]) >= 400:
                entry["errors"] += sample.value
    return counts


_FEATURE_SET_LABEL = re.compile(r'feature_set="((?:[^"\\]|\\.)*)"')


def filter_text(text: bytes, allowed: Callable[[str], bool]) -> bytes:
    """Exposition text without the samples of feature sets ``allowed`` refuses (for a restricted key)."""
    kept = []
    for line in text.decode("utf-8").splitlines():
        match = _FEATURE_SET_LABEL.search(line) if not line.startswith("#") else None
        if match is None or allowed(match.group(1)):
            kept.append(line)
    return ("\n".join(kept) + "\n").encode("utf-8")


# -- gunicorn ---------------------------------------------------------------------------------

def prepare_multiprocess_dir(path: str | Path) -> str:
    """Empty (or create) the multiprocess folder and export it; call in the gunicorn master before workers load.

    Stale files from a previous server would otherwise be added to the new figures.
    """
    folder = Path(path)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return str(folder)


def gunicorn_child_exit(server, worker) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges from the shared folder."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
