"""Vacuum: delete the offline store's files that no version worth keeping still reads.

Every materialization replaces the rows of its range in a new Delta version; the
files it replaced stay on disk so that older versions can still be read (time
travel, ``as_of``, training sets pinned to a version). Without a vacuum they are
never deleted, and a set re-materialized daily grows without bound.

``vacuum_offline`` deletes, through Delta's own VACUUM (``deltalake``):

* files removed from the table more than ``retain_hours`` ago, except those that a
  version pinned by a saved training set still reads (``keep_versions``), so
  ``fstore training-sets recreate`` keeps working;
* files in the table folder that no version names (left by a run killed between
  moving its files and committing them) and that are older than ``retain_hours``;
* the ``_staging`` folders of runs killed before they moved their files.

It holds the feature set's materialization lock while it runs, so it never races a
run that has written files it has not committed yet; with a run in progress it is
refused with ``Conflict``. The Delta log keeps every version's entry, but a version
older than the retention and pinned by no training set has lost files: reading it
(``as_of``) fails; it never returns other rows.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from fstore.core.errors import InvalidDefinition
from fstore.registry import runs

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

DEFAULT_RETAIN_HOURS = 168


def vacuum_offline(store: "StoreContext", ref: str | int, *, retain_hours: int = DEFAULT_RETAIN_HOURS,
                   dry_run: bool = False, actor: str = "") -> dict[str, Any]:
    """Delete (or with ``dry_run`` only list) the set's unneeded offline files; returns what was done."""
    from fstore.ops import audit
    from fstore.storage import offline
    from fstore.registry.training_sets import pinned_versions

    check_retain_hours(retain_hours)
    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name = row.id, row.name
        keep = pinned_versions(s, name)
    if store.settings.storage_format != "delta":
        raise InvalidDefinition(f"vacuum applies to Delta offline stores; {name} is stored as plain Parquet "
                                "(STORAGE_FORMAT=parquet), which keeps no old versions", field="storage_format")
    with set_lock(store, fs_id, name, "vacuum"):
        files = offline.vacuum(store.settings, name, retain_hours=retain_hours, keep_versions=keep, dry_run=dry_run)
    result = {"feature_set": name, "dry_run": dry_run, "retain_hours": retain_hours, "kept_versions": keep,
              "files": len(files), "paths": files[:100]}
    if not dry_run:
        audit.record(store.engine, actor=actor, action="vacuum", target=name, outcome="ok",
                     detail={"retain_hours": retain_hours, "files_deleted": len(files), "kept_versions": keep})
    return result


def check_retain_hours(retain_hours: Any) -> None:
    if isinstance(retain_hours, bool) or not isinstance(retain_hours, int) or retain_hours < 0:
        raise InvalidDefinition(f"retain_hours must be a whole number of hours >= 0, not {retain_hours!r}",
                                field="retain_hours")


@contextmanager
def set_lock(store: "StoreContext", fs_id: int, name: str, work: str) -> Iterator[None]:
    """Hold feature set ``name``'s materialization lock (kept alive by a lease) while changing its table
    outside a run (``work``: vacuum, retention); ``Conflict`` while a run holds it."""
    from fstore.compute.materialize import LOCK_TTL_SECONDS, lock_name, take_set_lock

    lock, owner = lock_name(fs_id), f"{work}:{uuid.uuid4()}"
    take_set_lock(store, fs_id, name, owner)
    try:
        with runs.keep_lease(store.engine, lock, owner, LOCK_TTL_SECONDS):
            yield
    finally:
        runs.release_lock(store.engine, lock, owner)
