"""Cost per feature set: what its runs used (recorded per run by ``fstore.compute.cost``) and what it keeps.

``cost_report(store, days)`` adds up the succeeded runs that finished in the last ``days`` days (CPU seconds,
bytes read and written, shuffle bytes; the largest peak memory) and measures what each set keeps now: its
offline bytes (the files of its Delta table's current version) and its online memory (Redis: ``MEMORY USAGE``
of a sample of its keys × its key count; the embedded store: the SQLite file's bytes shared out by each set's
share of the stored data). With ``COST_PRICES`` the figures become money: CPU hours × ``cpu_hour``, and
storage as GB (2^30 bytes) × ``gb_month_*`` × ``days`` / 30 (the current size held for the period).

Sizes cost a Delta log read per set and a ``SCAN`` of the online store: Prometheus reads them through
``storage_sizes`` at most every ``SIZES_MAX_AGE`` seconds per process.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import select

from fstore.ops.unused import check_days
from fstore.registry.models import FeatureSetRow, MaterializationRunRow as Run, utcnow
from fstore.registry.runs import iso

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)
GB = 2 ** 30
SIZES_MAX_AGE = 300.0
ONLINE_SAMPLE = 100
SUMMED = ("cpu_seconds", "executor_run_seconds", "bytes_read", "bytes_written", "shuffle_read_bytes",
          "shuffle_write_bytes")
_sizes_cache: dict[int, tuple[float, dict[str, dict[str, Any]]]] = {}
_sizes_lock = threading.Lock()


def set_sizes(store: "StoreContext", name: str) -> dict[str, Any]:
    """What one feature set keeps now: ``offline_bytes``, ``online_bytes``, ``online_keys`` (None: not known,
    with the reason under ``errors``)."""
    from fstore.core.errors import FStoreError
    from fstore.storage.offline_table import table_bytes

    out: dict[str, Any] = {"offline_bytes": None, "online_bytes": None, "online_keys": None}
    errors = {}
    try:
        out["offline_bytes"] = table_bytes(store.settings, name)
    except (FStoreError, OSError) as exc:
        errors["offline"] = getattr(exc, "message", None) or str(exc)
    try:
        usage = store.online.memory_usage(name, sample=ONLINE_SAMPLE)
        out["online_bytes"], out["online_keys"] = usage["bytes"], usage["keys"]
        out["online_method"] = usage["method"]
    except (FStoreError, OSError) as exc:
        errors["online"] = getattr(exc, "message", None) or str(exc)
    if errors:
        out["errors"] = errors
    return out


def storage_sizes(store: "StoreContext", names: list[str], *, max_age: float = 0.0) -> dict[str, dict[str, Any]]:
    """``set_sizes`` of each of ``names``; with ``max_age`` the figures measured at most that long ago are reused."""
    key = id(store)
    if max_age:
        with _sizes_lock:
            cached = _sizes_cache.get(key)
        if cached and time.monotonic() - cached[0] < max_age and set(names) <= set(cached[1]):
            return {n: cached[1][n] for n in names}
    sizes = {name: set_sizes(store, name) for name in names}
    with _sizes_lock:
        _sizes_cache[key] = (time.monotonic(), sizes)
    return sizes


def run_totals(store: "StoreContext", since) -> dict[str, dict[str, Any]]:
    """Per feature set, its succeeded runs finished since ``since``: their count and summed cost figures."""
    with store.transaction() as s:
        rows = s.execute(select(FeatureSetRow.name, Run.cost)
                         .join(FeatureSetRow, FeatureSetRow.id == Run.feature_set_id)
                         .where(Run.status == "succeeded", Run.finished_at >= since)).all()
    totals: dict[str, dict[str, Any]] = {}
    for name, cost in rows:
        entry = totals.setdefault(name, {"runs": 0, "runs_measured": 0, **dict.fromkeys(SUMMED, 0),
                                         "peak_memory_bytes": None})
        entry["runs"] += 1
        if not cost:
            continue  # a run from before cost tracking
        entry["runs_measured"] += 1
        for field in SUMMED:
            if cost.get(field) is not None:
                entry[field] += cost[field]
        if cost.get("peak_memory_bytes") is not None:
            entry["peak_memory_bytes"] = max(entry["peak_memory_bytes"] or 0, cost["peak_memory_bytes"])
    return totals


def _money(item: dict[str, Any], prices: dict[str, float], days: int) -> dict[str, float] | None:
    if not prices:
        return None
    months = days / 30.0
    parts = {
        "cpu": (item.get("cpu_seconds") or 0) / 3600.0 * prices.get("cpu_hour", 0.0),
        "offline_storage": (item.get("offline_bytes") or 0) / GB * prices.get("gb_month_offline", 0.0) * months,
        "online_memory": (item.get("online_bytes") or 0) / GB * prices.get("gb_month_online", 0.0) * months,
    }
    parts = {k: round(v, 6) for k, v in parts.items()}
    parts["total"] = round(sum(parts.values()), 6)
    return parts


def cost_report(store: "StoreContext", days: int = 30, *, allowed: Callable[[str], bool] | None = None,
                sizes_max_age: float = 0.0) -> dict[str, Any]:
    """Cost per feature set and in total over the last ``days`` days (module docstring)."""
    days = check_days(days)
    since = utcnow() - timedelta(days=days)
    with store.transaction() as s:
        names = [n for n in s.scalars(select(FeatureSetRow.name).order_by(FeatureSetRow.name))
                 if allowed is None or allowed(n)]
    totals = run_totals(store, since)
    sizes = storage_sizes(store, names, max_age=sizes_max_age)
    prices = dict(store.settings.cost_prices)
    items = []
    for name in names:
        item = {"feature_set": name, **(totals.get(name) or {"runs": 0, "runs_measured": 0,
                                                             **dict.fromkeys(SUMMED, 0), "peak_memory_bytes": None}),
                **sizes[name]}
        item["cpu_hours"] = round(item["cpu_seconds"] / 3600.0, 6)
        item["money"] = _money(item, prices, days)
        items.append(item)
    total: dict[str, Any] = {"runs": sum(i["runs"] for i in items)}
    for field in (*SUMMED, "offline_bytes", "online_bytes", "online_keys"):
        total[field] = sum(i[field] or 0 for i in items)
    total["peak_memory_bytes"] = max((i["peak_memory_bytes"] for i in items if i["peak_memory_bytes"]), default=None)
    total["cpu_hours"] = round(total["cpu_seconds"] / 3600.0, 6)
    total["money"] = _money(total, prices, days)
    return {"days": days, "since": iso(since), "prices": prices or None, "items": items, "total": total}
