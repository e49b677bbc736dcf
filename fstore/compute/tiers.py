"""Tiers: move a feature set's offline days older than its ``cold_after`` from warm to cold storage.

Hot is the online store; warm the offline Delta table on STORAGE_PATH; cold a Delta table of
the same shape under COLD_STORAGE_PATH (``fstore.storage.cold``). A set declaring
``cold_after: 90d`` has, at each apply, every whole day older than that moved: the rows with
event time before the start (UTC) of the day ``now - cold_after`` falls in. The move is two
commits in a crash-safe order (cold append, then a warm delete naming the cold version), taken
under the set's materialization lock, so no run writes meanwhile.

Readers (historical retrieval on both engines, training-set re-creation, ``as_of``) read
warm@V plus the cold version warm@V names, so moving changes no answer; a training set saved
before a move still reads its pinned warm version (whose files vacuum keeps).

Run by ``fstore tiers apply [NAME] [--dry-run]`` and by the scheduler after a set's scheduled run.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fstore.compute.vacuum import set_lock
from fstore.core.errors import InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import utcnow

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def tier_sets(store: "StoreContext") -> list[str]:
    """Names of the feature sets that declare ``cold_after`` and keep an offline table."""
    from fstore.registry.search import offline_sets_declaring

    with store.transaction() as s:
        return offline_sets_declaring(s, "cold_after_seconds")


def boundary_for(now: datetime, cold_after_seconds: int) -> datetime:
    """The first instant that stays warm: the start of the UTC day ``now - cold_after`` falls in (whole days move)."""
    edge = now - timedelta(seconds=cold_after_seconds)
    return edge.replace(hour=0, minute=0, second=0, microsecond=0)


def apply_tiers(store: "StoreContext", ref: str | int | None = None, *, dry_run: bool = False,
                now: datetime | None = None, actor: str = "") -> list[dict[str, Any]]:
    """Move old days of ``ref`` (default: every set declaring ``cold_after``) to cold; one result per set."""
    names = tier_sets(store) if ref is None else [ref]
    return [apply_one(store, name, dry_run=dry_run, now=now, actor=actor) for name in names]


def apply_one(store: "StoreContext", ref: str | int, *, dry_run: bool = False, now: datetime | None = None,
              actor: str = "") -> dict[str, Any]:
    """Move (``dry_run``: only count) one set's warm rows older than its ``cold_after`` boundary to cold."""
    from fstore.ops import audit
    from fstore.storage import cold

    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name, spec = row.id, row.name, row.spec or {}
    seconds = spec.get("cold_after_seconds")
    if not seconds:
        raise InvalidDefinition(f"feature set {name} declares no cold_after; set e.g. cold_after: 90d", field="cold_after")
    if store.settings.storage_format != "delta":
        raise InvalidDefinition(f"tiers apply to Delta offline stores; {name} is stored as plain Parquet "
                                "(STORAGE_FORMAT=parquet)", field="storage_format")
    cold.cold_uri(store.settings, name)  # refuses (naming COLD_STORAGE_PATH) when there is no cold tier
    boundary = boundary_for(now or utcnow(), seconds)
    result: dict[str, Any] = {"feature_set": name, "cold_after_seconds": seconds, "boundary": runs.iso(boundary),
                              "dry_run": dry_run}
    with set_lock(store, fs_id, name, "tiers"):
        if dry_run:
            result.update(rows_to_move=cold.count_older(store.settings, name, boundary), rows_moved=0)
            return result
        result.update(cold.move_older(store.settings, name, boundary))
    audit.record(store.engine, actor=actor, action="tiers", target=name, outcome="ok",
                 detail={k: result.get(k) for k in ("boundary", "rows_moved", "warm_version", "cold_version")}
                 | ({"recovered": result["recovered"]} if "recovered" in result else {}))
    return result
