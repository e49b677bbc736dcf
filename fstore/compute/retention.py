"""Retention: delete a feature set's offline rows older than its ``retention``, then vacuum their files.

A feature set declaring ``retention: 400d`` keeps offline rows whose event time is
at or after ``now - 400d``; ``apply_retention`` deletes the older ones (a row
exactly at the cutoff is kept) in one Delta DELETE commit (delta-rs, whichever
writer made the table) and then runs the vacuum (``fstore.compute.vacuum``), both
under the set's materialization lock so no run races them.

Saved training sets pin the offline version they read; the vacuum keeps those
versions' files, so ``fstore training-sets recreate`` still gives the same rows after
retention. The result names the training sets whose pinned version holds rows that
the current version no longer has (they could not be made again from today's data).

Run by ``fstore retention apply [NAME] [--dry-run]`` and by the scheduler after each
scheduled run of a set that declares a retention.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fstore.compute.vacuum import DEFAULT_RETAIN_HOURS, check_retain_hours, set_lock
from fstore.core.errors import InvalidDefinition
from fstore.registry import runs
from fstore.registry.models import utcnow

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def retention_sets(store: "StoreContext") -> list[str]:
    """Names of the feature sets that declare a retention and keep an offline table."""
    from fstore.registry.search import offline_sets_declaring

    with store.transaction() as s:
        return offline_sets_declaring(s, "retention_seconds")


def apply_retention(store: "StoreContext", ref: str | int | None = None, *, dry_run: bool = False,
                    retain_hours: int = DEFAULT_RETAIN_HOURS, now: datetime | None = None,
                    actor: str = "") -> list[dict[str, Any]]:
    """Apply retention to ``ref`` (default: every set declaring one); one result per set."""
    check_retain_hours(retain_hours)
    names = retention_sets(store) if ref is None else [ref]
    return [apply_one(store, name, dry_run=dry_run, retain_hours=retain_hours, now=now, actor=actor)
            for name in names]


def apply_one(store: "StoreContext", ref: str | int, *, dry_run: bool = False,
              retain_hours: int = DEFAULT_RETAIN_HOURS, now: datetime | None = None,
              actor: str = "") -> dict[str, Any]:
    """Delete (``dry_run``: only count) one set's rows older than its retention, vacuum, and report."""
    from fstore.ops import audit
    from fstore.registry.training_sets import pinning
    from fstore.storage import cold, offline

    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name, spec = row.id, row.name, row.spec or {}
        pins = pinning(s, name)
    seconds = spec.get("retention_seconds")
    if not seconds:
        raise InvalidDefinition(f"feature set {name} declares no retention; set e.g. retention: 400d",
                                field="retention")
    if store.settings.storage_format != "delta":
        raise InvalidDefinition(f"retention applies to Delta offline stores; {name} is stored as plain Parquet "
                                "(STORAGE_FORMAT=parquet)", field="storage_format")
    cutoff = (now or utcnow()) - timedelta(seconds=seconds)
    result: dict[str, Any] = {"feature_set": name, "retention_seconds": seconds, "cutoff": runs.iso(cutoff),
                              "dry_run": dry_run}
    with set_lock(store, fs_id, name, "retention"):
        if not dry_run and cold.enabled(store.settings):
            cold.recover(store.settings, name)  # a move that died half way is undone before cutting
        before = offline.current_version(store.settings, name)
        older = _older(store, name, cutoff)
        if dry_run:
            result.update(rows_to_delete=older, rows_deleted=0, version=before)
        else:
            # warm first, then cold (its cut becomes visible with the warm commit naming it: fstore.storage.cold)
            deleted = offline.delete_older(store.settings, name, cutoff) if older else 0
            if older and cold.enabled(store.settings):
                deleted += cold.delete_older(store.settings, name, cutoff)
            keep = sorted(set(pins.values()))
            files = offline.vacuum(store.settings, name, retain_hours=retain_hours,
                                   keep_versions=keep, dry_run=False) if before is not None else []
            if cold.enabled(store.settings):
                files += cold.vacuum(store.settings, name, retain_hours=retain_hours, keep_warm_versions=keep)
            result.update(rows_to_delete=older, rows_deleted=deleted, version_before=before,
                          version=offline.current_version(store.settings, name),
                          vacuum={"retain_hours": retain_hours, "files": len(files)})
        result["training_sets"] = _affected(store, name, pins, cutoff)
    if not dry_run:
        audit.record(store.engine, actor=actor, action="retention", target=name, outcome="ok",
                     detail={k: result[k] for k in ("cutoff", "rows_deleted", "version_before", "version")}
                     | {"training_sets": [t["name"] for t in result["training_sets"]]})
    return result


def _affected(store: "StoreContext", name: str, pins: dict[str, int], cutoff: datetime) -> list[dict[str, Any]]:
    """The training sets whose pinned version of ``name`` holds rows older than ``cutoff`` (rows the current
    version lacks, or will lack once retention runs): they recreate from their pinned files, kept by vacuum."""


    counts: dict[int, int] = {}
    for version in set(pins.values()):
        counts[version] = _older(store, name, cutoff, version)
    return [{"name": ts, "version": v, "rows_older": counts[v]} for ts, v in sorted(pins.items()) if counts[v]]


def _older(store: "StoreContext", name: str, cutoff: datetime, version: int | None = None) -> int:
    """Rows before ``cutoff`` that warm ``version`` (default: current) reads: its own and its cold complement's."""
    from fstore.storage import cold, offline

    return offline.count_older(store.settings, name, cutoff, version) + \
        cold.count_older_cold(store.settings, name, cutoff, version)
