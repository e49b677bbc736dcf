"""Reload: rebuild a feature set's online values from its offline table, without recomputing.

What to run when the online store lost its values (a Redis restarted empty, an
embedded store file deleted): an incremental run cannot bring them back, its
watermark is already at the end. ``reload_online``:

1. takes the set's materialization lock (a run and a reload never overlap, and the
   offline table cannot change under it);
2. reads the offline table at its current version, on the configured engine (Spark, or
   DuckDB in process), only the columns the online store holds;
3. loads the newest row per entity key through the ordinary bulk load: the same
   TTL rule (rows already older than the TTL, which serving would call expired, are
   not loaded), the same newer-wins write (an online value newer than the offline
   row is kept), the same stored bytes;
4. writes a complete load marker (``fstore.storage.online.marker``), so serving, ``/ready``
   and data freshness stop reporting the set degraded.

A feature of the current version that the offline table has no column for (added
since the last run) is skipped, not written as null: the online store did not hold
it either. An offline-disabled set has nothing to reload from and is refused.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import TYPE_CHECKING, Any

from fstore.core.errors import FStoreError, InvalidDefinition, NotFound
from fstore.storage.online.base import Codec
from fstore.storage.online.marker import LoadInfo
from fstore.registry import runs

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def reload_online(store: "StoreContext", ref: str | int, *, actor: str = "") -> dict[str, Any]:
    """Rebuild the online values of ``ref`` from its offline table; returns what was done."""
    from fstore.ops import audit
    from fstore.compute.materialize import LOCK_TTL_SECONDS, lock_name, take_set_lock
    from fstore.storage.online.load_windows import load_windows
    from fstore.registry.repo import load_feature_set_version

    with store.transaction() as s:
        row = runs.feature_set_row(s, ref)
        fs_id, name = row.id, row.name
        fsv = load_feature_set_version(s, fs_id)
    if not fsv.feature_set.online_enabled:
        raise InvalidDefinition(f"feature set {name} is not online-enabled (online_enabled: false): nothing to reload",
                                field="online_enabled")
    if not fsv.feature_set.offline_enabled:
        raise InvalidDefinition(f"feature set {name} keeps no offline table (offline_enabled: false) to reload its "
                                "online values from; materialize it again instead", field="offline_enabled")
    began = time.perf_counter()
    lock, owner = lock_name(fs_id), f"reload:{uuid.uuid4()}"
    take_set_lock(store, fs_id, name, owner)
    try:
        with runs.keep_lease(store.engine, lock, owner, LOCK_TTL_SECONDS):
            if store.settings.compute_engine == "duckdb":
                written, version, skipped = _reload_duckdb(store, Codec.from_version(fsv))
            else:
                written, version, skipped = _reload_spark(store, Codec.from_version(fsv))
            from fstore.compute.materialize import drop_again

            drop_again(store, name)  # features whose online values usage-based retention dropped stay dropped
            # the windows' records are not in the offline table: recomputed from the source, written only beside
            # the rows whose event time is the entity's last source event (fstore.storage.online.load_windows).
            # A source this process may not read (SOURCE_ROOTS) or that is gone does not fail the reload: its
            # windows answer their value at the entity's last event until the next run.
            try:
                windows = load_windows(store, fsv, None, None)
            except FStoreError as exc:
                windows = f"not recomputed: {exc}"
    except Exception as exc:
        audit.record(store.engine, actor=actor, action="online reload", target=name, outcome="failed",
                     detail={"error": str(exc)[:500]})
        raise
    finally:
        runs.release_lock(store.engine, lock, owner)
    result = {"feature_set": name, "feature_set_version": fsv.version, "offline_version": version,
              "keys_written": written, "features_skipped": skipped, "window_records": windows,
              "engine": store.settings.compute_engine,
              "seconds": round(time.perf_counter() - began, 3)}
    audit.record(store.engine, actor=actor, action="online reload", target=name, outcome="ok", detail=result)
    return result


def _present(codec: Codec, columns: list[str]) -> tuple[Codec, list[str]]:
    """The codec limited to the features the offline table has a column for, and the ones skipped."""
    have = set(columns)
    missing_keys = [k for k in (*codec.key_columns, "event_timestamp") if k not in have]
    if missing_keys:
        raise InvalidDefinition(f"the offline table of {codec.name} has no column {', '.join(missing_keys)}: "
                                "it cannot be reloaded online", field="feature_set")
    kept = tuple(f for f in codec.features if f[0] in have)
    return dataclasses.replace(codec, features=kept), [f[0] for f in codec.features if f[0] not in have]


def _info(version: int | None) -> LoadInfo:
    return LoadInfo(offline_version=version, full=True, kind="reload")


def _reload_spark(store: "StoreContext", codec: Codec) -> tuple[int, int | None, list[str]]:
    from fstore.storage.offline import read_table_version
    from fstore.storage.online import load_dataframe

    df, version = read_table_version(store.spark, store.settings, codec.name)
    codec, skipped = _present(codec, df.columns)
    return load_dataframe(df, codec, store.settings, info=_info(version)), version, skipped


def _reload_duckdb(store: "StoreContext", codec: Codec) -> tuple[int, int | None, list[str]]:
    """The offline rows read by DuckDB in process (only the needed columns; files wholly past the TTL pruned)."""
    from datetime import datetime, timedelta, timezone

    import duckdb

    from fstore.engine.duckdb import ident
    from fstore.storage.offline_arrow import read_files
    from fstore.storage.online.load_arrow import load_arrow

    lo = None
    if codec.ttl_seconds:  # what the load keeps (load.ttl_cutoff): the TTL, or the longest window when longer
        lo = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=max(codec.ttl_seconds,
                                                                                     codec.window_seconds))
    files = read_files(store.settings, codec.name, lo=lo)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if files.paths:
            relation = con.read_parquet(files.paths, union_by_name=True)
        elif files.dataset is not None:
            relation = con.from_arrow(files.dataset)
        elif files.schema is not None:
            relation = con.from_arrow(files.schema.empty_table())
        else:
            raise NotFound(f"feature set {codec.name} has no offline rows to reload its online values from")
        columns = relation.columns
        codec, skipped = _present(codec, columns)
        wanted = [*codec.key_columns, "event_timestamp",
                  *(["created_timestamp"] if "created_timestamp" in columns else []), *codec.feature_names]
        table = relation.project(", ".join(ident(c) for c in wanted)).to_arrow_table()
    finally:
        con.close()
    return load_arrow(table, codec, store.settings, info=_info(files.version)), files.version, skipped
