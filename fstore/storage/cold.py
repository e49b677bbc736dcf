"""The cold tier: a feature set's old offline days, moved to a Delta table of their own under COLD_STORAGE_PATH.

Warm is the offline table on STORAGE_PATH (``offline_table.table_uri``); cold is
``<COLD_STORAGE_PATH>/<feature set>``, the same columns and ``event_date`` partitions.
A reader of warm version ``W`` reads warm@W plus cold@``cold_version_for(W)``: the cold
version that warm commit history names. Which cold version complements which warm one
is recorded by the warm commit that removed the moved rows, in that very commit
(``COLD_VERSION`` in its commit info), so it can never disagree with warm's contents.

A move (``move_older``), under the set's lock:

1. (recovery) when cold's latest version is not the one warm names (a move or a
   retention that died between its two commits), cold is restored to that version:
   its extra commit is undone, never read;
2. the warm rows older than the boundary are appended to cold in one commit → cold C;
3. they are deleted from warm in one commit carrying ``COLD_VERSION = C``.

A crash after 2 leaves warm naming the previous cold version: readers see each row
once (in warm), and the next move undoes C (step 1) and starts again. A crash after
3 is a finished move. So rows are neither lost nor doubled on read, whatever the crash.
Retention (``fstore.compute.retention``) cuts cold the same way: cold first, then a warm
commit naming the new cold version.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from fstore.core.errors import Conflict, InvalidDefinition, NotFound
from fstore.core.settings import Settings
from fstore.engine import s3
from fstore.storage.offline_table import PARTITION, TABLE_PROPERTIES, delta_table, delta_uri, keep_log

COLD_VERSION = "fstore.cold_version"  # in a warm commit's info: the cold version that complements it
MOVE = "fstore.tier_move"             # in both commits of a move: its id
_MARKS: dict[tuple[str, str, int], int | None] = {}  # (warm uri, table id, version) -> cold version: immutable


def enabled(settings: Settings) -> bool:
    return bool(settings.cold_storage_path)


def cold_uri(settings: Settings, name: str) -> str:
    """The cold table of feature set ``name`` (a validated set name: no path of a caller's choosing)."""
    if not settings.cold_storage_path:
        raise InvalidDefinition("no cold tier: set COLD_STORAGE_PATH (a local folder or an s3:// prefix)",
                                field="COLD_STORAGE_PATH")
    return f"{settings.cold_storage_path}/{name}"


def _options(settings: Settings) -> dict[str, str] | None:
    return s3.delta_options(settings) if settings.cold_storage_path.startswith("s3a://") else None


def cold_table(settings: Settings, name: str, version: int | None = None):
    """The ``deltalake.DeltaTable`` of ``name``'s cold table (at ``version``), None when nothing moved yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    if not enabled(settings):
        return None
    try:
        table = DeltaTable(delta_uri(cold_uri(settings, name)), storage_options=_options(settings))
    except TableNotFoundError:
        return None
    if version is not None and version != table.version():
        try:
            table.load_as_version(version)
        except Exception:  # noqa: BLE001 - deltalake raises several types for a version it cannot find
            raise NotFound(f"the cold table of feature set {name} has no version {version} any more "
                           "(its files or log were removed)") from None
    return table


def cold_version_for(settings: Settings, name: str, warm) -> int | None:
    """The cold version that complements warm table ``warm`` (a ``DeltaTable`` at some version): the one named
    by the newest warm commit (at or before that version) carrying ``COLD_VERSION``; None: no row ever moved."""
    key = (warm.table_uri, warm.metadata().id, warm.version())
    if key not in _MARKS:
        found = None
        # The history of the latest version: delta-rs lists a table loaded at an older version with the newest
        # commits all the same, numbered from the loaded one (deltalake 1.x), so versions are compared here.
        latest = delta_table(settings, name)
        for commit in latest.history():  # newest first
            if commit.get("version", 0) > warm.version():
                continue
            if commit.get(COLD_VERSION) is not None:
                found = int(commit[COLD_VERSION])
                break
        if len(_MARKS) > 4096:
            _MARKS.clear()
        _MARKS[key] = found
    return _MARKS[key]


def complement(settings: Settings, name: str, warm):
    """The cold table at the version complementing ``warm`` (None when no cold rows belong with it)."""
    if not enabled(settings) or warm is None or cold_table(settings, name) is None:
        return None
    version = cold_version_for(settings, name, warm)
    return None if version is None else cold_table(settings, name, version)


def recover(settings: Settings, name: str) -> dict[str, Any] | None:
    """Undo cold commits that warm does not name (a move or retention that died half way); the caller holds the
    set's lock. Returns what was undone, or None when cold and warm agree."""
    warm = delta_table(settings, name)
    cold = cold_table(settings, name)
    if cold is None:
        return None
    named = cold_version_for(settings, name, warm) if warm is not None else None
    if named == cold.version() or (named is None and not cold.to_pyarrow_dataset().count_rows()):
        return None  # agreed, or nothing readable left to undo (an earlier undo of a first move)
    from deltalake import CommitProperties

    undone = {"from_version": cold.version(), "to_version": named}
    if named is None:  # the very first move died: cold holds nothing any warm version reads
        cold.delete(commit_properties=CommitProperties(custom_metadata={"fstore.undo": "unfinished move"}))
    else:
        cold.restore(named, commit_properties=CommitProperties(custom_metadata={"fstore.undo": "unfinished move"}))
    return undone


def _cut(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def _older_rows(table, boundary: datetime):
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = table.to_pyarrow_dataset()
    kind = dataset.schema.field("event_timestamp").type
    bound = boundary.replace(tzinfo=timezone.utc) if getattr(kind, "tz", None) else boundary
    return dataset.to_table(filter=ds.field("event_timestamp") < pa.scalar(bound, type=kind))


def count_older(settings: Settings, name: str, boundary: datetime) -> int:
    """Warm rows of ``name`` with event time before ``boundary`` (naive UTC): what a move would take."""
    warm = delta_table(settings, name)
    return 0 if warm is None else _older_rows(warm, boundary).num_rows


def move_older(settings: Settings, name: str, boundary: datetime) -> dict[str, Any]:
    """Move ``name``'s warm rows with event time before ``boundary`` (naive UTC, a day's start) to its cold table:
    cold append, then warm delete naming the new cold version (module docstring). The caller holds the lock."""
    undone = recover(settings, name)
    keep_log(delta_table(settings, name))
    copied = copy_older(settings, name, boundary)
    result: dict[str, Any] = {**copied, **({"recovered": undone} if undone else {})}
    if copied["rows_moved"]:
        warm = delta_table(settings, name)
        mark_warm_delete(warm, f"event_timestamp < '{_cut(boundary)}'", copied["cold_version"], move=copied["move"])
        result["warm_version"] = warm.version()
    return result


def copy_older(settings: Settings, name: str, boundary: datetime) -> dict[str, Any]:
    """A move's first commit: append the warm rows before ``boundary`` to the cold table (tagged with the move's
    id and the warm version they came from). Until warm names the new cold version, no reader sees them."""
    from deltalake import CommitProperties, write_deltalake

    warm = delta_table(settings, name)
    if warm is None:
        raise NotFound(f"feature set {name} has no offline table yet: nothing to move")
    rows = _older_rows(warm, boundary)
    result: dict[str, Any] = {"rows_moved": rows.num_rows, "warm_version_before": warm.version(),
                              "warm_version": warm.version(), "cold_version": cold_version_for(settings, name, warm)}
    if not rows.num_rows:
        return result
    move = str(uuid.uuid4())
    if PARTITION not in rows.column_names:
        import pyarrow.compute as pc

        rows = rows.append_column(PARTITION, pc.cast(rows.column("event_timestamp"), "date32"))
    write_deltalake(delta_uri(cold_uri(settings, name)), rows, mode="append", partition_by=[PARTITION],
                    schema_mode="merge", storage_options=_options(settings), configuration=TABLE_PROPERTIES,
                    commit_properties=CommitProperties(custom_metadata={MOVE: move,
                                                                        "fstore.warm_version": str(warm.version())}))
    result.update(move=move, cold_version=cold_table(settings, name).version())
    return result


def mark_warm_delete(warm, predicate: str | None, cold_version: int, *, move: str = "") -> dict:
    """Delete ``predicate`` rows from warm in one commit that names ``cold_version`` as its complement.
    With no warm row to delete (``predicate`` None) the commit still happens: an empty append carrying the mark."""
    from deltalake import CommitProperties, write_deltalake

    meta = {COLD_VERSION: str(cold_version), **({MOVE: move} if move else {})}
    if predicate is not None:
        metrics = warm.delete(predicate, commit_properties=CommitProperties(custom_metadata=meta))
        if metrics.get("num_deleted_rows"):
            return metrics
    # nothing deleted (delta-rs then makes no commit): the mark alone, by an append of no rows
    empty = warm.to_pyarrow_dataset().schema.empty_table()
    write_deltalake(warm, empty, mode="append", commit_properties=CommitProperties(custom_metadata=meta))
    warm.update_incremental()
    return {"num_deleted_rows": 0}


def delete_older(settings: Settings, name: str, cutoff: datetime) -> int:
    """Retention on the cold table: delete its rows before ``cutoff``, then a warm commit naming the new cold
    version (so readers see the cut only once both are done). Returns the cold rows deleted."""
    cold = cold_table(settings, name)
    warm = delta_table(settings, name)
    if cold is None or warm is None or cold_version_for(settings, name, warm) is None:
        return 0
    older = _older_rows(cold, cutoff).num_rows
    if not older:
        return 0
    metrics = cold.delete(f"event_timestamp < '{_cut(cutoff)}'")
    mark_warm_delete(warm, f"event_timestamp < '{_cut(cutoff)}'", cold.version())
    return int(metrics.get("num_deleted_rows", older))


def count_older_cold(settings: Settings, name: str, cutoff: datetime, warm_version: int | None = None) -> int:
    """Rows before ``cutoff`` in the cold table that complements warm ``warm_version`` (default: current)."""
    cold = complement(settings, name, delta_table(settings, name, warm_version))
    return 0 if cold is None else _older_rows(cold, cutoff).num_rows


def vacuum(settings: Settings, name: str, *, retain_hours: int, keep_warm_versions: list[int]) -> list[str]:
    """Delta VACUUM of the cold table, keeping the cold versions that the kept warm versions (and the current
    one) read. The caller holds the set's lock."""
    cold = cold_table(settings, name)
    if cold is None:
        return []
    keep = set()
    for version in [*keep_warm_versions, None]:
        try:
            warm = delta_table(settings, name, version)
        except NotFound:
            continue
        named = cold_version_for(settings, name, warm) if warm is not None else None
        if named is not None:
            keep.add(named)
    return list(cold.vacuum(retention_hours=retain_hours, dry_run=False, enforce_retention_duration=False,
                            full=True, keep_versions=sorted(keep) or None))


def refuse_cold_range(settings: Settings, name: str, start: datetime, end: datetime) -> None:
    """Refuse (``Conflict``) a write replacing ``[start, end)`` of warm when cold already holds rows in it: the
    replaced days would be read twice (their cold copies and the new warm rows). Called by every range write."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not enabled(settings):
        return
    table = complement(settings, name, delta_table(settings, name))
    if table is None:
        return
    dataset = table.to_pyarrow_dataset()
    kind = dataset.schema.field("event_timestamp").type

    def bound(value: datetime):
        return pa.scalar(value.replace(tzinfo=timezone.utc) if getattr(kind, "tz", None) else value, type=kind)

    inside = (ds.field("event_timestamp") >= bound(start)) & (ds.field("event_timestamp") < bound(end))
    if dataset.count_rows(filter=inside):
        newest = dataset.to_table(columns=["event_timestamp"]).column("event_timestamp")
        import pyarrow.compute as pc

        last = pc.max(newest).as_py()
        raise Conflict(f"feature set {name}: the range from {start.isoformat()} overlaps days already moved to cold "
                       f"storage (rows up to {last.isoformat()}); a run cannot rewrite them there: materialize from "
                       "the first warm day on (keep allowed_lateness shorter than cold_after)")
